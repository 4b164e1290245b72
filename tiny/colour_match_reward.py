"""A dense colour reward for models whose pixels are not palette tiles (e.g. a tiny random Janus).

Metadata as `tiny_layout`'s (``{"regions": {"top": "red", "bottom": "blue"}}``, regions top, bottom, left,
right, all; colours of the tiny world's palette). The score is the mean over regions of the mean over the
region's pixels of ``1 - |pixel - colour| / (255 * sqrt(3))`` (Euclidean RGB distance): in [0, 1], 1 only
for exactly the colour, and it rises smoothly as images move towards it, so a model whose decoder never
paints a palette colour exactly still has a gradient to follow.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from ..rewards.base import RewardOutput
from .layout_reward import REGIONS
from .world import PALETTE

_MAX_DISTANCE = 255.0 * math.sqrt(3.0)


class TinyColourMatchReward:
    """How close each named region is to its colour, per pixel (see the module docstring)."""

    def _score(self, image: Image.Image, meta: dict) -> tuple[float | None, dict]:
        regions = meta.get("regions")
        if not isinstance(regions, dict) or not regions:
            return None, {"error": "metadata has no 'regions' mapping (e.g. {'all': 'red'})"}
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
        parts = {}
        for region, colour in regions.items():
            if region not in REGIONS:
                return None, {"error": f"unknown region {region!r}; known: {sorted(REGIONS)}"}
            if colour not in PALETTE:
                return None, {"error": f"unknown colour {colour!r}; known: {sorted(PALETTE)}"}
            distance = np.linalg.norm(REGIONS[region](pixels) - np.asarray(PALETTE[colour], dtype=np.float64), axis=-1)
            parts[region] = float(1.0 - distance.mean() / _MAX_DISTANCE)
        return float(np.mean(list(parts.values()))), {"regions": parts}

    def __call__(self, images, prompts, metadata) -> RewardOutput:
        scored = [self._score(img, meta) for img, meta in zip(images, metadata, strict=True)]
        return RewardOutput([s for s, _ in scored], [d for _, d in scored])
