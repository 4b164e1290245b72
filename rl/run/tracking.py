"""Run artefacts: ``metrics.jsonl``, TensorBoard / W&B, sample grids, the reward curve, phase timers."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ..config import LoggingConfig
from ..errors import RunError

METRICS_FILE = "metrics.jsonl"

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def timed(name: str, timings: dict[str, float]) -> Iterator[None]:
    """Add the wall time of the block to ``timings["time/<name>"]`` (seconds)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        key = f"time/{name}"
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop lines logged after ``last_step`` (a resumed run rewrites them).

    A torn last line (the process was killed mid-write) is dropped and said; a bad line elsewhere is an
    error naming the file and line.
    """
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    keep = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            if n == len(lines):
                logger.warning("%s:%d: dropped a torn last line (the run was killed while writing it)", path, n)
                continue
            raise RunError(f"{path}:{n}: not a metrics row ({line[:60]!r}); fix or remove that line to resume") from None
        if step <= last_step:
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# Sample grids are previews: tiny images are enlarged by a whole factor with nearest-neighbour (tiles stay
# crisp) to at least GRID_MIN_CELL px on their long side, large ones shrunk to GRID_MAX_CELL.
GRID_MIN_CELL, GRID_MAX_CELL, GRID_GAP = 128, 384, 6


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, OSError, ImportError):  # without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    """``text`` cut (with an ellipsis) to fit ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def grid_cell_size(size: tuple[int, int]) -> tuple[int, int]:
    """The size an image of ``size`` is shown at in a sample grid."""
    w, h = size
    long = max(w, h)
    if long < GRID_MIN_CELL:
        k = -(-GRID_MIN_CELL // long)  # whole factor: nearest-neighbour keeps every pixel square
        return w * k, h * k
    if long > GRID_MAX_CELL:
        return max(1, round(w * GRID_MAX_CELL / long)), max(1, round(h * GRID_MAX_CELL / long))
    return w, h


def image_grid(images: list[Image.Image], columns: int, labels: list[str] | None = None,
               captions: list[str] | None = None) -> Image.Image:
    """Tile images into a grid of ``columns``, a gap between them, shown at a legible size.

    ``labels`` (one per row, e.g. the group's prompt) are written above each row and ``captions`` (one
    per image, e.g. its reward) under each image.
    """
    cw, ch = grid_cell_size(images[0].size)
    rows = math.ceil(len(images) / columns)
    font = _font(14)
    line_h = int(font.getbbox("Ag")[3]) + 4
    label_h = line_h if labels else 0
    caption_h = line_h if captions else 0
    gap = GRID_GAP
    row_h = label_h + ch + caption_h + gap
    width = columns * cw + (columns + 1) * gap
    grid = Image.new("RGB", (width, gap + rows * row_h), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        x, y = gap + c * (cw + gap), gap + r * row_h + label_h
        resample = Image.Resampling.NEAREST if cw > img.width else Image.Resampling.LANCZOS
        grid.paste(img.convert("RGB").resize((cw, ch), resample), (x, y))
        if captions:
            text = _fit(captions[i], font, cw)
            draw.text((x + (cw - font.getlength(text)) / 2, y + ch + 1), text, fill=(0, 0, 0), font=font)
    for r, text in enumerate((labels or [])[:rows]):
        draw.text((gap, gap + r * row_h), _fit(text, font, width - 2 * gap), fill=(0, 0, 0), font=font)
    return grid


def plot_reward_curve(metrics: list[dict[str, Any]], out: Path, keys: tuple[str, ...] = ()) -> None:
    """Reward (and any eval reward) against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = keys or tuple(
        sorted({k for m in metrics for k in m if k == "reward/mean" or (k.startswith("eval/") and k.endswith("/mean"))})
    )
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        pts = [(m["step"], m[key]) for m in metrics if key in m and m[key] is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), label=key, marker="." if key.startswith("eval/") else None)
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


class RunLogger:
    """Writes one JSON object per step to ``metrics.jsonl`` and mirrors it to TensorBoard / W&B."""

    def __init__(self, output_dir: Path, cfg: LoggingConfig, config: dict, resume_step: int = 0):
        self.dir, self.cfg = output_dir, cfg
        self.metrics_path = output_dir / METRICS_FILE
        if resume_step:
            truncate_metrics(self.metrics_path, resume_step)
        else:
            self.metrics_path.write_text("")
        self.tb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(output_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
        self.wandb = None
        if cfg.wandb:
            try:
                import wandb
            except ImportError:
                raise ImportError("logging.wandb=true needs wandb: pip install 'blip3o-rl[wandb]'") from None
            self.wandb = wandb.init(project=cfg.wandb_project, dir=str(output_dir), config=config, resume="allow")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **metrics}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def log_images(self, step: int, grid: Image.Image, tag: str = "samples") -> Path:
        out = self.dir / tag / f"step_{step:06d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        grid.save(out)
        if self.tb is not None:
            import numpy as np

            self.tb.add_image(tag, np.asarray(grid), step, dataformats="HWC")
        return out

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
