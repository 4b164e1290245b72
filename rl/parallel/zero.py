"""DeepSpeed ZeRO-1/2 (`DeepSpeedZeRO`) and ZeRO-3 (`DeepSpeedZeRO3`), configured by the accelerate config
(``configs/accelerate/zero{1,2,3}.yaml``); the trainer calls DeepSpeed's engine for backward and step itself,
so accumulation, clipping and the finite-update guard follow the recipe.

The guard sees the real gradient norm: it is read from the ZeRO optimizer's reduced gradient partitions
before the step (the norm DeepSpeed computes again inside it, and reports after it). A refused update is
discarded by DeepSpeed's own overflow path (its step applies nothing and clears the partitions, checked with
``was_step_applied``); when only the loss was non-finite the gradients are first marked invalid so that
path runs.

Checkpoints: DeepSpeed's own sharded files (``deepspeed/``, one set per rank) hold the optimizer and its fp32
weights; ``optimizer.pt`` is empty.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from accelerate import Accelerator
from torch import nn

from ..run.guard import step_schedule
from ..weights.finetune import TrainableWeights
from .base import ParallelStrategy

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

DEEPSPEED_DIR = "deepspeed"
DEEPSPEED_TAG = "state"


class DeepSpeedZeRO(ParallelStrategy):
    """ZeRO-1/2: optimizer state (and, at 2, gradients) partitioned; every rank keeps whole weights."""

    name = "deepspeed"

    def __init__(self, acc: Accelerator):
        super().__init__(acc)
        plugin = acc.state.deepspeed_plugin
        assert plugin is not None, "a DeepSpeed strategy needs accelerate's DeepSpeed plugin"
        self.ds_config: dict[str, Any] = plugin.deepspeed_config
        self._plugin = plugin

    @property
    def engine(self) -> DeepSpeedEngine:
        return cast("DeepSpeedEngine", self.model)

    def wrap(self, lm, optimizer, micro_batch_size, accumulation_steps, max_grad_norm):
        ds = self.ds_config
        # No dataloader: the batch shape DeepSpeed checks comes from the recipe, and DeepSpeed clips to
        # optim.max_grad_norm inside its step (the norm the guard sees is taken before it, `_grad_norm`).
        ds["train_micro_batch_size_per_gpu"] = micro_batch_size
        ds["gradient_accumulation_steps"] = accumulation_steps
        ds["train_batch_size"] = micro_batch_size * accumulation_steps * self.world
        ds["gradient_clipping"] = 0.0 if max_grad_norm is None else float(max_grad_norm)
        self._model, self._optimizer = self.acc.prepare(lm, optimizer)
        return self.model, self.optimizer

    # DeepSpeed reduces at its accumulation boundary (`backward` with ``last``): no_sync is the default no-op.

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss * self.loss_scale, scale_wrt_gas=False)

    def clip_and_step(self, params, max_norm, loss, guard, scheduler):
        """As the base class, with DeepSpeed's step: it clips (``gradient_clipping``) and applies the update,
        or, for a refused one, discards it through DeepSpeed's own overflow path."""
        norm = self._grad_norm()
        stepped = guard.allows(loss, norm, agree=self.comm.all_ranks)
        if not stepped and math.isfinite(norm):
            self._invalidate_gradients()  # refused for the loss alone: DeepSpeed must not apply the gradients
        self.engine.step()  # applies the update, or (invalid gradients) applies nothing and clears them
        if self.engine.was_step_applied() != stepped:
            raise RuntimeError(f"DeepSpeed {'applied' if not stepped else 'skipped'} an update the "
                               f"finite-update guard {'refused' if not stepped else 'allowed'} (gradient norm {norm})")
        step_schedule(scheduler)
        guard.check_streak()
        return stepped, norm

    def _grad_norm(self) -> float:
        """The global norm of the reduced gradients before DeepSpeed's step clips them: the norm that step
        computes (and reports after it, ``get_global_grad_norm``). Host sync: the guard needs it."""
        opt = self.engine.optimizer
        return float(self._scaled_norm(opt)) / float(opt.loss_scale)

    def _scaled_norm(self, opt: Any) -> torch.Tensor:
        return opt.scaled_global_norm()  # ZeRO-1/2: over its gradient partitions, all-reduced over ranks

    def _invalidate_gradients(self) -> None:
        from deepspeed.utils import safe_get_full_grad, safe_set_full_grad

        first = next(p for p in self.engine.module.parameters() if p.requires_grad)
        grad = safe_get_full_grad(first)
        safe_set_full_grad(first, torch.full_like(grad, math.nan))

    # -- checkpoints -------------------------------------------------------------------------------

    def optimizer_state(self) -> dict[str, Any] | None:
        return {} if self.rank == 0 else None  # DeepSpeed's own files hold it (`stage_rank_files`)

    def load_optimizer_state(self, state: dict[str, Any], path: Path) -> None:
        self.engine.load_checkpoint(str(path / DEEPSPEED_DIR), tag=DEEPSPEED_TAG, load_module_strict=False,
                                    load_optimizer_states=True, load_lr_scheduler_states=False)

    def stage_rank_files(self, staging: Path) -> None:
        super().stage_rank_files(staging)
        self.engine.save_checkpoint(str(staging / DEEPSPEED_DIR), tag=DEEPSPEED_TAG, save_latest=False)


class DeepSpeedZeRO3(DeepSpeedZeRO):
    """ZeRO-3: weights partitioned too; each layer's weights gathered in its forward.

    Every rank loads the weights whole (`loading`) so the frozen reference can be copied and a checkpoint
    loaded into them; DeepSpeed partitions them in `wrap`. (Models too large to load once per device are out
    of scope.) The full-fine-tuning reference gets its own partitioned engine (`wrap_reference`); with
    ``distributed.zero3_gather_for_rollout`` the engine samples inside one gather of all weights.
    """

    def __init__(self, acc: Accelerator, gather_for_rollout: bool):
        super().__init__(acc)
        self.gather_for_rollout = gather_for_rollout

    @contextlib.contextmanager
    def _loading(self) -> Iterator[None]:
        from transformers.integrations import unset_hf_deepspeed_config

        # transformers would otherwise create the weights already partitioned (`zero.Init`), since accelerate
        # registers the DeepSpeed config with it
        unset_hf_deepspeed_config()
        try:
            yield
        finally:
            self._plugin.set_deepspeed_weakref()

    def loading(self) -> AbstractContextManager[None]:
        return self._loading()

    def wrap_reference(self, reference: nn.Module) -> nn.Module:
        """Partitioned like the policy: an engine without an optimizer (each rank keeps 1/N of the copy and
        gathers a layer's weights in its forward)."""
        if self.world == 1:
            return reference
        import deepspeed

        ds = copy.deepcopy(self.ds_config)
        for key in ("optimizer", "scheduler"):
            ds.pop(key, None)
        ds.get("zero_optimization", {}).pop("offload_optimizer", None)
        engine, *_ = deepspeed.initialize(model=reference, config=ds)
        engine.eval()
        return engine

    def _scaled_norm(self, opt: Any) -> torch.Tensor:
        from deepspeed.runtime.utils import combine_grad_norm_groups

        return combine_grad_norm_groups(opt._get_norm_groups())  # what ZeRO-3's step computes (all ranks)

    def _gathered(self) -> AbstractContextManager[Any]:
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None)

    def rollout_weights(self) -> AbstractContextManager[Any]:
        return self._gathered() if self.gather_for_rollout else contextlib.nullcontext()

    def trainable_state(self, weights: TrainableWeights) -> dict[str, torch.Tensor] | None:
        with self._gathered():
            return super().trainable_state(weights)
