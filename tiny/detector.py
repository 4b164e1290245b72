"""A GenEval detector for the tiny "objects" world: reads sprites back from the pixels.

The image is cut into ``tile x tile`` cells. A cell whose pixels all lie within ``tolerance`` (per
channel) of the background is empty; any other cell is one detection:

- ``class``: the world class whose sprite mask best overlaps the cell's foreground mask (IoU);
- ``score``: that IoU (1.0 for a cleanly drawn sprite, lower for anything else);
- ``box``: the cell's box in pixels ``[x0, y0, x1, y1]`` (exclusive right/bottom edges);
- ``mask``: the cell's foreground mask (so `masked_crop` works as for Mask2Former detections);
- ``color``: the GenEval colour nearest (RGB distance) to the mean foreground colour.

Nothing is read from image codes: the detector sees only pixels, like a real detector, so a
policy that paints something unexpected is scored on what it painted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from ..rewards.geneval.metadata import GENEVAL_OBJECTS
from ..rewards.geneval.scorer import GenEvalScorer
from .objects import BACKGROUND, DEFAULT_CLASSES, GENEVAL_RGB, shape_masks

DEFAULT_TILE = 8  # cell size in pixels: the tiny world's default tile
_COLOUR_NAMES = list(GENEVAL_RGB)
_COLOUR_RGB = np.asarray(list(GENEVAL_RGB.values()), dtype=np.float32)  # [10, 3]


class TinyWorldDetector:
    """Detections ``{"class", "score", "box", "mask", "color"}`` for images of the tiny objects world."""

    def __init__(
        self,
        tile: int = DEFAULT_TILE,
        classes: Sequence[Sequence[str]] | None = None,
        background: Sequence[int] = BACKGROUND,
        tolerance: int = 24,
    ):
        self.tile = int(tile)
        classes = classes or DEFAULT_CLASSES
        self.names = [name for name, _ in classes]
        unknown = [n for n in self.names if n not in GENEVAL_OBJECTS]
        if unknown:
            raise ValueError(f"tiny-world classes {unknown} are not GenEval object names")
        masks = shape_masks(self.tile, classes)
        self.templates = np.stack([masks[n] for n in self.names]).reshape(len(self.names), -1)  # [C, t*t]
        self.background = np.asarray(background, dtype=np.int16)
        self.tolerance = tolerance
        self.backend = f"tiny-world(tile={self.tile})"

    def _cells(self, image: Image.Image) -> np.ndarray:
        """``[g_h, g_w, tile, tile, 3]`` int16 cells of one image (ValueError if it is not a tile grid)."""
        pix = np.asarray(image.convert("RGB"), dtype=np.int16)
        h, w, _ = pix.shape
        t = self.tile
        if h % t or w % t:
            raise ValueError(f"a {w}x{h} image is not a grid of {t}-pixel tiles (detector option tile={t})")
        return pix.reshape(h // t, t, w // t, t, 3).transpose(0, 2, 1, 3, 4)

    def detect_one(self, image: Image.Image) -> list[dict[str, Any]]:
        cells = self._cells(image)
        gh, gw, t = cells.shape[0], cells.shape[1], self.tile
        fg = (np.abs(cells - self.background) > self.tolerance).any(-1).reshape(gh * gw, t * t)  # [n, t*t]
        occupied = fg.any(1)
        inter = fg.astype(np.float32) @ self.templates.T.astype(np.float32)  # [n, C]
        union = fg.sum(1, keepdims=True) + self.templates.sum(1)[None] - inter
        iou = inter / np.maximum(union, 1)
        flat = cells.reshape(gh * gw, t * t, 3).astype(np.float32)
        detections = []
        for i in np.flatnonzero(occupied):  # raster order: ties in score keep it
            best = int(iou[i].argmax())
            mean = flat[i][fg[i]].mean(0)
            colour = _COLOUR_NAMES[int(((_COLOUR_RGB - mean) ** 2).sum(1).argmin())]
            row, col = divmod(int(i), gw)
            detections.append({
                "class": self.names[best],
                "score": float(iou[i, best]),
                "box": [float(col * t), float(row * t), float((col + 1) * t), float((row + 1) * t)],
                "mask": fg[i].reshape(t, t),
                "color": colour,
            })  # fmt: skip
        return detections

    def detect(self, images: Sequence[Image.Image]) -> list[list[dict[str, Any]]]:
        """Detections of each image, in raster order of their cells."""
        return [self.detect_one(image) for image in images]


def tiny_world_scorer(*, tile: int = DEFAULT_TILE) -> GenEvalScorer:
    """The ``tiny_world`` detector backend: `TinyWorldDetector` in ``tile``-pixel cells; colours come from
    the pixels, so no CLIP model is loaded."""
    return GenEvalScorer(TinyWorldDetector(tile=tile), colours=None)
