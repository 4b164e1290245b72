"""The tiny world's "objects" renderer: coloured object sprites on a grid, for GenEval-style prompts.

Code 0 is an empty background tile. Every other code is one (class, colour) pair drawn as a sprite
of the class's shape, in the colour's RGB, on the background: code ``1 + ci * len(colours) + ki`` for
class ``ci`` and colour ``ki``. Class names are GenEval object names and colour names GenEval
colours, so GenEval metadata applies unchanged; `blip3o_rl.tiny.detector` reads the
objects back from the pixels.

Renderer spec (stored in the model's ``config.json`` under ``tiny_world``)::

    {"classes": [["apple", "disc"], ["donut", "ring"], ["book", "square"], ["kite", "diamond"]],
     "colours": ["red", "yellow", "green", "blue"],
     "background": [153, 153, 153]}

``classes`` is a list of ``[name, shape]`` pairs, not a mapping: the order fixes the codes, and
``config.json`` is written with sorted keys, which would reorder a mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# Typical sRGB of GenEval's ten colour names: the renderer paints with these and the tiny-world
# detector names a sprite's colour by the nearest of them.
GENEVAL_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (250, 220, 30),
    "green": (40, 170, 60),
    "blue": (30, 80, 220),
    "purple": (130, 40, 170),
    "pink": (250, 150, 200),
    "brown": (130, 80, 30),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
}
BACKGROUND = (153, 153, 153)  # GenEval's crop background grey: no colour name sits near it


def _grid(tile: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    y, x = np.mgrid[0:tile, 0:tile].astype(np.float64)
    centre = (tile - 1) / 2
    radius = tile / 2 - 1  # one pixel of margin
    return x - centre, y - centre, centre, radius


def _disc(tile: int) -> np.ndarray:
    dx, dy, _, r = _grid(tile)
    return dx**2 + dy**2 <= r**2


def _ring(tile: int) -> np.ndarray:
    dx, dy, _, r = _grid(tile)
    d2 = dx**2 + dy**2
    return (d2 <= r**2) & (d2 > (r / 2) ** 2)


def _square(tile: int) -> np.ndarray:
    dx, dy, _, r = _grid(tile)
    return (np.abs(dx) <= r) & (np.abs(dy) <= r)


def _diamond(tile: int) -> np.ndarray:
    dx, dy, _, r = _grid(tile)
    return np.abs(dx) + np.abs(dy) <= r


def _triangle(tile: int) -> np.ndarray:
    dx, dy, _, r = _grid(tile)
    return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)  # apex up, base at the bottom


SHAPES: dict[str, Callable[[int], np.ndarray]] = {
    "disc": _disc,
    "ring": _ring,
    "square": _square,
    "diamond": _diamond,
    "triangle": _triangle,
}
DEFAULT_CLASSES = (("apple", "disc"), ("donut", "ring"), ("book", "square"), ("kite", "diamond"))
DEFAULT_COLOURS = ("red", "yellow", "green", "blue")


def object_code(classes: list[str], colours: list[str], name: str, colour: str) -> int:
    """The code that draws a ``colour`` ``name`` (ValueError when the world has no such object)."""
    if name not in classes or colour not in colours:
        raise ValueError(f"this tiny world has no {colour} {name} (classes {list(classes)}, colours {list(colours)})")
    return 1 + classes.index(name) * len(colours) + colours.index(colour)


def shape_masks(tile: int, classes: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
    """Class name -> its ``[tile, tile]`` boolean sprite mask, from ``[name, shape]`` pairs."""
    masks = {}
    for name, shape in classes:
        if shape not in SHAPES:
            raise ValueError(f"class {name!r}: unknown shape {shape!r} (known: {sorted(SHAPES)})")
        masks[name] = SHAPES[shape](tile)
    return masks


class ObjectsRenderer:
    """Code 0 → background tile; code ``1 + ci * K + ki`` → class ``ci``'s sprite in colour ``ki``."""

    def __init__(self, spec: dict[str, Any]):
        self.tile = int(spec["tile"])
        classes = spec.get("classes") or DEFAULT_CLASSES
        if isinstance(classes, dict) or not all(len(pair) == 2 for pair in classes):
            raise ValueError(f"tiny-world classes must be a list of [name, shape] pairs, got {classes!r}")
        self.classes: list[str] = [name for name, _ in classes]
        self.colours: list[str] = list(spec.get("colours") or DEFAULT_COLOURS)
        unknown = [c for c in self.colours if c not in GENEVAL_RGB]
        if unknown:
            raise ValueError(f"tiny-world colours {unknown} are not GenEval colours ({', '.join(GENEVAL_RGB)})")
        background = np.asarray(spec.get("background") or BACKGROUND, dtype=np.uint8)
        masks = shape_masks(self.tile, classes)
        self.num_codes = 1 + len(self.classes) * len(self.colours)
        # Pre-drawn tiles, one per code: [num_codes, tile, tile, 3].
        tiles = np.broadcast_to(background, (self.num_codes, self.tile, self.tile, 3)).copy()
        for name in self.classes:
            for colour in self.colours:
                tiles[self.code(name, colour)][masks[name]] = GENEVAL_RGB[colour]
        self.tiles = tiles

    @staticmethod
    def default_spec() -> dict[str, Any]:
        return {"classes": [list(pair) for pair in DEFAULT_CLASSES], "colours": list(DEFAULT_COLOURS),
                "background": list(BACKGROUND)}

    def code(self, name: str, colour: str) -> int:
        """The code that draws a ``colour`` ``name`` (ValueError when the world has no such object)."""
        return object_code(self.classes, self.colours, name, colour)

    def render(self, codes: np.ndarray) -> np.ndarray:
        """``codes [B, g, g]`` → uint8 pixels ``[B, g*tile, g*tile, 3]``."""
        b, g, _ = codes.shape
        pix = self.tiles[codes]  # [B, g, g, tile, tile, 3]
        return pix.transpose(0, 1, 3, 2, 4, 5).reshape(b, g * self.tile, g * self.tile, 3)
