"""The GenEval CPU demo end to end: a short GRPO run on configs/demo_geneval.yaml, then `eval geneval`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from blip3o_rl.rewards.geneval import TAGS, load_metadata
from blip3o_rl.scripts.cli import main

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "configs" / "demo_geneval.yaml"
EVAL_FILE = REPO / "configs" / "data" / "tiny_geneval_eval.jsonl"
SHORT = ["max_steps=2", "model.build.sft_steps=2", "grpo.batch_size=16", "grpo.micro_batch_size=16",
         "logging.image_every=0", "logging.progress_bar=false", "logging.tensorboard=false", "checkpoint.save_every=0"]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo_geneval")
    overrides = [f"output_dir={out}", *SHORT, "eval.eval_every=2", "eval.num_prompts=6", "eval.num_generations=2"]
    assert main(["train", str(RECIPE), *overrides]) == 0
    return out


def test_reward_pipeline_scores_every_rollout(run):
    metrics = _metrics(run)
    steps = [m for m in metrics if m["step"] > 0]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        assert m["reward/geneval/failed"] == 0 and m["samples/excluded"] == 0
        assert 0 <= m["reward/geneval/mean"] <= 1  # the bounded partial credit
        assert not math.isnan(m["loss"])
    evals = [m for m in metrics if "eval/geneval_correct/mean" in m]
    assert [m["step"] for m in evals] == [0, 2]
    assert all(0 <= m["eval/geneval_correct/mean"] <= 1 and m["eval/geneval_correct/failed"] == 0 for m in evals)
    assert (run / "base_model" / "config.json").is_file()
    world = json.loads((run / "base_model" / "config.json").read_text())["tiny_world"]
    assert (world["renderer"], world["grid"], world["tile"]) == ("objects", 3, 12)


def test_eval_geneval_on_the_run_and_its_base_model(run, tmp_path, capsys):
    rows = load_metadata(EVAL_FILE)
    summaries = {}
    for source in (["--run", str(run)], ["--model", str(run / "base_model"), "--policy", "tiny"]):
        out = tmp_path / source[0].strip("-")
        argv = ["eval", "geneval", *source, "--metadata", str(EVAL_FILE), "--images-per-prompt", "2",
                "--out", str(out), "--detector-backend", "tiny_world", "--batch-size", "32"]
        assert main(argv) == 0
        summary = json.loads((out / "results_summary.json").read_text())
        assert summary["images"] == 2 * len(rows) and summary["failed"] == 0
        assert set(summary["tasks"]) == set(TAGS) and 0 <= summary["overall"] <= 1
        assert summary["detector"] == "tiny-world(tile=12)"  # the tile came from the policy
        first = out / "00000"
        assert json.loads((first / "metadata.jsonl").read_text()) == rows[0]
        assert sorted(p.name for p in (first / "samples").iterdir()) == ["0000.png", "0001.png"]
        summaries[source[0]] = summary
    assert "overall" in capsys.readouterr().out
    # The run's checkpoint, not its base model, generated the --run images.
    trained = load_file(run / "checkpoints" / "step_000002" / "weights.safetensors")
    base = load_file(run / "base_model" / "model.safetensors")
    assert any(not torch.equal(trained[k], base[k]) for k in base)
    images = sorted((tmp_path / "run").glob("*/samples/*.png"))
    assert any((tmp_path / "model" / p.relative_to(tmp_path / "run")).read_bytes() != p.read_bytes() for p in images)

    # Re-scoring the folder gives the same table; a second generation into it is refused.
    assert main(["eval", "geneval", "--images", str(tmp_path / "run"), "--detector-backend", "tiny_world",
                 "--tile", "12", "--results", str(tmp_path / "again.jsonl")]) == 0
    again = json.loads((tmp_path / "again_summary.json").read_text())
    assert again["tasks"] == summaries["--run"]["tasks"]
    assert main(["eval", "geneval", "--run", str(run), "--metadata", str(EVAL_FILE),
                 "--out", str(tmp_path / "run"), "--detector-backend", "tiny_world"]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_eval_geneval_argument_errors(tmp_path, capsys):
    assert main(["eval", "geneval", "--images", str(tmp_path), "--model", str(tmp_path)]) == 2
    assert "give --images DIR (score a folder) or --model/--run" in capsys.readouterr().err
    assert main(["eval", "geneval", "--model", str(tmp_path)]) == 2
    assert "--metadata FILE is needed" in capsys.readouterr().err
    assert main(["eval", "geneval", "--model", str(tmp_path), "--metadata", str(EVAL_FILE),
                 "--out", str(tmp_path / "o"), "--policy", "tiny", "--steps", "4"]) == 2
    assert "eval geneval: --steps, --guidance and --diffusion-path do not apply to policy 'tiny'" in capsys.readouterr().err
    assert main(["eval", "geneval", "--run", str(tmp_path), "--policy", "tiny", "--metadata", str(EVAL_FILE),
                 "--out", str(tmp_path / "o")]) == 2
    assert "--run names its model and policy" in capsys.readouterr().err


def test_data_geneval_command(tmp_path, capsys):
    out = tmp_path / "prompts.jsonl"
    assert main(["data", "geneval", "--out", str(out), "--n", "50", "--objects", "apple", "kite",
                 "--colors", "red", "blue", "--exclude", str(EVAL_FILE)]) == 0
    rows = load_metadata(out)
    assert {c["class"] for r in rows for c in r["include"]} == {"apple", "kite"}
    assert {c["color"] for r in rows for c in r["include"] if "color" in c} == {"red", "blue"}
    assert "wrote" in capsys.readouterr().out
    assert main(["data", "geneval", "--out", str(out), "--n", "5", "--objects", "unicorn"]) == 2
    assert "not GenEval object names" in capsys.readouterr().err


@pytest.mark.slow
def test_the_recipe_raises_the_held_out_correct_rate(tmp_path):
    """The full demo (about 1.5 minutes on 2 shared cores): the documented rise, with margin."""
    out = tmp_path / "full"
    assert main(["train", str(RECIPE), f"output_dir={out}", "logging.progress_bar=false", "logging.image_every=0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    before, after = summary["eval/geneval_correct/mean_before"], summary["eval/geneval_correct/mean_after"]
    assert before < 0.3 and after > 0.6, (before, after)
