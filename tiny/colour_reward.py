"""A prompt-blind tiny-world reward: how much of the image is one palette colour, in chosen units.

``TinyColourReward(colour="red", scale=1.0)`` scores ``scale x`` the fraction of pixels within
``tolerance`` (per channel) of ``PALETTE[colour]``, whatever the prompt asks. It exists for two
experiments on the tiny world:

- conflicting rewards in different units (``scale=10`` red against a ``scale=1`` blue): a plain
  weighted sum follows the wider one, ``grpo.reward_aggregation: normalize_then_sum`` keeps both
  (`scripts/bench_reward_aggregation.py`);
- a hackable training reward (pays for one colour everywhere) watched by a held-out reward that
  checks the prompt (``tiny_layout``): the over-optimisation guard (``eval.guard``) sees the one rise
  while the other falls.
"""

from __future__ import annotations

import numpy as np

from ..rewards.base import RewardOutput
from .layout_reward import REGIONS
from .world import PALETTE


class TinyColourReward:
    """``scale`` x the fraction of ``region``'s pixels of palette colour ``colour`` (prompts and metadata ignored).

    ``region``: all, top, bottom, left or right (as `tiny_layout`'s regions).
    """

    def __init__(self, colour: str = "red", scale: float = 1.0, region: str = "all", tolerance: int = 40):
        if colour not in PALETTE:
            raise ValueError(f"tiny_colour: unknown colour {colour!r}; known: {sorted(PALETTE)}")
        if region not in REGIONS:
            raise ValueError(f"tiny_colour: unknown region {region!r}; known: {sorted(REGIONS)}")
        self.colour, self.scale, self.region, self.tolerance = colour, float(scale), region, tolerance
        self._rgb = np.asarray(PALETTE[colour], dtype=np.int16)

    def __call__(self, images, prompts, metadata) -> RewardOutput:
        scores: list[float | None] = []
        for image in images:
            pixels = REGIONS[self.region](np.asarray(image.convert("RGB"), dtype=np.int16))
            scores.append(self.scale * float((np.abs(pixels - self._rgb) <= self.tolerance).all(-1).mean()))
        return RewardOutput(scores, [{"colour": self.colour, "region": self.region} for _ in scores])
