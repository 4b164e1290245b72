"""The over-optimisation guard: a held-out eval reward falling while the training reward rises.

Reward hacking shows as a training reward that keeps rising while rewards the policy is not trained on
(held-out prompts, other metrics) fall. For each ``eval.guard`` entry, after every evaluation:

- ``best`` is the highest ``eval/<reward>/mean`` so far, and ``train_at_best`` the training reward's
  level then (level = the mean of ``reward/mean`` over the steps since the previous evaluation; for
  the evaluation before training, the first level measured after it);
- the guard **triggers** when ``best − current > margin`` while the training level now is above
  ``train_at_best``: the policy is getting better at its training reward and worse at the held-out one.
  It logs a warning with the numbers and, with ``stop: true``, asks the trainer to stop (a checkpoint
  is saved first).

Logged per guarded reward: ``guard/<reward>/drop`` (best − current) and ``guard/<reward>/triggered``
(0 or 1). The guard keeps its history in memory: a resumed run starts it afresh.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..config import GuardSpec

logger = logging.getLogger(__name__)

TRAIN_KEY = "reward/mean"


@dataclass
class _Track:
    best: float = -math.inf
    best_step: int = -1
    train_at_best: float | None = None  # None: the best came before any training step


class OverOptimisationGuard:
    """``observe(step, metrics)`` after each step's metrics (eval ones included) -> guard metrics."""

    def __init__(self, specs: Sequence[GuardSpec], train_key: str = TRAIN_KEY):
        self.specs, self.train_key = tuple(specs), train_key
        self.tracks = {s.reward: _Track() for s in self.specs}
        self._window: list[float] = []  # training rewards since the last evaluation
        self.train_level: float | None = None  # the level at the last evaluation
        self.stop_reason: str | None = None

    def observe(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        value = metrics.get(self.train_key)
        if value is not None and math.isfinite(value):
            self._window.append(float(value))
        evaluated = [s for s in self.specs if f"eval/{s.reward}/mean" in metrics]
        if not evaluated:
            return {}
        if self._window:
            self.train_level = sum(self._window) / len(self._window)
            self._window = []
        out: dict[str, float] = {}
        for spec in evaluated:
            out.update(self._check(spec, step, float(metrics[f"eval/{spec.reward}/mean"])))
        return out

    def _check(self, spec: GuardSpec, step: int, current: float) -> dict[str, float]:
        t, key = self.tracks[spec.reward], f"guard/{spec.reward}"
        if not math.isfinite(current):  # every eval sample failed: nothing to compare
            return {f"{key}/drop": math.nan, f"{key}/triggered": 0.0}
        if t.train_at_best is None and t.best_step >= 0:
            t.train_at_best = self.train_level  # the best predates training: compare with the first level
        if current > t.best:
            t.best, t.best_step, t.train_at_best = current, step, self.train_level
            return {f"{key}/drop": 0.0, f"{key}/triggered": 0.0}
        drop = t.best - current
        rising = self.train_level is not None and t.train_at_best is not None and self.train_level > t.train_at_best
        triggered = drop > spec.margin and rising
        if triggered:
            assert self.train_level is not None and t.train_at_best is not None  # rising says so
            msg = (f"over-optimisation guard: eval/{spec.reward}/mean is {current:.4f} at step {step}, "
                   f"{drop:.4f} below its best {t.best:.4f} (step {t.best_step}; margin {spec.margin:g}), while "
                   f"the training reward rose from {t.train_at_best:.4f} to {self.train_level:.4f}")
            logger.warning("%s%s", msg, "; stopping (eval.guard stop: true)" if spec.stop else "")
            if spec.stop and self.stop_reason is None:
                self.stop_reason = msg
        return {f"{key}/drop": drop, f"{key}/triggered": float(triggered)}
