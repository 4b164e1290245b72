"""The strategies torch and accelerate run by themselves: one process, DDP, FSDP2 (torch's ``fully_shard``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule

from ...policies.model import ImageTokenLM
from ..weights.finetune import TrainableWeights
from .base import ParallelStrategy


class SingleProcess(ParallelStrategy):
    """One process: no wrapper (accelerate's ``prepare`` only places the module and sets its precision)."""

    name = "ddp"

    def wrap(self, lm, optimizer, micro_batch_size, accumulation_steps, max_grad_norm):
        self._model, self._optimizer = self.acc.prepare(lm, optimizer)
        return self.model, self.optimizer


class DDP(SingleProcess):
    """accelerate's ``DistributedDataParallel``: replicas, gradients all-reduced once per update."""

    def no_sync(self, last: bool) -> AbstractContextManager[None]:
        return contextlib.nullcontext() if last else self.acc.no_sync(self.model)


class FSDP2(ParallelStrategy):
    """torch's ``fully_shard``, applied here (per decoder layer, then the whole `ImageTokenLM`: the same code
    path on CPU and GPU; accelerate's own FSDP plugin is silently ignored on CPU). On one process nothing is
    sharded. Checkpoints gather torch's full state dicts on rank 0."""

    name = "fsdp2"

    def shard(self, lm: nn.Module, reference: nn.Module | None) -> None:
        if self.world > 1:
            fully_shard_lm(cast(ImageTokenLM, lm), () if reference is None else (cast(ImageTokenLM, reference),))

    def wrap(self, lm, optimizer, micro_batch_size, accumulation_steps, max_grad_norm):
        self._model, self._optimizer = lm, self.acc.prepare(optimizer)
        return self.model, self.optimizer

    def no_sync(self, last: bool) -> AbstractContextManager[None]:
        """Skip the reduce-scatter on all but the last micro-batch of an update."""
        if last or self.world == 1:
            return contextlib.nullcontext()
        return _fsdp_no_sync(cast(FSDPModule, self.model))

    def trainable_state(self, weights: TrainableWeights) -> dict[str, torch.Tensor] | None:
        if self.world == 1:
            return super().trainable_state(weights)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        # full_state_dict=True: plain tensors (no DTensor shards) on rank 0
        return weights.state_dict(lm_state=cast(dict[str, torch.Tensor], full)) if self.rank == 0 else None

    def optimizer_state(self) -> dict[str, Any] | None:
        if self.world == 1:
            return super().optimizer_state()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        full = get_optimizer_state_dict(self.model, _torch_optimizer(self.optimizer),
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return dict(full) if self.rank == 0 else None

    def load_optimizer_state(self, state: dict[str, Any], path: Path) -> None:
        if self.world == 1:
            return super().load_optimizer_state(state, path)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.model, _torch_optimizer(self.optimizer), state,
                                 options=StateDictOptions(full_state_dict=True))


@contextlib.contextmanager
def _fsdp_no_sync(model: FSDPModule) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def fully_shard_lm(lm: ImageTokenLM, extra: Sequence[ImageTokenLM] = ()) -> None:
    """FSDP2 in place: each decoder layer, then the whole module (embeddings, final norm, lm_head).

    ``extra`` modules (the frozen full-fine-tuning reference) are sharded the same way.
    """
    from torch.distributed.fsdp import fully_shard

    for module in (lm, *extra):
        body = module.causal_lm.get_decoder()
        for layer in body.layers:
            fully_shard(layer)
        fully_shard(module)


def _torch_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer``."""
    inner = getattr(optimizer, "optimizer", optimizer)
    assert isinstance(inner, torch.optim.Optimizer)
    return inner
