"""OCR engine settings on the tiny world's glyph strips (the OCR demo's images): throughput and accuracy.

    python -m blip3o_rl.scripts.bench_ocr_glyphs [--num-images 64] [--repeats 3]

Two image sets of 1 x 5 tiles of 24 px (120 x 24 px): ``words``, the held-out words of the demo,
rendered right (every setting should read them back: mean reward ~1), and ``random``, strips of random
codes, like the samples of an untrained policy. Rows (all batched over the thread pool, as the reward
runs in training):

- ``reference``: the OCR reward's defaults (detector shrinking to 960 px on the longer side, which
  leaves these strips as they are; the recogniser pads every crop to at least 320 px wide);
- ``det min 32``: the detector told to enlarge images whose shorter side is below 32 px;
- ``rec 240`` (the demo recipe's setting): the recogniser pads to 240 px, enough for a 5:1 strip;
- ``rec 240, no det``: recognition only, on the whole strip (skips text detection).

Times are the median of ``--repeats`` interleaved passes after a warm-up (see `bench_ocr.timed`).
"""

from __future__ import annotations

if not __package__:  # run as a file (python scripts/NAME.py): run it as the module it is
    from blip3o_rl.scripts import run_as_module

    run_as_module(__file__)

import argparse
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..rewards.ocr.engines import RapidOCREngine, available_cpus
from ..rl.config import packaged_recipe
from ..rl.data import load_prompts
from ..tiny.glyphs import GLYPH_ALPHABET, GlyphRenderer
from ..tiny.signs import glyph_target_codes
from .bench_ocr import mean_reward, timed

GRID, TILE = (1, 5), 24
REC_240 = {"Rec.rec_img_shape": [3, 48, 240]}
SETTINGS: dict[str, dict[str, Any]] = {
    "reference": {},
    "det min 32": {"det_limit_type": "min", "det_limit_side_len": 32},
    "rec 240 (demo recipe)": {"params": REC_240},
    "rec 240, no det": {"params": {**REC_240, "Global.use_det": False}},
}


def image_sets(n: int, seed: int = 0) -> dict[str, tuple[list[str], np.ndarray]]:
    """Targets and codes ``[n, 1, 5]`` of the ``words`` and ``random`` sets."""
    recipe = packaged_recipe("demo_ocr")
    assert recipe is not None
    prompts = [r.prompt for r in load_prompts(recipe.parent / "data" / "tiny_ocr_eval.txt")]
    prompts = [prompts[i % len(prompts)] for i in range(n)]
    words = torch.stack([glyph_target_codes({"prompt": p}, GRID) for p in prompts]).numpy()
    rng = np.random.default_rng(seed)
    noise = rng.integers(len(GLYPH_ALPHABET), size=words.shape)
    targets = [p.split('"')[1] for p in prompts]
    return {"words": (targets, words.reshape(n, *GRID)), "random": (targets, noise.reshape(n, *GRID))}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=None, help="default: available CPU cores")
    args = parser.parse_args(argv)

    renderer = GlyphRenderer({"tile": TILE, **GlyphRenderer.default_spec()})
    engines = {name: RapidOCREngine(num_workers=args.num_workers, **kw) for name, kw in SETTINGS.items()}
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())  # other processes on the machine skew timings
    workers = next(iter(engines.values())).num_workers
    print(f"{available_cpus()} CPU cores available (load average {load}); {workers} workers; "
          f"{args.num_images} images of {GRID[1] * TILE}x{GRID[0] * TILE} px per pass")
    print(f"{'images':<7} {'settings':<24} {'images/s':>9} {'vs reference':>13} {'CPU ms/image':>13} {'mean reward':>12}")
    for set_name, (targets, codes) in image_sets(args.num_images).items():
        images = [Image.fromarray(p) for p in renderer.render(codes)]
        timings = timed([e.read_batch for e in engines.values()], images, args.repeats)
        base = timings[0][0]
        for name, (seconds, cpu_seconds, out) in zip(engines, timings, strict=True):
            print(f"{set_name:<7} {name:<24} {len(images) / seconds:>9.1f} {base / seconds:>12.2f}x "
                  f"{1000 * cpu_seconds / len(images):>13.1f} {mean_reward(targets, out):>12.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
