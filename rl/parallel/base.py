"""The interface every parallel strategy implements (single process, DDP, FSDP2, DeepSpeed ZeRO-1/2/3).

A strategy owns everything that differs between them, so the recipe calls the same methods whatever runs:

- set-up, in this order: `loading` (around the policy load), `shard` (before the optimizer exists),
  `wrap` (the module every trainer forward runs through, and the optimizer), `wrap_reference` (the
  frozen full-fine-tuning KL reference);
- one update: `no_sync` around each micro-batch, `backward` of its loss share, then `clip_and_step`:
  the total gradient norm before clipping (the *real* one, under every strategy), the finite-update
  guard's decision (rl/run/guard.py), the optimizer step or its skip, the LR schedule, the cleared gradients;
- `rollout_weights`: the context the rollout engine samples in (ZeRO-3: one gather of the weights);
- checkpoints: `trainable_state` / `optimizer_state` gathered on rank 0, `stage_rank_files` (every rank's
  own files), `load_optimizer_state`.

Gradient scale: every wrapper *averages* gradients over ranks, while `rl/grpo/loss.py` already divides by the
global token / sample counts, so `backward` multiplies the loss by the world size (`loss_scale`): the update
is then the one a single process makes over the global batch.

The engine samples through ``policy.lm``, which *is* the wrapped module's inner module (DDP and DeepSpeed
wrap it, ``fully_shard`` converts it in place), so sampling runs the same hooks (FSDP unshards, ZeRO-3
gathers) as the trainer's forward.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar

import torch
from accelerate import Accelerator
from torch import nn

from ..run.guard import FiniteUpdateGuard, step_schedule
from ..weights.finetune import TrainableWeights
from .checkpoint_shards import rank_file, rank_state
from .distributed import Collectives


class ParallelStrategy(ABC):
    """How the policy is wrapped, stepped and checkpointed over the run's processes (module docstring)."""

    #: recorded in every checkpoint's state (``ddp`` | ``fsdp2`` | ``deepspeed``)
    name: ClassVar[str]

    def __init__(self, acc: Accelerator):
        self.acc = acc
        self.comm = Collectives(acc.process_index, acc.num_processes, acc.device)
        self._model: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def world(self) -> int:
        return self.comm.world

    @property
    def loss_scale(self) -> float:
        """Factor on the backward loss undoing the wrappers' gradient averaging (module docstring)."""
        return float(self.world)

    @property
    def model(self) -> nn.Module:
        """The wrapped module (after `wrap`)."""
        if self._model is None:
            raise RuntimeError("the strategy has not wrapped a model yet (call wrap)")
        return self._model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        if self._optimizer is None:
            raise RuntimeError("the strategy has not wrapped an optimizer yet (call wrap)")
        return self._optimizer

    # -- set-up ---------------------------------------------------------------------------------------

    def loading(self) -> AbstractContextManager[None]:
        """Around loading the policy (ZeRO-3: whole weights on every rank until `wrap` partitions them)."""
        return contextlib.nullcontext()

    def shard(self, lm: nn.Module, reference: nn.Module | None) -> None:  # noqa: B027 (most strategies wrap later)
        """In place, before the optimizer is built (FSDP2); the reference is sharded the same way."""

    @abstractmethod
    def wrap(self, lm: nn.Module, optimizer: torch.optim.Optimizer, micro_batch_size: int,
             accumulation_steps: int, max_grad_norm: float | None) -> tuple[nn.Module, torch.optim.Optimizer]:
        """``(the module every trainer forward runs through, the optimizer as the strategy steps it)``."""

    def wrap_reference(self, reference: nn.Module) -> nn.Module:
        """The frozen full-fine-tuning reference as the trainer calls it (after `wrap`)."""
        return reference

    def release(self) -> None:
        """Drop the wrapper (the end of the run; see `GRPOTrainer._release_wrapper`)."""
        self._model = None

    # -- one update -----------------------------------------------------------------------------------

    def no_sync(self, last: bool) -> AbstractContextManager[None]:
        """Around a micro-batch: skip the gradient reduction on all but the ``last`` of an update."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """Backward of a micro-batch's share of the update loss (x `loss_scale`); ``last`` closes the update."""
        self.acc.backward(loss * self.loss_scale)

    def clip_and_step(self, params: Sequence[nn.Parameter], max_norm: float | None, loss: float,
                      guard: FiniteUpdateGuard, scheduler: Any) -> tuple[bool, float]:
        """Close one update: the gradient norm before clipping (global), the guard's decision agreed by every
        rank, the optimizer step (or none), the LR schedule (always), the gradients cleared.
        ``(stepped, grad_norm)``; `NonFiniteUpdateError` after too many skips in a row."""
        norm = self._clip(params, math.inf if max_norm is None else max_norm)
        stepped = guard.allows(loss, norm, agree=self.comm.all_ranks)
        if stepped:
            self._optimizer_step()
        step_schedule(scheduler)
        self._zero_grad()
        guard.check_streak()
        return stepped, norm

    def _clip(self, params: Sequence[nn.Parameter], max_norm: float) -> float:
        """The total gradient norm before clipping, having clipped to ``max_norm`` (host sync: the guard)."""
        total = self.acc.clip_grad_norm_(params, max_norm)
        if total is None:
            return math.nan
        if hasattr(total, "full_tensor"):  # a DTensor under FSDP2
            total = total.full_tensor()
        return float(total)

    def _optimizer_step(self) -> None:
        self.optimizer.step()

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    # -- rollouts -------------------------------------------------------------------------------------

    def rollout_weights(self) -> AbstractContextManager[None]:
        """The context the rollout engine samples in (ZeRO-3 with ``zero3_gather_for_rollout``: one gather)."""
        return contextlib.nullcontext()

    # -- checkpoints (collective: every rank calls them) ----------------------------------------------

    def trainable_state(self, weights: TrainableWeights) -> dict[str, torch.Tensor] | None:
        """The full trainable state (adapter or all weights) on rank 0, None on the others."""
        if self.rank != 0:
            return None
        return {k: v.detach().cpu().clone() for k, v in weights.state_dict().items()}

    def optimizer_state(self) -> dict[str, Any] | None:
        """The full optimizer state on rank 0, None on the others."""
        return self.optimizer.state_dict() if self.rank == 0 else None

    def load_optimizer_state(self, state: dict[str, Any], path: Path) -> None:
        """Restore the optimizer from a checkpoint (``state``: its ``optimizer.pt``; ``path``: its folder)."""
        self.optimizer.load_state_dict(state)

    def stage_rank_files(self, staging: Path) -> None:
        """This rank's own files into a checkpoint's staging folder (its RNG states)."""
        torch.save(rank_state(), staging / rank_file(self.rank))
