"""The finite-update guard: the one place an optimizer step is taken, or skipped.

A step whose loss or gradient norm is not finite (NaN or ±inf) would write NaN into every trainable
weight and into Adam's moments: one such step poisons the run for good. `FiniteUpdateGuard.step`
checks both first:

- finite: ``optimizer.step()`` then ``scheduler.step()``;
- not finite: neither is called, so the weights, the optimizer state (moments, step count) and the
  LR scheduler state are exactly as before; the update is counted (``update/skipped_nonfinite``) and
  a warning names the cause. ``max_consecutive`` skipped updates in a row stop the run with
  `NonFiniteUpdateError` (something is systematically wrong: learning rate, precision, a reward).

Either way the gradients are cleared. (Several ranks will need every rank to skip together, and may
want the scheduler stepped on a skipped update to keep step counts aligned: change it here, only.)
"""

from __future__ import annotations

import logging
import math

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

    def step(self, optimizer: torch.optim.Optimizer, scheduler, loss: float, grad_norm: float) -> bool:
        """Step the optimizer and scheduler unless ``loss``/``grad_norm`` is non-finite; True if stepped.

        ``loss`` is the update's total loss (summed over micro-batches), ``grad_norm`` the total
        gradient norm before clipping. Gradients are zeroed in both cases.
        """
        cause = nonfinite_cause(float(loss), float(grad_norm))
        if cause is None:
            optimizer.step()
            scheduler.step()
            self.consecutive = 0
        else:
            self.consecutive += 1
            self.total_skipped += 1
            logger.warning(
                "optimizer update skipped: %s; weights, optimizer and LR scheduler left untouched "
                "(%d in a row, the run stops at %d)", cause, self.consecutive, self.max_consecutive,
            )
        optimizer.zero_grad(set_to_none=True)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteUpdateError(
                f"{self.consecutive} optimizer updates in a row were skipped because they were not finite "
                f"(last: {cause}); stopping the run (optim.max_nonfinite_steps={self.max_consecutive}). "
                "Check the learning rate, the model dtype (bf16/fp16 overflow) and the rewards."
            )
        return cause is None
