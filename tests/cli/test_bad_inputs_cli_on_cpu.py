"""The last bad inputs (issue 24), at the command line: non-finite weights, a missing or damaged tokenizer,
prompts past the model's positions in ``generate`` / ``eval``, a decode that is not finite, and rewards
that return the wrong number of scores or scores that are not numbers.

Each refusal is one ``error: ...`` line naming the file (and tensor, line or field), exit status 2, no
traceback, nothing written; a bad reward batch is excluded and training goes on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from blip3o_rl.policies.blip3o_next.testing import write_tiny_checkpoint
from blip3o_rl.scripts.cli import main

REPO = Path(__file__).resolve().parents[2]
FAST = ["model.build.sft_steps=2", "grpo.batch_size=8", "grpo.num_generations=4", "grpo.micro_batch_size=8",
        "eval.eval_every=0", "logging.tensorboard=false", "logging.image_every=0", "logging.progress_bar=false",
        "checkpoint.save_every=0"]
LOADED = ["model.build={}", *FAST[1:]]  # a given model folder: nothing to build
LONG = "a red image " * 300  # > 1,024 positions on either tiny model
NAN_DECODE_POLICY = '''
from blip3o_rl.policies.blip3o_next import Blip3oNextPolicy


class NaNDecodePolicy(Blip3oNextPolicy):
    """The real refiner, fed NaN hidden states for every other image (as a diverged model would)."""

    def decode(self, codes, hidden_states=None, **kwargs):
        hidden_states = hidden_states.clone()
        hidden_states[::2] = float("nan")
        return super().decode(codes, hidden_states, **kwargs)
'''


def _error(capsys, argv) -> str:
    """Run the command; it must exit 2 with one ``error:`` line and no traceback; returns that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _poison(file: Path, key: str) -> None:
    tensors = load_file(file)
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, file, metadata={"format": "pt"})


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- non-finite weights


def test_nan_weights_are_refused_by_generate_naming_file_and_tensor(tiny_blip3o_next, tmp_path, capsys):
    model = _copy(tiny_blip3o_next, tmp_path / "nan")
    _poison(model / "model.safetensors", "model.sana.caption_norm.weight")  # a refiner weight
    out = tmp_path / "out"
    err = _error(capsys, ["generate", "--model", str(model), "--prompt", "a red cube", "--out", str(out)])
    assert f"{model / 'model.safetensors'}: tensor 'model.sana.caption_norm.weight' holds 16 NaN" in err
    assert not list(out.glob("*.png"))  # no black image
    sharded = tmp_path / "sharded"
    write_tiny_checkpoint(sharded, shards=2)
    shard = sorted(sharded.glob("model-*.safetensors"))[1]
    key = next(iter(load_file(shard)))
    _poison(shard, key)
    err = _error(capsys, ["generate", "--model", str(sharded), "--prompt", "x", "--out", str(tmp_path / "o2")])
    assert f"{shard}: tensor '{key}'" in err


def test_nan_weights_are_refused_by_train_eval_and_export(tiny_world_dir, tmp_path, capsys):
    model = _copy(tiny_world_dir, tmp_path / "nan")
    _poison(model / "model.safetensors", "model.layers.0.mlp.down_proj.weight")
    named = f"{model / 'model.safetensors'}: tensor 'model.layers.0.mlp.down_proj.weight' holds"
    run = tmp_path / "run"
    assert named in _error(capsys, ["train", "demo", f"model.name_or_path={model}", f"output_dir={run}", *LOADED])
    assert not (run / "metrics.jsonl").exists()
    assert named in _error(capsys, ["generate", "--policy", "tiny", "--model", str(model), "--prompt", "x",
                                    "--out", str(tmp_path / "g")])
    metadata = REPO / "configs" / "data" / "tiny_geneval_eval.jsonl"
    assert named in _error(capsys, ["eval", "geneval", "--policy", "tiny", "--model", str(model), "--metadata",
                                    str(metadata), "--out", str(tmp_path / "e")])
    # export: a healthy run, exported onto the broken base
    assert main(["train", "demo", f"output_dir={run}", *FAST, "max_steps=1", "checkpoint.save_every=1"]) == 0
    capsys.readouterr()
    exported = tmp_path / "exported"
    assert named in _error(capsys, ["export", "--run", str(run), "--out", str(exported), "--base-model", str(model)])
    assert not exported.exists()


