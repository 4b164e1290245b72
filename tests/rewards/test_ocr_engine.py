"""The OCR reward with a real engine (rapidocr, bundled PP-OCR ONNX models) on text rendered with PIL."""

import json
import random
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blip3o_rl.rewards import load_reward
from blip3o_rl.rewards.ocr import OCRReward, get_ocr_engine, load_ocr_prompts
from blip3o_rl.rewards.ocr.engines import PaddleOCREngine, available_cpus, default_num_workers
from blip3o_rl.rewards.ocr.evaluate import (
    OCREvalWriter,
    evaluate_image_dir,
    image_name,
    list_image_dir,
    score_ocr_batch,
)
from blip3o_rl.rewards.ocr.synthetic import render_text
from blip3o_rl.scripts import eval_ocr

pytest.importorskip("rapidocr", reason="the rapidocr engine is not installed")

OCR_TEST_FILE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ocr" / "test.txt"

# Our own phrases: mixed case, digits, punctuation, one and several words.
OWN_PHRASES = [
    "Hello World",
    "OPEN 24 HOURS",
    "Fresh Bread Daily",
    "Gate B12",
    "Quantum Leap",
    "Eat Your Greens!",
]


def sampled_targets(n: int = 20) -> list[str]:
    """A fixed sample of the Flow-GRPO OCR test set's targets, when the shared data folder exists."""
    if not OCR_TEST_FILE.is_file():
        return []
    rows = load_ocr_prompts(OCR_TEST_FILE)
    return [r["target"] for r in random.Random(0).sample(rows, n)]


@pytest.fixture(scope="module")
def reward():
    return OCRReward()  # engine="rapidocr"; built once per process and cached


def prompt_for(target: str) -> str:
    return f'A poster that says "{target}"'


def test_clean_renders_score_high(reward):
    targets = OWN_PHRASES + sampled_targets()
    images = [render_text(t, 512) for t in targets]
    # Two at 1024 px: the detector then works on a copy shrunk to 960 px (the reference rule).
    images += [render_text(t, 1024) for t in OWN_PHRASES[:2]]
    targets += OWN_PHRASES[:2]
    out = reward(images, [prompt_for(t) for t in targets], [{}] * len(images))
    assert out.num_failed == 0
    mean = sum(out.scores) / len(out.scores)
    misses = [
        (d["target"], d["recognized"], s) for s, d in zip(out.scores, out.details, strict=True) if s < 1
    ]
    assert mean >= 0.9, misses
    d = out.details[0]
    assert d["target"] == "Hello World" and d["engine"] == "rapidocr"
    assert set(d["models"]) == {"det", "rec"} and all("PP-OCR" in m for m in d["models"].values())
    assert d["lines"] and all(isinstance(t, str) and 0 < c <= 1 for t, c in d["lines"])


def test_blank_images_score_near_zero(reward):
    blanks = [Image.new("RGB", (512, 512), c) for c in ["white", "black", (128, 128, 128)]]
    out = reward(blanks, [prompt_for("Hello World")] * 3, [{}] * 3)
    assert out.num_failed == 0
    assert max(out.scores) <= 0.1, out.details


def test_wrong_text_scores_low(reward):
    targets = OWN_PHRASES
    shown = targets[1:] + targets[:1]  # every image shows another phrase
    out = reward([render_text(t, 512) for t in shown], [prompt_for(t) for t in targets], [{}] * len(targets))
    assert out.num_failed == 0
    assert sum(out.scores) / len(out.scores) < 0.35, out.details
    assert max(out.scores) < 0.6


def test_failures_give_none_with_the_reason_and_spare_the_batch(reward):
    good = render_text("Hello World", 512)
    broken = Image.new("RGB", (0, 0))  # the engine raises on an empty image
    out = reward(
        [good, broken, good], [prompt_for("Hello World"), prompt_for("Hello World"), "no quotes"], [{}] * 3
    )
    assert out.scores[0] == 1.0
    assert out.scores[1] is None and out.details[1]["error"].startswith("OCR failed:")
    assert out.scores[2] is None and "no text in straight double quotes" in out.details[2]["error"]
    assert "lines" not in out.details[2]  # an unscorable prompt is not sent to the engine


def test_registered_and_engine_built_once_per_process(reward):
    again = load_reward("ocr")
    assert isinstance(again, OCRReward)
    assert again.engine is reward.engine is get_ocr_engine("rapidocr")
    other = load_reward("ocr", engine="rapidocr", det_limit_side_len=640)
    assert other.engine is not reward.engine
    assert other.engine.describe()["settings"]["Det.limit_side_len"] == 640
    with pytest.raises(ValueError, match=r"unknown ocr_engine 'tesseract'.*paddleocr, rapidocr"):
        load_reward("ocr", engine="tesseract")


