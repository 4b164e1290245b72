"""What each process puts into a checkpoint, for every distributed strategy (rl/parallel/distributed.py).

`rl/run/checkpoint.py` owns the folder (staging, manifest, atomic rename, ``latest``, pruning); this module
owns its contents across ranks:

- ``weights.safetensors``: the *full* trainable state (LoRA adapter or all policy weights), gathered on
  rank 0 whatever the sharding (FSDP2: torch's full state dict; ZeRO-3: gathered parameters), so
  ``blip3o-rl export`` makes the same official-layout folder from a sharded run as from one process;
- ``optimizer.pt``: the full optimizer state (DDP: any rank's, they are replicas; FSDP2: gathered by
  torch's ``get_optimizer_state_dict``); under DeepSpeed it is empty and DeepSpeed's own sharded files
  (``deepspeed/``, one set per rank, written by every rank) hold the optimizer and its fp32 weights;
- ``rank_NNNNN.pt``: each rank's RNG states (CPU, CUDA). The prompt sampler's position is global
  (every rank walks the same permutation), so it is saved once, in ``trainer_state.pt``.

A checkpoint records its world size; resuming with another one is refused (`check_world_size`), since
the global batch, each rank's prompts and the DeepSpeed shards all follow from it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ResumeError
from ..weights.finetune import FinetuneSetup
from .distributed import Distributed

DEEPSPEED_DIR = "deepspeed"
DEEPSPEED_TAG = "state"


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def rank_state() -> dict[str, Any]:
    """This process's RNG states (restored by `restore_rank_state`)."""
    state: dict[str, Any] = {"rng_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rank_state(path: Path, rank: int) -> None:
    f = path / rank_file(rank)
    if not f.is_file():  # a checkpoint from before per-rank files: rank 0's state lives in trainer_state.pt
        state = torch.load(path / "trainer_state.pt", weights_only=True)
    else:
        state = torch.load(f, weights_only=True)
    torch.set_rng_state(state["rng_cpu"])
    if torch.cuda.is_available() and "rng_cuda" in state:
        torch.cuda.set_rng_state_all(state["rng_cuda"])


def check_world_size(path: Path, saved: int | None, world: int) -> None:
    """Refuse to resume a checkpoint written by another number of processes."""
    saved = 1 if saved is None else int(saved)
    if saved != world:
        raise ResumeError(
            f"checkpoint {path} was written by {saved} process(es) and this run has {world}: resume with "
            f"{saved} (each rank's prompts, RNG state and shards follow from the world size), or start a new run "
            "from its weights (`blip3o-rl export --run ...`, then model.name_or_path=<exported folder>)")


@contextlib.contextmanager
def _zero3_gathered(dist: Distributed, lm: nn.Module, enabled: bool):
    if not enabled or dist.zero_stage != 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(lm.parameters()), modifier_rank=None):
        yield


def trainable_state(dist: Distributed, lm: nn.Module, finetune: FinetuneSetup) -> dict[str, torch.Tensor] | None:
    """The full trainable state on rank 0 (None on the others). Collective: every rank calls it."""
    if dist.strategy == "fsdp2" and dist.world > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(lm, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return finetune.trainable_state_dict(lm_state=dict(full)) if dist.rank == 0 else None  # type: ignore[arg-type]
    with _zero3_gathered(dist, _inner(lm), True):
        state = finetune.trainable_state_dict() if dist.rank == 0 else None
        return None if state is None else {k: v.detach().cpu().clone() for k, v in state.items()}


def optimizer_state(dist: Distributed, lm: nn.Module, optimizer: Any) -> dict[str, Any] | None:
    """The full optimizer state on rank 0 (None on the others; ``{}`` under DeepSpeed). Collective."""
    if dist.strategy == "deepspeed":
        return {} if dist.rank == 0 else None
    if dist.strategy == "fsdp2" and dist.world > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        full = get_optimizer_state_dict(lm, _torch_optimizer(optimizer),
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return full if dist.rank == 0 else None
    return optimizer.state_dict() if dist.rank == 0 else None


def load_optimizer_state(dist: Distributed, lm: nn.Module, optimizer: Any, state: dict[str, Any], path: Path) -> None:
    """Restore the optimizer (every rank reads the checkpoint from the shared filesystem)."""
    if dist.strategy == "deepspeed":
        lm.load_checkpoint(str(path / DEEPSPEED_DIR), tag=DEEPSPEED_TAG,  # type: ignore[operator]
                           load_module_strict=False, load_optimizer_states=True, load_lr_scheduler_states=False)
        return
    if dist.strategy == "fsdp2" and dist.world > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(lm, _torch_optimizer(optimizer), state, options=StateDictOptions(full_state_dict=True))
        return
    optimizer.load_state_dict(state)


def stage_rank_files(dist: Distributed, lm: nn.Module, staging: Path) -> None:
    """Every rank's own files into the staging folder: its RNG states; DeepSpeed's shards. Collective."""
    torch.save(rank_state(), staging / rank_file(dist.rank))
    if dist.strategy == "deepspeed":
        lm.save_checkpoint(str(staging / DEEPSPEED_DIR), tag=DEEPSPEED_TAG, save_latest=False)  # type: ignore[operator]


def _inner(lm: nn.Module) -> nn.Module:
    return getattr(lm, "module", lm)


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