# ---------------------------------------------------------------- tokenizers


def test_a_missing_or_damaged_tokenizer_names_the_folder_and_files(tiny_blip3o_next, tiny_world_dir, tmp_path,
                                                                    capsys):
    model = _copy(tiny_blip3o_next, tmp_path / "no_tok")
    (model / "tokenizer.json").unlink()
    err = _error(capsys, ["generate", "--model", str(model), "--prompt", "x", "--out", str(tmp_path / "o1")])
    assert f"{model}: no tokenizer: tokenizer.json missing (expected tokenizer.json or vocab.json + merges.txt" in err
    assert "sentencepiece" not in err
    (model / "tokenizer.json").write_text('{"version": ')  # cut short
    err = _error(capsys, ["generate", "--model", str(model), "--prompt", "x", "--out", str(tmp_path / "o2")])
    assert f"{model / 'tokenizer.json'}: not a readable JSON file" in err
    world = _copy(tiny_world_dir, tmp_path / "world")
    (world / "tokenizer.json").unlink()
    err = _error(capsys, ["train", "demo", f"model.name_or_path={world}", f"output_dir={tmp_path / 'run'}",
                          *LOADED])
    assert f"{world}: no tokenizer: tokenizer.json missing" in err and "sentencepiece" not in err


# ---------------------------------------------------------------- prompts past the model's positions


def test_generate_and_eval_refuse_prompts_past_the_positions_as_train_does(tiny_world_dir, tiny_blip3o_next,
                                                                           tmp_path, capsys):
    out = tmp_path / "g"
    err = _error(capsys, ["generate", "--policy", "tiny", "--model", str(tiny_world_dir), "--prompt", "a red image",
                          "--prompt", LONG, "--out", str(out)])
    assert err.startswith("error: --prompt:2: the prompt is ") and "exceeds the model's 512 positions" in err
    assert not list(out.glob("*.png"))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "a red cube"}) + "\n\n" + json.dumps({"prompt": LONG}) + "\n")
    err = _error(capsys, ["generate", "--model", str(tiny_blip3o_next), "--prompts-file", str(prompts),
                          "--out", str(tmp_path / "g2")])
    assert f"{prompts}:3: the prompt is " in err and "the model's 1024 positions" in err
    ocr = tmp_path / "ocr.txt"
    ocr.write_text('a sign that says "CAT"\n\n' + LONG + ' "DOG"\n')
    err = _error(capsys, ["eval", "ocr", "--policy", "tiny", "--model", str(tiny_world_dir), "--prompts", str(ocr),
                          "--out", str(tmp_path / "e1")])
    assert f"{ocr}:3: the prompt is " in err
    metadata = tmp_path / "m.jsonl"
    row = {"tag": "single_object", "include": [{"class": "kite", "count": 1}], "prompt": "a photo of a kite"}
    metadata.write_text(json.dumps(row) + "\n" + json.dumps({**row, "prompt": "a photo of a kite " + LONG}) + "\n")
    err = _error(capsys, ["eval", "geneval", "--policy", "tiny", "--model", str(tiny_world_dir), "--metadata",
                          str(metadata), "--out", str(tmp_path / "e2")])
    assert f"{metadata}:2: the prompt is " in err
    assert not (tmp_path / "e2").exists() or not any((tmp_path / "e2").iterdir())


# ---------------------------------------------------------------- a decode that is not finite