def test_benchmark_dump_and_rescoring_from_disk(reward, tmp_path):
    rows = [{"prompt": prompt_for(t), "target": t} for t in ["Hello World", "Gate B12", "Quantum Leap"]]
    # prompt 0 twice, prompt 1 once with the wrong text, prompt 2 blank
    keys = [(0, 0), (0, 1), (1, 0), (2, 0)]
    images = [
        render_text("Hello World"),
        render_text("Hello World"),
        render_text("Quantum Leap"),
        Image.new("RGB", (512, 512), "white"),
    ]
    with OCREvalWriter(tmp_path / "run") as writer:
        writer.add(score_ocr_batch(reward, images, rows, keys), images)
        summary = writer.finish({"model": "rendered"})
    assert summary["num_images"] == 4 and summary["num_prompts"] == 3 and summary["num_failed"] == 0
    assert summary["exact_match_rate"] == pytest.approx(0.5)
    records = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    scores = [r["score"] for r in records]
    assert summary["ocr_reward_mean"] == pytest.approx(sum(scores) / 4)
    assert scores[:2] == [1.0, 1.0] and scores[3] == 0.0 and scores[2] < 0.5
    assert records[0]["image"] == "images/" + image_name(0, 0)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["model"] == "rendered"

    # Re-score the dump from disk, through the script's main().
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(r["prompt"] for r in rows) + "\n", encoding="utf-8")
    assert (
        eval_ocr.main(
            [
                "--images",
                str(tmp_path / "run" / "images"),
                "--prompts",
                str(prompts),
                "--out",
                str(tmp_path / "rescored"),
            ]
        )
        == 0
    )
    again = json.loads((tmp_path / "rescored" / "summary.json").read_text())
    assert again["ocr_reward_mean"] == pytest.approx(summary["ocr_reward_mean"])
    assert again["exact_match_rate"] == summary["exact_match_rate"]
    assert len((tmp_path / "rescored" / "results.jsonl").read_text().splitlines()) == 4


def test_image_folder_names_are_checked(reward, tmp_path):
    (tmp_path / "notes.txt").write_text("ignored")
    render_text("Hi").save(tmp_path / "3.png")
    assert list_image_dir(tmp_path, 4) == [(3, 0, tmp_path / "3.png")]
    with pytest.raises(ValueError, match=r"3\.png: prompt index 3 is past the 2 prompts"):
        list_image_dir(tmp_path, 2)
    render_text("Hi").save(tmp_path / "cat.png")
    with pytest.raises(ValueError, match=r"cat\.png: image names must be"):
        list_image_dir(tmp_path, 4)
    prompts = tmp_path / "p.txt"
    prompts.write_text('ok "one"\nbad line\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"p\.txt:2: "):
        evaluate_image_dir(reward, tmp_path, prompts)


def test_worker_default_is_this_ranks_share_of_the_cores(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_num_workers() == available_cpus()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert default_num_workers() == max(1, available_cpus() // 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(10 * available_cpus()))
    assert default_num_workers() == 1


def test_paddleocr_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "paddleocr", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"pip install 'blip3o-rl\[paddle\]'"):
        OCRReward(engine="paddleocr")


def test_paddleocr_adapter_reads_the_2x_result_format(monkeypatch):
    """Our adapter against a stand-in with PaddleOCR 2.x's documented API (PaddleOCR is not installed here)."""
    calls = []

    class FakePaddleOCR:
        def __init__(self, **kwargs):
            calls.append(("init", kwargs))
            self.args = types.SimpleNamespace(
                det_model_dir="/m/en_PP-OCRv3_det_infer", rec_model_dir="/m/en_PP-OCRv4_rec_infer/"
            )

        def ocr(self, img, cls):
            calls.append(("ocr", img, cls))
            if img.max() == img.min():
                return [None]
            return [
                [
                    [[[0, 0], [1, 0], [1, 1], [0, 1]], ("Hello", 0.98)],
                    [[[0, 2], [1, 2], [1, 3], [0, 3]], ("World", 0.7)],
                ]
            ]

    monkeypatch.setitem(sys.modules, "paddleocr", types.SimpleNamespace(PaddleOCR=FakePaddleOCR))
    engine = PaddleOCREngine()
    init = calls[0][1]
    assert init["use_angle_cls"] is False and init["lang"] == "en" and init["det_limit_side_len"] == 960
    assert engine.describe()["models"] == {"det": "en_PP-OCRv3_det_infer", "rec": "en_PP-OCRv4_rec_infer"}
    text = Image.new("RGB", (8, 8), "white")
    text.putpixel((0, 0), (255, 0, 0))
    results = engine.read_batch([text, Image.new("L", (8, 8), 255), Image.new("RGB", (0, 0))])
    assert results[0] == [("Hello", 0.98), ("World", 0.7)]
    assert results[1] == []
    assert isinstance(results[2], Exception)
    _, arr, cls = calls[1]
    assert (
        cls is False and arr.shape == (8, 8, 3) and tuple(arr[0, 0]) == (255, 0, 0)
    )  # RGB, as the reference
    assert isinstance(arr, np.ndarray)


def test_benchmark_script_runs(capsys):
    from blip3o_rl.scripts import bench_ocr

    assert bench_ocr.main(["--sizes", "128", "--num-images", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n  128 ") == 3 and "batched" in out and "PP-OCR" in out


def test_glyph_strip_benchmark_script_runs(capsys):
    from blip3o_rl.scripts import bench_ocr_glyphs

    assert bench_ocr_glyphs.main(["--num-images", "2", "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("words ", "random "))]
    assert len(rows) == 2 * len(bench_ocr_glyphs.SETTINGS)
    # Every setting reads the correctly rendered words back.
    assert all(float(r.split()[-1]) == 1.0 for r in rows if r.startswith("words ") and "no det" not in r)
