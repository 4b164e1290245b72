"""GenEval end to end on tiny random models saved to disk: load -> detect -> colour -> score; the benchmark."""

from __future__ import annotations

import argparse
import json

import pytest
from PIL import Image, ImageDraw

from blip3o_rl.rewards.base import load_reward, registered_rewards
from blip3o_rl.rewards.geneval import MetadataError
from blip3o_rl.rewards.geneval.benchmark import (
    format_summary,
    read_folder,
    score_folder,
    summarize,
    write_prompt_folder,
)
from blip3o_rl.rewards.geneval.reward import GenEvalReward
from blip3o_rl.rewards.geneval.rules import evaluate_detections
from blip3o_rl.rewards.geneval.scorer import GenEvalScorer, build_scorer
from blip3o_rl.scripts import cmd_geneval

DOG = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
TOASTER = {"tag": "single_object", "include": [{"class": "toaster", "count": 1}], "prompt": "a photo of a toaster"}
RED_DOG = {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a photo of a red dog"}
DOG_LEFT_OF_CAT = {
    "tag": "position",
    "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}],
    "prompt": "a photo of a dog left of a cat",
}


def picture(colour: str, size=(72, 56)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([8, 10, 40, 44], fill=colour)
    draw.ellipse([44, 6, 66, 30], fill="black")
    return image


@pytest.fixture(scope="module")
def scorer(tiny_detector_dir, tiny_clip_dir):
    return build_scorer(
        detector=str(tiny_detector_dir), clip=str(tiny_clip_dir), device="cpu", detector_shortest_edge=64, clip_batch_size=4
    )


def test_reward_is_registered_and_scores_real_images(tiny_detector_dir, tiny_clip_dir):
    assert "geneval" in registered_rewards()
    reward = load_reward(
        "geneval", score="bounded", detector=str(tiny_detector_dir), clip=str(tiny_clip_dir), device="cpu", detector_shortest_edge=64
    )
    images = [picture("red"), picture("blue", (64, 80)), picture("green"), picture("red")]
    rows = [DOG, TOASTER, RED_DOG, {**DOG, "include": [{"class": "unicorn", "count": 1}]}]
    out = reward(images, [r["prompt"] for r in rows], rows)
    dog, toaster, red_dog, invalid = out.details
    # The tiny detector is biased towards dogs and cats: the dog prompt passes, the toaster one cannot.
    assert dog["correct"] and out.scores[0] == 1.0 and dog["detections"]["dog"]
    assert not toaster["correct"] and toaster["reason"] == "expected toaster>=1, found 0" and out.scores[1] == 0.0
    top_dog = red_dog["detections"]["dog"][0]
    assert top_dog[5] in ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
    assert red_dog["correct"] == (top_dog[5] == "red")
    # Invalid metadata: None with the reason, never 0.
    assert out.scores[3] is None and "unknown class 'unicorn'" in invalid["error"]
    assert {d["detector"] for d in out.details} == {f"transformers-mask2former:{tiny_detector_dir}"}
    for image, result in zip(images[:3], out.details[:3], strict=True):
        for boxes in result["detections"].values():
            for x0, y0, x1, y1, score, _ in boxes:
                assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height and score > 0.3


def test_detections_are_rescored_consistently(scorer):
    image = picture("red")
    [detections] = scorer.detector.detect([image])
    assert detections and all(d["mask"].shape == (d["box"][3] - d["box"][1], d["box"][2] - d["box"][0]) for d in detections)
    [result] = scorer.score([image], [DOG_LEFT_OF_CAT])
    # Re-scoring the same detections with the rules alone gives the same verdict and rewards.
    again = evaluate_detections(DOG_LEFT_OF_CAT, detections)
    assert {k: result[k] for k in ("correct", "partial", "bounded", "strict_correct", "reason")} == {
        k: again[k] for k in ("correct", "partial", "bounded", "strict_correct", "reason")
    }


@pytest.mark.parametrize("score", ["partial", "bounded", "correct"])
def test_score_options(scorer, score):
    out = GenEvalReward(score, scorer=scorer)([picture("red")], ["p"], [DOG_LEFT_OF_CAT])
    assert out.scores[0] == float(out.details[0][score])


def test_unknown_score_option():
    with pytest.raises(ValueError, match="unknown GenEval score"):
        GenEvalReward("f1", scorer=object())


class _BrokenOnTallImages:
    """Wraps a detector; raises for images taller than wide (a stand-in for a crashing backend)."""

    def __init__(self, inner):
        self.inner, self.backend = inner, inner.backend

    def detect(self, images):
        if any(im.height > im.width for im in images):
            raise RuntimeError("detector crashed")
        return self.inner.detect(images)


def test_a_failing_image_fails_alone(scorer):
    broken = GenEvalScorer(_BrokenOnTallImages(scorer.detector), scorer.colours)
    out = GenEvalReward(scorer=broken)([picture("red"), picture("red", (40, 80)), picture("red")], ["p"] * 3, [DOG] * 3)
    assert out.scores[1] is None and out.details[1]["error"] == "RuntimeError: detector crashed"
    assert out.scores[0] is not None and out.scores[2] is not None


def test_benchmark_folder_results_and_table(scorer, tmp_path):
    rows = [DOG, TOASTER, RED_DOG, DOG_LEFT_OF_CAT]
    for i, row in enumerate(rows):
        write_prompt_folder(tmp_path / "imgs", i, row, [picture("red"), picture("blue")])
    assert sorted(p.name for p in (tmp_path / "imgs" / "00003" / "samples").iterdir()) == ["0000.png", "0001.png"]
    (tmp_path / "imgs" / "00001" / "samples" / "0002.png").write_bytes(b"not a png")
    summary = score_folder(tmp_path / "imgs", scorer, batch_size=3)
    lines = [json.loads(x) for x in (tmp_path / "imgs" / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 9 and summary.images == 9 and summary.failed == 1
    assert lines[4]["folder"] == "00001" and "cannot read image" in lines[4]["error"]
    assert {r["tag"] for r in lines} == {"single_object", "colors", "position"}
    by_tag = {}
    for r in lines:
        if "error" not in r:
            by_tag.setdefault(r["tag"], []).append(r["correct"])
    assert summary.tasks == {t: (sum(v), len(v)) for t, v in by_tag.items()}
    assert summary.overall == pytest.approx(sum(sum(v) / len(v) for v in by_tag.values()) / len(by_tag))
    table = (tmp_path / "imgs" / "results_summary.txt").read_text()
    assert "overall" in table and "transformers-mask2former" in table and "could not be scored" in table
    assert json.loads((tmp_path / "imgs" / "results_summary.json").read_text())["failed"] == 1


def test_eval_images_command(tiny_detector_dir, tiny_clip_dir, tmp_path, capsys):
    write_prompt_folder(tmp_path / "imgs", 0, DOG, [picture("red")])
    parser = argparse.ArgumentParser()
    cmd_geneval.configure_eval(parser)
    args = parser.parse_args(
        ["--images", str(tmp_path / "imgs"), "--detector", str(tiny_detector_dir), "--clip", str(tiny_clip_dir),
         "--device", "cpu", "--detector-shortest-edge", "64", "--results", str(tmp_path / "out" / "r.jsonl")]
    )  # fmt: skip
    assert cmd_geneval.run_eval(args) == 0
    printed = capsys.readouterr().out
    assert "single_object" in printed and "overall" in printed
    assert json.loads((tmp_path / "out" / "r.jsonl").read_text())["correct"] is True


def test_summary_is_the_mean_of_task_means():
    results = [{"tag": "single_object", "correct": True, "folder": "0"}] * 3 + [
        {"tag": "counting", "correct": False, "folder": "1"},
        {"tag": "counting", "correct": True, "folder": "1"},
        {"error": "boom"},
    ]
    summary = summarize(results)
    assert summary.overall == pytest.approx((1.0 + 0.5) / 2)
    assert summary.prompts == 2 and summary.correct_prompts == 2 and summary.failed == 1
    assert "two_object" in summary.missing_tasks
    assert "not GenEval's 6-task score" in format_summary(summary)


def test_layout_errors_name_the_file(tmp_path):
    folder = tmp_path / "imgs" / "00000"
    (folder / "samples").mkdir(parents=True)
    with pytest.raises(MetadataError, match=r"metadata\.jsonl: missing"):
        read_folder(tmp_path / "imgs")
    (folder / "metadata.jsonl").write_text('{"tag": "single_object", "include": [{"class": "dog", "count": 1}]}\n')
    with pytest.raises(MetadataError, match=r"00000/metadata\.jsonl:1: field 'prompt'"):
        read_folder(tmp_path / "imgs")
    with pytest.raises(FileNotFoundError):
        read_folder(tmp_path / "nothing")
