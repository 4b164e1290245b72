"""The run's processes, strategy-free: the launcher's world size, and the collectives the trainer calls.

One GRPO run is N processes (``torchrun``, ``accelerate launch``, SLURM), each holding whole prompt
groups or a slice of one (``grpo.batch_size`` samples *per process*; rl/batch_layout.py). How the model
is wrapped, sharded and stepped over those processes is a `ParallelStrategy` (rl/parallel/base.py); this module
is what every strategy shares:

- `launcher_world_size` / `is_main_process`: what the launcher set, before any `Accelerator` exists;
- `Collectives`: `all_sum`, `all_min_max`, `gather_rows`, `all_gather_objects`, `broadcast_object`,
  `any_rank`, `all_ranks`, `barrier`, each a no-op on one process; `collective_error` turns a timed-out
  collective into `CollectiveTimeout` naming the rank that gave up.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..errors import RunError


class LaunchError(RunError):
    """The processes were launched in a way that would not train one model (the message says how to fix it)."""


class CollectiveTimeout(RunError):
    """A collective did not complete within ``distributed.timeout_minutes``: a peer died or hangs."""


def launcher_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun / accelerate launch / the SLURM script (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 of the launch (before any `Accelerator` exists)."""
    return int(os.environ.get("RANK", "0")) == 0


class Collectives:
    """Rank, world size and the collectives over the run's process group (all no-ops on one process)."""

    def __init__(self, rank: int, world: int, device: torch.device):
        self.rank, self.world, self.device = rank, world, device

    def _tensor(self, values: Sequence[float]) -> torch.Tensor:
        return torch.tensor(list(values), dtype=torch.float64, device=self.device)

    def all_sum(self, values: Sequence[float]) -> list[float]:
        if self.world == 1:
            return [float(v) for v in values]
        t = self._tensor(values)
        with collective_error(self.rank, "all_sum"):
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t.tolist()

    def all_min_max(self, mins: Sequence[float], maxs: Sequence[float]) -> tuple[list[float], list[float]]:
        if self.world == 1:
            return [float(v) for v in mins], [float(v) for v in maxs]
        t = self._tensor([-v for v in mins] + list(maxs))
        with collective_error(self.rank, "all_min_max"):
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        vals = t.tolist()
        return [-v for v in vals[: len(mins)]], vals[len(mins) :]

    def gather_rows(self, row: torch.Tensor) -> torch.Tensor:
        """Every rank's ``row`` ``[K]`` stacked in rank order ``[world, K]`` (one collective; the caller
        reduces each column by its own rule)."""
        if self.world == 1:
            return row[None]
        out = [torch.empty_like(row) for _ in range(self.world)]
        with collective_error(self.rank, "gather_rows"):
            torch.distributed.all_gather(out, row.contiguous())
        return torch.stack(out)

    def any_rank(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any (a stop signal, a skipped update)."""
        return self.all_sum([1.0 if flag else 0.0])[0] > 0

    def all_ranks(self, flag: bool) -> bool:
        return not self.any_rank(not flag)

    def all_gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable, small: eval scores), in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        with collective_error(self.rank, "all_gather_object"):
            torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        with collective_error(self.rank, "broadcast_object"):
            torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self, what: str) -> None:
        if self.world > 1:
            with collective_error(self.rank, what):
                torch.distributed.barrier()


@contextlib.contextmanager
def collective_error(rank: int, what: str) -> Iterator[None]:
    """A collective that timed out (a dead or stuck peer) becomes `CollectiveTimeout` naming this rank."""
    try:
        yield
    except (RuntimeError, pickle.PickleError) as exc:
        text = str(exc)
        if "timed out" in text.lower() or "timeout" in text.lower() or "connection" in text.lower():
            raise CollectiveTimeout(
                f"rank {rank}: {what} did not complete ({type(exc).__name__}: {text.splitlines()[0] if text else ''}); "
                "another rank died or hangs (see its log). Raise distributed.timeout_minutes for slow steps "
                "(long rewards, big evaluations), or --resume from the last checkpoint") from exc
        raise
