"""`blip3o-rl generate` / `eval ocr` / `eval geneval` with the Janus policy on the tiny Janus folder (in
process); `export` is covered by tests/policies/test_janus_grpo_export_on_cpu.py."""

from __future__ import annotations

import json
from pathlib import Path

from blip3o_rl.scripts.cli import main

CONFIG_DATA = Path(__file__).resolve().parents[2] / "configs" / "data"


def test_generate_writes_images_with_the_policy_sampling(tiny_janus, tmp_path):
    out = tmp_path / "gen"
    assert main(["generate", "--model", str(tiny_janus), "--policy", "janus", "--prompt", "a red image",
                 "--prompt", "paint it blue", "--num-images", "2", "--out", str(out), "--seed", "3"]) == 0
    images = sorted(out.glob("**/*.png"))
    assert len(images) == 4
    again = tmp_path / "again"
    assert main(["generate", "--model", str(tiny_janus), "--policy", "janus", "--prompt", "a red image",
                 "--prompt", "paint it blue", "--num-images", "2", "--out", str(again), "--seed", "3"]) == 0
    assert [p.read_bytes() for p in images] == [p.read_bytes() for p in sorted(again.glob("**/*.png"))]


def test_eval_ocr_scores_every_image(tiny_janus, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('a sign that says "CAT"\na sign that says "DOG"\n')
    out = tmp_path / "ocr"
    assert main(["eval", "ocr", "--model", str(tiny_janus), "--policy", "janus", "--prompts", str(prompts),
                 "--out", str(out), "--engine-param", "Rec.rec_img_shape=[3,48,240]", "--num-workers", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy"] == "janus" and summary["num_scored"] == 2 and summary["num_failed"] == 0
    # the folder's generation_config.json with transformers' defaults, as generate(do_sample=True) samples
    assert summary["sampling"] == {"temperature": 1.0, "top_k": 50, "top_p": 1.0}


def test_eval_geneval_runs_the_detector_on_every_image(tiny_janus, tmp_path):
    out = tmp_path / "geneval"
    assert main(["eval", "geneval", "--model", str(tiny_janus), "--policy", "janus", "--metadata",
                 str(CONFIG_DATA / "tiny_geneval_eval.jsonl"), "--out", str(out), "--detector-backend", "tiny_world",
                 "--tile", "4", "--images-per-prompt", "1"]) == 0
    rows = (out / "results.jsonl").read_text().splitlines()
    assert len(rows) == 34


def test_blip3o_decode_options_are_refused_with_one_line(tiny_janus, tmp_path, capsys):
    assert main(["generate", "--model", str(tiny_janus), "--policy", "janus", "--prompt", "x", "--steps", "3",
                 "--out", str(tmp_path / "o")]) == 2
    assert "do not apply to policy 'janus'" in capsys.readouterr().err
