"""Clean synthetic text images, to check an OCR engine and time it without a generator."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont


def default_font_path() -> Path:
    """DejaVu Sans as shipped inside matplotlib (a dependency), so it exists wherever we are installed."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not path.is_file():
        raise FileNotFoundError(f"matplotlib's DejaVuSans.ttf is missing (looked at {path})")
    return path


def render_text(
    text: str,
    size: int = 512,
    font_path: str | Path | None = None,
    max_font_px: int | None = None,
    fill: tuple[int, int, int] = (0, 0, 0),
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """A ``size`` x ``size`` RGB image with ``text`` on one line, centred, as large as fits 85% of the width."""
    font_path = str(font_path or default_font_path())
    px = max_font_px or size // 10
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    while px > 8:
        font = ImageFont.truetype(font_path, px)
        if draw.textlength(text, font=font) <= 0.85 * size:
            break
        px -= 1
    font = ImageFont.truetype(font_path, px)
    image = Image.new("RGB", (size, size), background)
    ImageDraw.Draw(image).text((size / 2, size / 2), text, fill=fill, font=font, anchor="mm")
    return image
