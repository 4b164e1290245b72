"""The one place a strategy is chosen by name: ``distributed.strategy`` (or the launcher's accelerate config)
→ the run's `Accelerator` and its `ParallelStrategy`.

`make_strategy` builds the `Accelerator` so that the launcher's world size is really the trainer's: on a
machine without CUDA it is created with ``cpu=True`` (with the default ``cpu=False`` a ``torchrun`` launch
gives every rank world size 1 and no process group: N independent copies would train without an error),
the process group is gloo on CPU / NCCL on GPU with a collective timeout (``distributed.timeout_minutes``),
and `check_world_size` refuses a launcher/accelerator disagreement, naming both numbers.
"""

from __future__ import annotations

import datetime
import os

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs

from .base import ParallelStrategy
from .distributed import LaunchError, launcher_world_size
from .native import DDP, FSDP2, SingleProcess
from .zero import DeepSpeedZeRO, DeepSpeedZeRO3

STRATEGIES = ("auto", "ddp", "fsdp2", "deepspeed")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true")


def resolve_strategy(strategy: str) -> str:
    """``auto``: what the launcher asked for (``accelerate launch --config_file`` with FSDP → ``fsdp2``,
    DeepSpeed → ``deepspeed``), else ``ddp``."""
    if strategy != "auto":
        return strategy
    if _env_flag("ACCELERATE_USE_FSDP"):
        return "fsdp2"
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    return "ddp"


def make_strategy(strategy: str, mixed_precision: str = "none", timeout_minutes: float = 30.0,
                  zero3_gather_for_rollout: bool = True) -> ParallelStrategy:
    """The run's strategy for ``distributed.strategy`` (``auto`` resolved here), with its `Accelerator`
    (``mixed_precision`` none | bf16 | fp16), after `check_world_size`."""
    name = resolve_strategy(strategy)
    if name not in STRATEGIES[1:]:
        raise ValueError(f"distributed.strategy must be one of {STRATEGIES}, got {strategy!r}")
    acc = make_accelerator(name, mixed_precision, timeout_minutes)
    if name == "deepspeed":
        plugin = acc.state.deepspeed_plugin
        stage = int(plugin.zero_stage) if plugin is not None else 0
        return DeepSpeedZeRO3(acc, zero3_gather_for_rollout) if stage == 3 else DeepSpeedZeRO(acc)
    if name == "fsdp2":
        return FSDP2(acc)
    return DDP(acc) if acc.num_processes > 1 else SingleProcess(acc)


def make_accelerator(strategy: str, mixed_precision: str = "none", timeout_minutes: float = 30.0) -> Accelerator:
    """The run's `Accelerator` for ``strategy`` (already resolved), after `check_world_size`."""
    no_cuda = not torch.cuda.is_available()
    deepspeed = strategy == "deepspeed"
    # DeepSpeed brings its own CPU accelerator (cpu=True would silently drop it); it needs gloo spelt out.
    cpu = no_cuda and not deepspeed
    kwargs = InitProcessGroupKwargs(backend="gloo" if no_cuda else "nccl",
                                    timeout=datetime.timedelta(minutes=timeout_minutes))
    if deepspeed and not _env_flag("ACCELERATE_USE_DEEPSPEED"):
        raise LaunchError("distributed.strategy=deepspeed needs `accelerate launch --config_file "
                          "configs/accelerate/zero{1,2,3}.yaml` (the DeepSpeed settings live in that file)")
    hidden = {}
    if strategy == "fsdp2":
        # FSDP is applied here with torch's fully_shard; accelerate must not wrap the module a second time.
        hidden = {k: os.environ.pop(k) for k in list(os.environ) if k == "ACCELERATE_USE_FSDP"}
    if launcher_world_size() == 1:
        # One process (a test suite, a notebook): accelerate's state is a process-wide singleton, and a second
        # run with another precision would be refused; nothing is shared with another process to reset.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    # One process: no process group at all (accelerate would otherwise look for one for the given backend).
    handlers = [kwargs] if launcher_world_size() > 1 or deepspeed else []
    try:
        acc = Accelerator(cpu=cpu, mixed_precision="no" if mixed_precision == "none" else mixed_precision,
                          kwargs_handlers=handlers)
    finally:
        os.environ.update(hidden)
    check_world_size(acc, strategy)
    return acc


def check_world_size(acc: Accelerator, strategy: str) -> None:
    """Refuse a launch whose processes do not form one process group of ``WORLD_SIZE`` ranks."""
    expected = launcher_world_size()
    got = acc.num_processes
    pg = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    if got != expected or pg != expected:
        raise LaunchError(
            f"the launcher started {expected} processes (WORLD_SIZE={expected}) but this process sees "
            f"{got} (accelerate) / {pg} (torch.distributed): they would train independent copies. On a "
            "machine without CUDA launch with `torchrun --standalone --nproc_per_node N -m blip3o_rl train ...` "
            "(`accelerate launch --cpu --num_processes N` starts only one process); see docs/multi-process.md")
    deepspeed = strategy == "deepspeed"
    if deepspeed and acc.distributed_type != DistributedType.DEEPSPEED:
        raise LaunchError(f"distributed.strategy=deepspeed but accelerate runs {acc.distributed_type.value}")
    if not deepspeed and acc.distributed_type == DistributedType.DEEPSPEED:
        raise LaunchError(f"the accelerate config asks for DeepSpeed but distributed.strategy={strategy}")
