"""The OCR reward with a real engine (rapidocr, bundled PP-OCR ONNX models) on text rendered with PIL."""

import json
import random
import sys
import types

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

# Our own phrases: mixed case, digits, punctuation, one and several words.
OWN_PHRASES = [
    "Hello World",
    "OPEN 24 HOURS",
    "Fresh Bread Daily",
    "Gate B12",
    "Quantum Leap",
    "Eat Your Greens!",
]


@pytest.fixture(scope="module")
def sampled_targets(shared_data_file) -> list[str]:
    """A fixed sample of 20 of the Flow-GRPO OCR test set's targets; none when that file is absent."""
    test_set = shared_data_file("ocr/test.txt", required=False)
    if test_set is None:
        return []
    rows = load_ocr_prompts(test_set)
    return [r["target"] for r in random.Random(0).sample(rows, 20)]


@pytest.fixture(scope="module")
def reward():
    return OCRReward()  # engine="rapidocr"; built once per process and cached


def prompt_for(target: str) -> str:
    return f'A poster that says "{target}"'


def test_clean_renders_score_high(reward, sampled_targets):
    targets = OWN_PHRASES + sampled_targets
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
    with pytest.raises(ValueError, match=r"unknown ocr_engine 'tesseract'.*paddleocr, paddleocr2, rapidocr"):
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
    with pytest.raises(ImportError, match=r"PaddleOCR 3.x.*pip install 'blip3o-rl\[paddle\]'"):
        OCRReward(engine="paddleocr")
    with pytest.raises(ImportError, match=r"PaddleOCR 2.x.*pip install 'paddleocr>=2.7,<3'"):
        OCRReward(engine="paddleocr2")


class FakeOCRResult(dict):
    """Shaped like PaddleOCR 3.x's ``OCRResult``: a dict with ``rec_texts``/``rec_scores`` (and more)."""


def fake_paddleocr3(calls, version="3.1.0"):
    class FakePaddleOCR:
        def __init__(self, **kwargs):
            calls.append(("init", kwargs))

        def predict(self, images):
            batch = images if isinstance(images, list) else [images]
            calls.append(("predict", batch))
            out = []
            for img in batch:
                if img.size == 0:
                    raise ValueError("empty image")
                if img.max() == img.min():  # nothing detected
                    out.append(FakeOCRResult(rec_texts=[], rec_scores=[], rec_polys=[]))
                else:
                    out.append(FakeOCRResult(input_path=None, rec_texts=["Hello", "World"],
                                             rec_scores=[0.98, 0.01], rec_polys=[[0, 0]] * 2))
            return out

    module = types.ModuleType("paddleocr")
    module.PaddleOCR, module.__version__ = FakePaddleOCR, version
    return module


def test_paddleocr3_adapter_reads_predict_output_with_the_official_settings(monkeypatch):
    """Our 3.x adapter against a stand-in shaped like PaddleOCR 3.1's predict() output (not installable here)."""
    from blip3o_rl.rewards.ocr.engines import PaddleOCR3Engine

    calls = []
    monkeypatch.setitem(sys.modules, "paddleocr", fake_paddleocr3(calls))
    engine = PaddleOCR3Engine()
    # the official text run's PaddleOCR(...) arguments, nothing else (no confidence filter of ours)
    assert calls[0][1] == {"lang": "en", "use_doc_orientation_classify": False, "use_doc_unwarping": False,
                           "use_textline_orientation": False}
    info = engine.describe()
    assert info["engine"] == "paddleocr" and info["version"] == "3.1.0" and info["settings"]["bgr"] is True
    text = Image.new("RGB", (8, 8), "white")
    text.putpixel((0, 0), (255, 0, 0))
    results = engine.read_batch([text, Image.new("L", (8, 8), 255)])
    assert results == [[("Hello", 0.98), ("World", 0.01)], []]  # low-confidence lines kept
    (_, batch), = [c for c in calls if c[0] == "predict"]
    assert len(batch) == 2 and tuple(batch[0][0, 0]) == (0, 0, 255)  # one predict() call, BGR arrays
    # a failing image fails that sample only
    calls.clear()
    results = engine.read_batch([text, Image.new("RGB", (0, 0))])
    assert results[0] == [("Hello", 0.98), ("World", 0.01)] and isinstance(results[1], Exception)


def test_paddleocr3_reward_names_its_engine_and_joins_all_lines(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "paddleocr", fake_paddleocr3(calls))
    reward = OCRReward(engine="paddleocr", text_det_limit_side_len=736, params={"device": "cpu"})
    assert calls[0][1]["text_det_limit_side_len"] == 736 and calls[0][1]["device"] == "cpu"
    text = Image.new("RGB", (8, 8), "white")
    text.putpixel((0, 0), (255, 0, 0))
    out = reward([text], ['a sign that says "hello world"'])
    assert out.scores == [1.0]  # "Hello" + "World" joined, spaces removed, lower-cased
    assert out.details[0]["engine"] == "paddleocr" and out.details[0]["engine_version"] == "3.1.0"


def test_paddleocr3_engine_refuses_paddleocr_2(monkeypatch):
    from blip3o_rl.rewards.ocr.engines import PaddleOCR3Engine

    monkeypatch.setitem(sys.modules, "paddleocr", fake_paddleocr3([], version="2.9.1"))
    with pytest.raises(ImportError, match=r"found 2.9.1.*engine='paddleocr2'"):
        PaddleOCR3Engine()


def test_paddleocr2_adapter_reads_the_2x_result_format(monkeypatch):
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
