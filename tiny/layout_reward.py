"""The tiny world's reward: how much of each named region has the colour its prompt asks for.

Metadata per prompt: ``{"regions": {"top": "red", "bottom": "blue"}}`` (regions: top, bottom, left,
right, all). The score is the mean over regions of the fraction of that region's pixels within
``tolerance`` (per channel) of the named palette colour: in [0, 1], computed on the decoded images.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..rewards.base import RewardOutput
from .world import PALETTE

REGIONS = {
    "top": lambda a: a[: a.shape[0] // 2],
    "bottom": lambda a: a[a.shape[0] // 2 :],
    "left": lambda a: a[:, : a.shape[1] // 2],
    "right": lambda a: a[:, a.shape[1] // 2 :],
    "all": lambda a: a,
}


class TinyLayoutReward:
    def __init__(self, tolerance: int = 40):
        self.tolerance = tolerance

    def _score(self, image: Image.Image, meta: dict) -> tuple[float | None, dict]:
        regions = meta.get("regions")
        if not isinstance(regions, dict) or not regions:
            return None, {"error": "metadata has no 'regions' mapping (e.g. {'top': 'red'})"}
        pixels = np.asarray(image.convert("RGB"))  # uint8: compared against bounds, no wider per-pixel copy
        parts = {}
        for region, colour in regions.items():
            if region not in REGIONS:
                return None, {"error": f"unknown region {region!r}; known: {sorted(REGIONS)}"}
            if colour not in PALETTE:
                return None, {"error": f"unknown colour {colour!r}; known: {sorted(PALETTE)}"}
            crop = REGIONS[region](pixels)
            target = np.asarray(PALETTE[colour], dtype=np.int32)  # |pixel - target| <= tolerance, per channel:
            lo = np.clip(target - self.tolerance, 0, 255).astype(np.uint8)
            hi = np.clip(target + self.tolerance, 0, 255).astype(np.uint8)
            close = ((crop >= lo) & (crop <= hi)).all(-1)
            parts[region] = float(close.mean())
        return float(np.mean(list(parts.values()))), {"regions": parts}

    def __call__(self, images, prompts, metadata) -> RewardOutput:
        scored = [self._score(img, meta) for img, meta in zip(images, metadata, strict=True)]
        return RewardOutput([s for s, _ in scored], [d for _, d in scored])