def test_a_non_finite_decode_is_reported_not_saved_black(tiny_blip3o_next, tmp_path, capsys):
    policy = tmp_path / "nan_policy.py"
    policy.write_text(NAN_DECODE_POLICY)
    out = tmp_path / "out"
    rc = main(["generate", "--policy", f"{policy}:NaNDecodePolicy", "--model", str(tiny_blip3o_next),
               "--prompt", "a red cube", "--num-images", "2", "--steps", "2", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 1
    assert "error: image 0 of prompt 1 (00000_00.png) was not written: non-finite decode" in captured.err
    assert "Traceback" not in captured.err and "invalid value encountered" not in captured.err
    assert sorted(p.name for p in out.glob("*.png")) == ["00000_01.png"]  # the good one is kept
    rows = [json.loads(x) for x in (out / "images.jsonl").read_text().splitlines()]
    assert rows[0]["file"] is None and rows[0]["error"].startswith("non-finite decode")
    assert rows[1]["file"] == "00000_01.png"


def test_a_non_finite_decode_in_training_excludes_its_sample(tiny_blip3o_next, tmp_path):
    policy = tmp_path / "nan_policy.py"
    policy.write_text(NAN_DECODE_POLICY)
    prompts = tmp_path / "train.txt"
    prompts.write_text("a red cube\ntwo cats on a sofa\n")
    reward = REPO / "tests" / "policies" / "brightness_reward.py"
    out = tmp_path / "run"
    assert main(["train", str(REPO / "configs" / "blip3o_next_geneval_lora_1gpu.yaml"), f"output_dir={out}",
                 "max_steps=1", f"model.name_or_path={tiny_blip3o_next}", f"model.policy={policy}:NaNDecodePolicy",
                 "model.dtype=float32", "model.mixed_precision=none",
                 "model.policy_kwargs={decode_settings: {num_inference_steps: 2}}", "grpo.num_generations=2",
                 "grpo.batch_size=4", "grpo.micro_batch_size=2", f"rewards=[{{reward: '{reward}:brightness', "
                 "name: bright}]", f"data.train_file={prompts}", "eval.eval_every=0", "logging.tensorboard=false",
                 "logging.progress_bar=false", "logging.image_every=0", "checkpoint.save_every=0"]) == 0
    m = _metrics(out)[-1]
    assert m["reward/bright/failed"] == 2.0 and m["samples/excluded"] == 2.0  # every other image of 4
    assert m["reward/mean"] == m["reward/mean"]  # the other two are scored (not NaN)


# ---------------------------------------------------------------- rewards of the wrong shape or type

ODD_CALLS_SHORT = '''
calls = [0]


def sometimes_short(images, prompts, metadata):
    """One score too few on the 1st, 3rd, ... call; right on the others."""
    calls[0] += 1
    n = len(images) - (calls[0] % 2)
    return [float(i % 3) for i in range(n)]


def strings(images, prompts, metadata):
    """Every fourth score is a numeric string, every fourth a bool."""
    return ["0.51" if i % 4 == 0 else True if i % 4 == 1 else 0.25 for i in range(len(images))]


def always_short(images, prompts, metadata):
    return [0.5] * (len(images) - 1)
'''


def test_a_wrong_count_of_scores_excludes_the_batch_and_training_goes_on(tmp_path, capsys, caplog):
    rewards = tmp_path / "bad.py"
    rewards.write_text(ODD_CALLS_SHORT)
    out = tmp_path / "run"
    with caplog.at_level("WARNING"):
        rc = main(["train", "demo", f"output_dir={out}", *FAST, "max_steps=3",
                   f"rewards=[{{reward: '{rewards}:sometimes_short', name: short}}]"])
    assert rc == 0, capsys.readouterr().err
    assert "reward 'short' returned 7 scores for a batch of 8 images: its 8 samples are excluded" in caplog.text
    rows = {m["step"]: m for m in _metrics(out)}
    assert [rows[s]["samples/excluded"] for s in (1, 2, 3)] == [8.0, 0.0, 8.0]  # never scored 0
    assert rows[1]["reward/short/failed"] == 8.0 and rows[2]["reward/short/failed"] == 0.0

    caplog.clear()
    with caplog.at_level("WARNING"):
        assert main(["train", "demo", f"output_dir={tmp_path / 'run2'}", *FAST, "max_steps=2",
                     f"rewards=[{{reward: '{rewards}:strings', name: typed}}]"]) == 0
    assert "reward 'typed': 4 of 8 scores are not numbers, their samples are excluded (sample 0: '0.51' (a str)" \
        in caplog.text
    assert _metrics(tmp_path / "run2")[-1]["samples/excluded"] == 4.0

    # counted like any other reward failure: three fully failed steps in a row stop the run, saying why
    err = _error(capsys, ["train", "demo", f"output_dir={tmp_path / 'run3'}", *FAST, "max_steps=10",
                          f"rewards=[{{reward: '{rewards}:always_short', name: short}}]"])
    assert "reward 'short' failed every sample of 3 steps in a row" in err
    assert "returned 7 scores for a batch of 8 images" in err
    assert len(_metrics(tmp_path / "run3")) >= 3  # what happened is logged
