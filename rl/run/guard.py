"""The finite-update guard: the one place an optimizer step is taken, or skipped.

A step whose loss or gradient norm is not finite (NaN or ±inf) would write NaN into every trainable
weight and into Adam's moments: one such step poisons the run for good. `FiniteUpdateGuard.step`
checks both first:

- finite: ``optimizer.step()`` then ``scheduler.step()``;
- not finite: the optimizer is not stepped, so the weights and the optimizer state (moments, step
  count) are exactly as before; the update is counted (``update/skipped_nonfinite``) and a warning
  names the cause. ``max_consecutive`` skipped updates in a row stop the run with
  `NonFiniteUpdateError` (something is systematically wrong: learning rate, precision, a reward).

The LR scheduler is stepped either way: it counts updates *attempted*, so the schedule stays tied to
the step number (a resumed or a re-run job sees the same LR at the same step). With several processes
every rank must take the same decision: ``agree(finite)`` (an all-reduce, rl/parallel/distributed.py) returns
True only if the update is finite on every rank. Either way the gradients are cleared.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)


class NonFiniteUpdateError(RuntimeError):
    """Too many optimizer updates in a row had a non-finite loss or gradient norm."""


def nonfinite_cause(loss: float, grad_norm: float) -> str | None:
    """Why an update must be skipped (``"loss is nan"``, ``"gradient norm is inf"``...), or None."""
    causes = [f"{name} is {value}" for name, value in (("loss", loss), ("gradient norm", grad_norm))
              if not math.isfinite(value)]
    return ", ".join(causes) or None


class FiniteUpdateGuard:
    """Takes (or skips) optimizer + scheduler steps; see the module docstring."""

    def __init__(self, max_consecutive: int = 3):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.consecutive = 0  # skipped updates in a row
        self.total_skipped = 0

    def step(self, optimizer: torch.optim.Optimizer, scheduler, loss: float, grad_norm: float,
             agree: Callable[[bool], bool] | None = None) -> bool:
        """Step the optimizer unless ``loss``/``grad_norm`` is non-finite (on any rank, via ``agree``), and
        the scheduler always; True if the optimizer stepped.

        ``loss`` is the update's total loss (summed over micro-batches), ``grad_norm`` the total
        gradient norm before clipping. Gradients are zeroed in both cases.
        """
        cause = nonfinite_cause(float(loss), float(grad_norm))
        if agree is not None and not agree(cause is None) and cause is None:
            cause = "another rank's loss or gradient norm is not finite"
        if cause is None:
            optimizer.step()
            self.consecutive = 0
        else:
            self.consecutive += 1
            self.total_skipped += 1
            logger.warning(
                "optimizer update skipped: %s; weights and optimizer left untouched (LR schedule advanced) "
                "(%d in a row, the run stops at %d)", cause, self.consecutive, self.max_consecutive,
            )
        with warnings.catch_warnings():  # a skipped first update: torch warns the scheduler steps "first"
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteUpdateError(
                f"{self.consecutive} optimizer updates in a row were skipped because they were not finite "
                f"(last: {cause}); stopping the run (optim.max_nonfinite_steps={self.max_consecutive}). "
                "Check the learning rate, the model dtype (bf16/fp16 overflow) and the rewards."
            )
        return cause is None
