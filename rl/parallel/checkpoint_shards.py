"""What each process puts into a checkpoint, across ranks.

`rl/run/checkpoint.py` owns the folder (staging, manifest, atomic rename, ``latest``, pruning); the run's
`ParallelStrategy` (rl/parallel/base.py) gathers the weights and the optimizer state; this module holds the
per-rank files and the rule on world sizes. The contents:

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

from pathlib import Path
from typing import Any

import torch

from ..errors import ResumeError


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
