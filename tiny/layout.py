"""The tiny world's colour-layout task: prompts, and the images that satisfy them.

Prompts name a colour for the whole image ("a red image") or one per half ("a red top and a blue
bottom"); their metadata ``{"regions": {...}}`` is what `tiny/layout_reward.py` scores. The files
shipped in ``configs/data`` are written by `write_layout_prompts`.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import torch

from ..rl.data import write_prompt_splits
from .world import PALETTE

NAMED_COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "cyan", "pink")


def layout_prompts(seed: int = 0, num_eval: int = 8) -> tuple[list[dict], list[dict]]:
    """Train and held-out rows: the 8 "a X image" prompts (train) and the 56 "a X top and a Y bottom"
    prompts (X != Y), of which ``num_eval`` are held out."""
    singles = [{"prompt": f"a {c} image", "regions": {"all": c}} for c in NAMED_COLOURS]
    pairs = [
        {"prompt": f"a {top} top and a {bottom} bottom", "regions": {"top": top, "bottom": bottom}}
        for top, bottom in itertools.permutations(NAMED_COLOURS, 2)
    ]
    random.Random(seed).shuffle(pairs)
    return singles + pairs[num_eval:], pairs[:num_eval]


def write_layout_prompts(out_dir: str | Path, seed: int = 0) -> None:
    write_prompt_splits(out_dir, "tiny_layout", *layout_prompts(seed))


def layout_target_codes(row: dict, grid: tuple[int, int]) -> torch.Tensor:
    """The codes ``[rows * cols]`` (row-major) of the image that scores 1 for this prompt's regions."""
    names = list(PALETTE)
    codes = torch.empty(*grid, dtype=torch.long)
    mid_row, mid_col = grid[0] // 2, grid[1] // 2
    for region, colour in row["regions"].items():
        rows, cols = {"top": (slice(0, mid_row), slice(None)), "bottom": (slice(mid_row, None), slice(None)),
                      "left": (slice(None), slice(0, mid_col)), "right": (slice(None), slice(mid_col, None)),
                      "all": (slice(None), slice(None))}[region]
        codes[rows, cols] = names.index(colour)
    return codes.flatten()
