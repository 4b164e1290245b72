"""Where one process's samples sit in a GRPO step's global batch (``grpo.batch_size`` B per process,
``grpo.num_generations`` G, W processes).

Two layouts, one order. The step's global batch is ``W x B`` samples of ``W x B / G`` prompts, prompt-major
and sample-minor (prompt p's sample i is global row ``p x G + i``), exactly the rows one process with
batch ``W x B`` holds; process r holds the global rows ``[r x B, (r + 1) x B)``:

- **whole groups** (B a multiple of G): process r holds the B / G prompts ``[r x B/G, (r + 1) x B/G)``,
  all G samples of each;
- **split group** (G a multiple of B, B < G): S = G / B consecutive processes share one prompt; process r
  holds prompt ``r // S``, its samples ``[(r % S) x B, (r % S + 1) x B)``. W must be a multiple of S.

Worked values: G=4, B=2, W=4 → S=2, 2 prompts per step; ranks 0..3 hold (prompt, samples) = (0, [0, 2)),
(0, [2, 4)), (1, [0, 2)), (1, [2, 4)). G=4, B=8, W=2 → 4 prompts per step; rank 0 holds prompts 0, 1
and rank 1 prompts 2, 3, all samples [0, 4).

So gathering per-sample values in rank order gives the one-process vector (advantages, metrics), and
a sample's randomness keyed by (prompt index, index in its group) is the same at any world size.
"""

from __future__ import annotations

from dataclasses import dataclass


def batch_split_problem(batch_size: int, group_size: int) -> str | None:
    """Why ``batch_size`` samples per process cannot hold groups of ``group_size`` (None: they can):
    one must divide the other."""
    if batch_size < 1:
        return f"batch_size must be >= 1, got {batch_size}"
    if batch_size % group_size == 0 or group_size % batch_size == 0:
        return None
    return (f"batch_size={batch_size} samples per process and num_generations={group_size}: one must divide the "
            f"other (batch_size a multiple of {group_size}: each process holds whole groups; or a divisor of "
            f"{group_size}: one group split over {group_size} / batch_size consecutive processes)")


@dataclass(frozen=True)
class BatchLayout:
    """This process's share of the step's global batch (see the module docstring); checked when built."""

    batch_size: int  # B: samples per process
    group_size: int  # G: samples per prompt
    world_size: int  # W: processes
    rank: int

    def __post_init__(self) -> None:
        problem = batch_split_problem(self.batch_size, self.group_size)
        if problem is not None:
            raise ValueError(problem)
        if self.world_size % self.ranks_per_prompt:
            s = self.ranks_per_prompt
            raise ValueError(
                f"batch_size={self.batch_size} holds 1/{s} of a group of num_generations={self.group_size}, so "
                f"{s} consecutive processes share each prompt: the world size {self.world_size} is not a multiple "
                f"of {s} (run a multiple of {s} processes, or set batch_size to a multiple of {self.group_size})")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside a world of {self.world_size}")

    @property
    def split(self) -> bool:
        """True when a group is split across processes (B < G)."""
        return self.batch_size < self.group_size

    @property
    def ranks_per_prompt(self) -> int:
        """S: consecutive processes holding one prompt's group (1: whole groups)."""
        return self.group_size // self.batch_size if self.split else 1

    @property
    def prompts_per_step(self) -> int:
        """Prompts of the step over all processes."""
        return self.world_size * self.batch_size // self.group_size

    @property
    def prompts(self) -> range:
        """Indices, among the step's prompts, of the prompts this process holds (one when split)."""
        if self.split:
            p = self.rank // self.ranks_per_prompt
            return range(p, p + 1)
        per = self.batch_size // self.group_size
        return range(self.rank * per, (self.rank + 1) * per)

    @property
    def samples(self) -> range:
        """In-group indices of the samples held of each of those prompts (``range(G)``: whole groups)."""
        if not self.split:
            return range(self.group_size)
        start = (self.rank % self.ranks_per_prompt) * self.batch_size
        return range(start, start + self.batch_size)

    @property
    def rows(self) -> slice:
        """This process's rows of the step's global batch ``[W x B]`` (the rank-order gather)."""
        return slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
