"""`blip3o-rl generate` on the tiny BLIP3o-NEXT checkpoint: PNGs, index, seeding, sampling defaults."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from blip3o_rl.scripts.cli import main

STEPS = ["--steps", "2"]  # decode steps: keeps the tiny refiner fast


def run(model, out, *extra) -> int:
    return main(["generate", "--model", str(model), "--out", str(out), *STEPS, *extra])


def pixels(folder) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def test_writes_one_png_per_image_and_an_index(tiny_blip3o_next, tmp_path):
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text(json.dumps({"prompt": "two cats", "tag": "counting"}) + "\n")
    out = tmp_path / "out"
    rc = run(
        tiny_blip3o_next,
        out,
        "--prompt",
        "a red cube",
        "--prompts-file",
        str(prompts_file),
        "--num-images",
        "3",
        "--batch-size",
        "4",
    )
    assert rc == 0
    rows = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["a red cube"] * 3 + ["two cats"] * 3
    assert [r["file"] for r in rows] == [f"{i:05d}_{j:02d}.png" for i in range(2) for j in range(3)]
    images = pixels(out)
    assert sorted(images) == sorted(r["file"] for r in rows)
    for image in images.values():
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8  # tiny refiner: 8x8 latents -> 32 px
    assert len({image.tobytes() for image in images.values()}) == 6  # every sample differs


def test_a_fixed_seed_repeats_and_another_seed_differs(tiny_blip3o_next, tmp_path):
    args = ("--prompt", "a red cube", "--num-images", "2")
    assert run(tiny_blip3o_next, tmp_path / "a", *args, "--seed", "5") == 0
    assert run(tiny_blip3o_next, tmp_path / "b", *args, "--seed", "5") == 0
    assert run(tiny_blip3o_next, tmp_path / "c", *args, "--seed", "6") == 0
    a, b, c = pixels(tmp_path / "a"), pixels(tmp_path / "b"), pixels(tmp_path / "c")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not any(np.array_equal(a[k], c[k]) for k in a)


def test_sampling_defaults_are_the_official_inference_ones(tiny_blip3o_next, tmp_path):
    args = ("--prompt", "a red cube", "--num-images", "4", "--seed", "1")
    assert run(tiny_blip3o_next, tmp_path / "default", *args) == 0
    explicit = ("--temperature", "1.0", "--top-k", "1200", "--top-p", "0.95")
    assert run(tiny_blip3o_next, tmp_path / "explicit", *args, *explicit) == 0
    untruncated = ("--top-k", "0", "--top-p", "1.0")
    assert run(tiny_blip3o_next, tmp_path / "untruncated", *args, *untruncated) == 0
    default, same, other = (pixels(tmp_path / n) for n in ("default", "explicit", "untruncated"))
    assert all(np.array_equal(default[k], same[k]) for k in default)
    assert not all(np.array_equal(default[k], other[k]) for k in default)  # top-p 0.95 truncates


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give at least one --prompt"),
        (["--prompt", "x", "--num-images", "0"], "must be >= 1"),
        (["--prompt", "x", "--policy", "tiny"], "do not apply to policy"),
    ],
)
def test_bad_arguments_fail_with_a_message(tiny_blip3o_next, tmp_path, capsys, args, message):
    assert run(tiny_blip3o_next, tmp_path / "out", *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_folder_that_is_not_a_checkpoint_fails_with_its_path(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert run(tmp_path, tmp_path / "out", "--prompt", "x") == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "config.json") in err and "model_type" in err
