"""``checkpoint.best_metric``: keep the checkpoint with the best value of an evaluation metric.

After each evaluation that improves ``best_metric`` (``max``, or ``min`` with ``best_mode: min``), the
trainer saves a checkpoint of that step and `BestCheckpoint` copies it to ``checkpoints/best/``
(hard links where the file system allows, else copies), with ``best.json`` naming the step, the
metric and its value. ``best/`` is not a ``step_*`` folder, so ``keep_last`` never prunes it, and the
``latest`` pointer (what ``--resume`` follows) never names it. A resumed run reads ``best.json`` and
keeps comparing against the value recorded there.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

BEST = "best"
BEST_JSON = "best.json"


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # checkpoint files are written once, never edited: a hard link is a safe copy
    except OSError:
        shutil.copy2(src, dst)


class BestCheckpoint:
    """Tracks ``metric`` and keeps ``<root>/best`` as the checkpoint of its best step (``metric`` None: off)."""

    def __init__(self, root: Path, metric: str | None, mode: str = "max"):
        if mode not in ("max", "min"):
            raise ValueError(f"checkpoint.best_mode must be 'max' or 'min', got {mode!r}")
        self.root, self.metric, self.mode = Path(root), metric, mode
        self.best: float | None = None
        self.best_step: int | None = None
        self.saved_step: int | None = None  # the step whose checkpoint `observe` saved last
        record = self.path / BEST_JSON
        if metric and record.is_file():
            data = json.loads(record.read_text())
            if data.get("metric") == metric:
                self.best, self.best_step = float(data["value"]), int(data["step"])

    @property
    def path(self) -> Path:
        return self.root / BEST

    def _better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def observe(self, step: int, metrics: Mapping[str, float], save: Callable[[int], Path | None]) -> dict[str, float]:
        """On a new best of the metric: ``save(step)`` then copy that checkpoint to ``best/``."""
        if not self.metric or self.metric not in metrics or not self._better(float(metrics[self.metric])):
            return {}
        value = float(metrics[self.metric])
        saved = save(step)
        self.saved_step = step
        self.best, self.best_step = value, step
        if saved is not None:  # None on non-main ranks
            self._keep(saved, step, value)
            logger.info("best checkpoint: step %d, %s = %.4f (%s)", step, self.metric, value, self.path)
        return {"checkpoint/best_step": float(step)}

    def _keep(self, saved: Path, step: int, value: float) -> None:
        tmp = self.root / f".{BEST}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in saved.iterdir():
            if f.is_file():
                _link_or_copy(f, tmp / f.name)
        (tmp / BEST_JSON).write_text(json.dumps(
            {"step": step, "metric": self.metric, "value": value, "mode": self.mode, "source": saved.name}, indent=2))
        old = self.root / f".{BEST}.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.path.exists():
            os.replace(self.path, old)
        os.replace(tmp, self.path)
        shutil.rmtree(old, ignore_errors=True)
