"""`blip3o-rl eval ocr`, in process: generation + real OCR scoring on the tiny glyph world and on a tiny
BLIP3o-NEXT checkpoint; files, summary, seeding and usage errors."""

from __future__ import annotations

import json

import pytest

from blip3o_rl.rewards.ocr import OCRReward
from blip3o_rl.rewards.ocr.evaluate import evaluate_image_dir
from blip3o_rl.scripts.cli import main
from blip3o_rl.scripts.make_tiny_blip3o_next import main as make_tiny_blip3o_next
from blip3o_rl.tiny.signs import SIGN_PROMPT
from blip3o_rl.tiny.world import make_tiny_world

WORDS = ["CAT", "WOLF", "PIANO"]
FAST_OCR = ["--engine-param", "Rec.rec_img_shape=[3,48,240]", "--num-workers", "2"]


@pytest.fixture(scope="module")
def sign_world(tmp_path_factory):
    return make_tiny_world(tmp_path_factory.mktemp("signs") / "model", grid=[1, 5], tile=24, renderer="glyphs",
                           extra_words=["sign", "that", "says"])


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("".join(SIGN_PROMPT.format(word=w) + "\n" for w in WORDS))
    return path


def run(model, prompts, out, *extra) -> int:
    return main(["eval", "ocr", "--model", str(model), "--policy", "tiny", "--prompts", str(prompts),
                 "--out", str(out), *FAST_OCR, *extra])


def test_scores_every_image_and_writes_records_images_and_summary(sign_world, prompts, tmp_path, capsys):
    out = tmp_path / "eval"
    assert run(sign_world, prompts, out, "--images-per-prompt", "2", "--batch-size", "4") == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["prompt_index"], r["sample_index"]) for r in records] == [(p, s) for p in range(3) for s in range(2)]
    assert [r["target"] for r in records] == [w for w in WORDS for _ in range(2)]
    assert all(r["score"] is not None and 0.0 <= r["score"] <= 1.0 and "recognized" in r for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_images"] == 6 and summary["num_scored"] == 6 and summary["num_failed"] == 0
    assert summary["ocr_reward_mean"] == pytest.approx(sum(r["score"] for r in records) / 6)
    assert summary["exact_match_rate"] == sum(r["score"] == 1.0 for r in records) / 6
    assert summary["policy"] == "tiny" and summary["images_per_prompt"] == 2 and summary["seed"] == 0
    assert "OCR accuracy (mean OCR reward)" in capsys.readouterr().out
    # The dumped images are the scored ones: scoring them again from disk gives the same records.
    rescored, _ = evaluate_image_dir(OCRReward(params={"Rec.rec_img_shape": [3, 48, 240]}), out / "images", prompts)
    assert [r["score"] for r in rescored] == [r["score"] for r in records]
    assert [r["recognized"] for r in rescored] == [r["recognized"] for r in records]


def test_a_fixed_seed_repeats_and_max_prompts_truncates(sign_world, prompts, tmp_path):
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert run(sign_world, prompts, tmp_path / name, "--seed", seed, "--images-per-prompt", "4",
                   "--max-prompts", "2") == 0
    a, b, c = ((tmp_path / n / "images").iterdir() for n in "abc")
    a, b, c = ({p.name: p.read_bytes() for p in images} for images in (a, b, c))
    assert sorted(a) == [f"{p:05d}_{s:02d}.png" for p in range(2) for s in range(4)]
    assert a == b
    assert a != c


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-prompts", "0"], "must be >= 1"),
        (["--engine-param", "no-equals-sign"], "expected KEY=VALUE"),
        (["--steps", "2"], "do not apply to policy"),
    ],
)
def test_usage_errors_exit_2_with_a_message(sign_world, prompts, tmp_path, capsys, extra, message):
    assert run(sign_world, prompts, tmp_path / "out", *extra) == 2
    assert message in capsys.readouterr().err


def test_a_prompt_without_quoted_text_names_file_and_line(sign_world, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text('a sign that says "CAT"\na sign without quotes\n')
    assert run(sign_world, bad, tmp_path / "out") == 2
    assert f"{bad}:2:" in capsys.readouterr().err


def test_runs_on_a_tiny_blip3o_next_checkpoint(tmp_path, prompts):
    """The default policy, through its refiner: 32 px images hold no text, so OCR reads nothing (score 0),
    but every image is generated, scored (not failed) and dumped."""
    model = tmp_path / "blip3o_next"
    assert make_tiny_blip3o_next([str(model)]) == 0
    out = tmp_path / "eval"
    rc = main(["eval", "ocr", "--model", str(model), "--prompts", str(prompts), "--out", str(out), "--steps", "2",
               "--max-prompts", "2", *FAST_OCR])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy"] == "blip3o_next" and summary["num_scored"] == 2
    assert summary["sampling"] == {"temperature": 1.0, "top_k": 1200, "top_p": 0.95}
    assert len(list((out / "images").glob("*.png"))) == 2
