"""Sample grids: a group per row, images apart and at a legible size, each image's reward under it."""

import numpy as np
from PIL import Image

from blip3o_rl.rl.run.tracking import GRID_GAP, GRID_MAX_CELL, GRID_MIN_CELL, grid_cell_size, image_grid

WHITE = (255, 255, 255)


def tiles(seed: int, size: int = 32) -> Image.Image:
    """A 4x4 grid of random colour tiles, like the tiny world's images."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 200, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(codes.repeat(size // 4, 0).repeat(size // 4, 1))


def test_cell_sizes():
    assert grid_cell_size((32, 32)) == (128, 128)  # whole factor 4
    assert grid_cell_size((40, 30)) == (160, 120)  # the long side reaches the minimum, the aspect is kept
    assert grid_cell_size((256, 256)) == (256, 256)
    assert grid_cell_size((1024, 512)) == (GRID_MAX_CELL, GRID_MAX_CELL // 2)
    assert GRID_MIN_CELL <= GRID_MAX_CELL


def test_tiny_images_are_enlarged_exactly_apart_with_their_captions_under_them():
    images = [tiles(i) for i in range(6)]
    grid = image_grid(images, 3, labels=["a red image", "a blue image"], captions=[f"0.{i}00" for i in range(6)])
    plain = image_grid(images, 3)
    a = np.asarray(grid)
    p = np.asarray(plain)
    cell, gap = 128, GRID_GAP
    assert p.shape == (gap + 2 * (cell + gap), gap + 3 * (cell + gap), 3)  # no text bands without text
    # Nearest-neighbour: each source pixel becomes a 4x4 block of the same colour.
    first = p[gap:gap + cell, gap:gap + cell]
    assert np.array_equal(first, np.asarray(images[0]).repeat(4, 0).repeat(4, 1))
    # The gap between two images of a row is white, top to bottom of the image.
    assert (p[gap:gap + cell, gap + cell:2 * gap + cell] == 255).all()
    # With labels and captions the rows grow by two text lines, and each caption band under an image has
    # dark (text) pixels, centred under its own image.
    extra = a.shape[0] - p.shape[0]
    assert extra > 0 and extra % 2 == 0 and a.shape[1] == p.shape[1]
    line = extra // 4  # two rows, each with one label line and one caption line
    row_h = line + cell + line + gap
    for r in range(2):
        top = gap + r * row_h
        assert (a[top:top + line] < 100).any(), f"row {r}'s label is missing"
        for c in range(3):
            x = gap + c * (cell + gap)
            band = a[top + line + cell:top + 2 * line + cell, x:x + cell]
            assert (band < 100).any(), f"image {r * 3 + c}'s caption is missing"
            assert np.array_equal(a[top + line:top + line + cell, x:x + cell],
                                  np.asarray(images[r * 3 + c]).repeat(4, 0).repeat(4, 1))


def test_a_long_caption_is_cut_to_its_image():
    grid = image_grid([tiles(0), tiles(1)], 2, captions=["excluded: " + "x" * 200, "0.5"])
    a = np.asarray(grid)
    gap_cols = a[:, GRID_GAP + 128:2 * GRID_GAP + 128]
    assert (gap_cols == 255).all()  # the first caption did not run into the next column


def test_large_images_are_shrunk():
    grid = image_grid([Image.new("RGB", (1024, 1024), (10, 200, 10))] * 2, 2)
    assert grid.size == (GRID_GAP + 2 * (GRID_MAX_CELL + GRID_GAP), GRID_GAP + GRID_MAX_CELL + GRID_GAP)
    assert grid.getpixel((GRID_GAP + 5, GRID_GAP + 5)) == (10, 200, 10)
    assert grid.getpixel((0, 0)) == WHITE
