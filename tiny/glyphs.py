"""The tiny world's glyph renderer: each code draws one character, so an image is a row of letters.

Codes 0-25 are the letters A-Z and code 26 is a blank tile (`GLYPH_ALPHABET`). A glyph is drawn
black on white in DejaVu Sans (shipped with matplotlib, a dependency), centred in its ``tile x tile``
square, large enough for a real OCR engine to read: with ``grid: [1, 5]`` and ``tile: 24`` an image is
a 120 x 24 strip that PP-OCR (rapidocr) reads like a printed sign (every word of the demo's prompt
files, rendered, reads back exactly; tiles of 12 to 24 px did too). The tiles are drawn once; rendering
a batch is an array lookup.
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..rewards.ocr.synthetic import default_font_path

GLYPH_ALPHABET = string.ascii_uppercase + " "  # code k draws GLYPH_ALPHABET[k]; the last code is blank
BLANK_CODE = GLYPH_ALPHABET.index(" ")


def draw_glyph(char: str, tile: int, font_scale: float) -> np.ndarray:
    """One ``tile x tile`` uint8 RGB tile showing ``char`` (a blank tile for a space)."""
    image = Image.new("RGB", (tile, tile), (255, 255, 255))
    if char != " ":
        font = ImageFont.truetype(str(default_font_path()), max(1, round(font_scale * tile)))
        ImageDraw.Draw(image).text((tile / 2, tile / 2), char, fill=(0, 0, 0), font=font, anchor="mm")
    return np.asarray(image)


class GlyphRenderer:
    """Code k → a ``tile x tile`` square showing ``GLYPH_ALPHABET[k]``.

    Spec keys (the config's ``tiny_world`` dict): ``tile`` (pixels) and
    ``font_scale`` (glyph height as a fraction of the tile).
    """

    def __init__(self, spec: dict[str, Any]):
        self.tile = int(spec["tile"])
        scale = float(spec.get("font_scale", self.default_spec()["font_scale"]))
        self.tiles = np.stack([draw_glyph(c, self.tile, scale) for c in GLYPH_ALPHABET])  # [K, t, t, 3]
        self.num_codes = len(GLYPH_ALPHABET)

    @staticmethod
    def default_spec() -> dict[str, Any]:
        return {"font_scale": 0.85}

    def render(self, codes: np.ndarray) -> np.ndarray:
        """``codes [B, rows, cols]`` → uint8 pixels ``[B, rows*tile, cols*tile, 3]``."""
        b, rows, cols = codes.shape
        pix = self.tiles[codes]  # [B, rows, cols, t, t, 3]
        return pix.transpose(0, 1, 3, 2, 4, 5).reshape(b, rows * self.tile, cols * self.tile, 3)
