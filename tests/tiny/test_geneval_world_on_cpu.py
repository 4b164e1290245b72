"""The tiny GenEval world: objects renderer -> tiny-world detector (pixels only) -> GenEval rules."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from blip3o_rl.rewards.base import load_reward
from blip3o_rl.rewards.geneval import TAGS, validate_metadata
from blip3o_rl.rewards.geneval.prompts import TaskSpace, canonical_key, generate_prompts, split_prompts
from blip3o_rl.rewards.geneval.scorer import build_scorer
from blip3o_rl.rl.config import load_config
from blip3o_rl.tiny.detector import TinyWorldDetector
from blip3o_rl.tiny.geneval import geneval_prompts, prompt_words, write_geneval_prompts
from blip3o_rl.tiny.objects import GENEVAL_RGB, ObjectsRenderer
from blip3o_rl.tiny.world import PaletteRenderer, build_tokenizer

REPO = Path(__file__).resolve().parents[2]
TILE = 12
RENDERER = ObjectsRenderer({"tile": TILE, **ObjectsRenderer.default_spec()})


def draw(grid: list[list[tuple[str, str] | None]]) -> Image.Image:
    """An image of the objects world from a grid of (class, colour) or None (empty tile)."""
    codes = np.array([[0 if cell is None else RENDERER.code(*cell) for cell in row] for row in grid])
    return Image.fromarray(RENDERER.render(codes[None])[0])


def test_detector_reads_every_sprite_back_from_pixels():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, RENDERER.num_codes, size=(6, 3, 3))
    codes[0] = np.arange(9).reshape(3, 3)
    pixels = RENDERER.render(codes)
    assert pixels.shape == (6, 3 * TILE, 3 * TILE, 3) and pixels.dtype == np.uint8
    detector = TinyWorldDetector(tile=TILE)
    for image_codes, detections in zip(codes, detector.detect([Image.fromarray(p) for p in pixels]), strict=True):
        expected = []
        for (row, col), code in np.ndenumerate(image_codes):
            if code:
                name, colour = divmod(int(code) - 1, len(RENDERER.colours))
                box = [col * TILE, row * TILE, (col + 1) * TILE, (row + 1) * TILE]
                expected.append((list(RENDERER.classes)[name], RENDERER.colours[colour], box))
        assert [(d["class"], d["color"], d["box"]) for d in detections] == expected
        assert all(d["score"] == 1.0 and d["mask"].shape == (TILE, TILE) for d in detections)


def test_colour_is_read_from_pixels_not_assumed():
    # A purple kite is not in the default world's palette, but the detector still names its colour.
    purple = ObjectsRenderer({"tile": TILE, "colours": ["purple"], "classes": [["kite", "diamond"]]})
    image = Image.fromarray(purple.render(np.array([[[0, 1], [0, 0]]]))[0])
    [[det]] = TinyWorldDetector(tile=TILE).detect([image])
    assert (det["class"], det["color"], det["box"]) == ("kite", "purple", [TILE, 0, 2 * TILE, TILE])
    # Full-tile squares of another world are detected with a low score (imperfect shape match).
    palette = PaletteRenderer({"tile": TILE})
    [dets] = TinyWorldDetector(tile=TILE).detect([Image.fromarray(palette.render(np.array([[[0, 3], [5, 7]]]))[0])])
    assert len(dets) == 4 and all(0 < d["score"] < 0.9 for d in dets)


def test_rules_on_tiny_world_images():
    scorer = build_scorer(detector_backend="tiny_world", tile=TILE)
    assert scorer.colours is None  # colours come from the detector's pixels
    book_left_of_kite = {
        "tag": "position",
        "include": [{"class": "kite", "count": 1}, {"class": "book", "count": 1, "position": ["left of", 0]}],
        "prompt": "a photo of a book left of a kite",
    }
    three_red_apples = {
        "tag": "counting",
        "include": [{"class": "apple", "count": 3, "color": "red"}],
        "exclude": [{"class": "apple", "count": 4}],
        "prompt": "a photo of three red apples",
    }
    book, kite, apple = ("book", "blue"), ("kite", "green"), ("apple", "red")
    images = [
        draw([[book, None, kite], [None] * 3, [None] * 3]),
        draw([[kite, None, book], [None] * 3, [None] * 3]),
        draw([[apple, None, apple], [None, apple, None], [None] * 3]),
        draw([[apple, apple, apple], [apple, None, None], [None] * 3]),
        draw([[apple, ("apple", "yellow"), apple], [None] * 3, [None] * 3]),
    ]
    rows = [book_left_of_kite, book_left_of_kite, three_red_apples, three_red_apples, three_red_apples]
    results = scorer.score(images, rows)
    assert [r["correct"] for r in results] == [True, False, True, False, False]
    assert results[1]["reason"] == "expected book left of target, found right of target"
    assert results[3]["reason"] == "expected apple<4, found 4"
    assert "expected red apple>=3, found 2 red" in results[4]["reason"]
    assert {r["detector"] for r in results} == {f"tiny-world(tile={TILE})"}


def test_reward_fills_the_prompt_the_trainer_keeps_apart_and_fails_bad_images():
    reward = load_reward("geneval", score="correct", detector_backend="tiny_world", tile=TILE)
    meta = {"tag": "colors", "include": [{"class": "donut", "count": 1, "color": "yellow"}]}  # no "prompt"
    good = draw([[None, ("donut", "yellow"), None], [None] * 3, [None] * 3])
    wrong_size = Image.new("RGB", (30, 30), (153, 153, 153))
    out = reward([good, wrong_size], ["a photo of a yellow donut"] * 2, [meta, meta])
    assert out.scores[0] == 1.0 and out.details[0]["tag"] == "colors"
    assert out.scores[1] is None and "not a grid of 12-pixel tiles" in out.details[1]["error"]


def test_generator_over_a_small_vocabulary():
    rows = generate_prompts(1000, objects=["apple", "kite"], colours=["red", "blue"], max_count=3)
    counts = Counter(r["tag"] for r in rows)
    # single 2, two 1, counting 2 x 2, colors 2 x 2, position 1 pair x 4 relations, color_attr 1 x 2.
    assert counts == {"single_object": 2, "two_object": 1, "counting": 4, "colors": 4, "position": 4, "color_attr": 2}
    for row in rows:
        validate_metadata(row)
    with pytest.raises(ValueError, match="not GenEval object or colour names"):
        generate_prompts(1, objects=["unicorn"])
    with pytest.raises(ValueError, match="must not repeat"):
        generate_prompts(1, colours=["red", "red"])


def test_split_holds_out_requirements_and_covers_the_rest():
    objects, colours = ["apple", "donut", "book", "kite"], ["red", "yellow", "green", "blue"]
    train, held_out = split_prompts(0.25, objects=objects, colours=colours)
    train_keys, eval_keys = {canonical_key(r) for r in train}, {canonical_key(r) for r in held_out}
    assert not train_keys & eval_keys and len(train_keys) == len(train) and len(eval_keys) == len(held_out)
    for tag in TAGS:
        size = len(TaskSpace(tag, 4, objects, colours))
        n_eval = sum(r["tag"] == tag for r in held_out)
        assert n_eval == max(1, round(size / 4)) and n_eval + sum(r["tag"] == tag for r in train) == size
    with pytest.raises(ValueError, match="too few to split"):
        split_prompts(0.5, objects=["apple"], colours=["red"])


def test_shipped_prompt_files_are_the_generator_output(tmp_path):
    write_geneval_prompts(tmp_path)
    for name in ("tiny_geneval_train.jsonl", "tiny_geneval_eval.jsonl"):
        assert (REPO / "configs" / "data" / name).read_text() == (tmp_path / name).read_text(), name


def test_recipe_world_knows_every_prompt_word():
    cfg = load_config(str(REPO / "configs" / "demo_geneval.yaml"))
    world = cfg.model.build
    assert world["renderer"] == "objects"
    train, held_out = geneval_prompts()
    tokenizer = build_tokenizer(RENDERER.num_codes, world["extra_words"])
    for word in prompt_words(train + held_out):
        assert tokenizer.tokenize(word) == [word], f"{word!r} would be split into characters"
    # The reward's cell size matches the world's tile.
    for spec in (*cfg.rewards, *cfg.eval.rewards):
        assert spec.kwargs["detector_backend"] == "tiny_world" and spec.kwargs["tile"] == world["tile"]
    rows = [json.loads(line) for line in (REPO / "configs" / "data" / "tiny_geneval_eval.jsonl").read_text().splitlines()]
    assert {r["tag"] for r in rows} == set(TAGS)
    assert set(GENEVAL_RGB) >= {c["color"] for r in rows for c in r["include"] if "color" in c}


def test_warm_start_targets_are_correct_in_a_saved_world(tmp_path):
    # Codes are read back from config.json (written with sorted keys): the target images drawn by the
    # reloaded world must be what GenEval accepts, for every shipped prompt.
    from blip3o_rl.tiny.geneval import geneval_target_codes
    from blip3o_rl.tiny.world import TinyWorldPolicy, make_tiny_world

    policy = TinyWorldPolicy.from_pretrained(make_tiny_world(tmp_path, renderer="objects", grid=3, tile=TILE))
    train, held_out = geneval_prompts()
    rows = train + held_out
    codes = torch.stack([geneval_target_codes(r, (3, 3)) for r in rows])
    results = build_scorer(detector_backend="tiny_world", tile=TILE).score(policy.decode(codes), rows)
    assert all(r["correct"] and r["partial"] == 1.0 for r in results)
