"""Parallel strategies: how the policy is loaded, wrapped, stepped and checkpointed over the run's processes.

`make_strategy` (rl/parallel/factory.py) picks one by ``distributed.strategy``; the recipe then calls the
`ParallelStrategy` interface only (rl/parallel/base.py): `SingleProcess` and `DDP`, `FSDP2`
(rl/parallel/native.py), `DeepSpeedZeRO` (ZeRO-1/2) and `DeepSpeedZeRO3` (rl/parallel/zero.py). The
collectives every strategy shares are strategy-free (rl/parallel/distributed.py `Collectives`); the
per-rank checkpoint files are rl/parallel/checkpoint_shards.py.
"""

from .base import ParallelStrategy
from .factory import STRATEGIES, check_world_size, make_strategy, resolve_strategy

__all__ = ["STRATEGIES", "ParallelStrategy", "check_world_size", "make_strategy", "resolve_strategy"]
