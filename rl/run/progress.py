"""Progress of a run: the tqdm bar on a terminal, one plain line per ``log_every`` steps elsewhere.

A log file or a SLURM output then reads ``step 10/40  reward 0.512  kl 0.0000  loss -0.0123  0.81 s/step``
instead of hundreds of bar redraws. Off a terminal (or with ``logging.progress_bar: false``)
transformers' own bars ("Loading weights", "Writing model shards") are turned off as well; on a terminal
they are off while a step with its own bar runs (the tiny world's build), so each shows at most once.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from tqdm.auto import tqdm

MAIN_METRICS = (("reward/mean", "reward", ".3f"), ("kl", "kl", ".4f"), ("loss", "loss", ".4f"))


def on_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def show_bars(progress_bar: bool) -> bool:
    """Whether progress bars are drawn: asked for, and stderr (where tqdm draws) is a terminal."""
    return progress_bar and on_terminal()


def quiet_library_bars() -> None:
    """Turn off transformers' (and huggingface_hub's) progress bars for this process."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # transformers is a dependency, but stay harmless without it
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass


@contextlib.contextmanager
def library_bars_off() -> Iterator[None]:
    """transformers' bars off inside the block, as they were after it: for work that shows its own progress
    (building the tiny world saves and reloads its model twice around the warm start's bar)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


class Progress:
    """``update(step, metrics, logged)`` after each step; ``close()`` at the end."""

    def __init__(self, start: int, total: int, *, bar: bool, enabled: bool = True, stream: TextIO | None = None):
        self.start, self.total, self.enabled = start, total, enabled
        self.stream = stream or sys.stdout
        self.bar = tqdm(total=total, initial=start, desc="GRPO", dynamic_ncols=True) if (bar and enabled) else None
        self._t, self._n = time.perf_counter(), 0

    def update(self, step: int, metrics: dict[str, Any], logged: bool) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({short: format(metrics[k], fmt) for k, short, fmt in MAIN_METRICS[:2] if k in metrics})
            return
        self._n += 1
        if not (self.enabled and logged):
            return
        now = time.perf_counter()
        per_step = (now - self._t) / max(1, self._n)
        self._t, self._n = now, 0
        parts = [f"step {step}/{self.total}"]
        parts += [f"{short} {format(metrics[k], fmt)}" for k, short, fmt in MAIN_METRICS if k in metrics]
        evals = [f"{k} {v:.3f}" for k, v in metrics.items() if k.startswith("eval/") and k.endswith("/mean")]
        parts += [*evals, f"{per_step:.2f} s/step"]
        print("  ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
