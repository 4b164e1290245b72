"""In-training evaluation: held-out prompts generated through the run's `GenerationDriver` and scored by
the eval rewards, on every rank.

Prompt i is generated on rank ``i % world`` from ``stream_seed(seed, "eval", i)`` (by global index: the
same samples at every step and under any world size, so evaluations are comparable), ``per_call``
prompts' groups per driver call, decoded at once and then scored. Every rank's scores are gathered, so
every rank returns the same ``eval/<reward>/mean`` (a sum in a fixed-order-free ``math.fsum``) and
``eval/<reward>/failed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

from ..data import PromptRow
from .engines import SamplingParams, stream_seed
from .generate import GenerationDriver, RolloutRequest
from .pipeline import SequentialScoring, SubmitsBatches


class GathersObjects(Protocol):
    def all_gather_objects(self, obj: Any) -> list[Any]: ...


class HeldOutEvaluation:
    """``evaluate(driver)`` -> the eval metrics of ``rows`` (``num_generations`` samples each)."""

    def __init__(self, rows: Sequence[PromptRow], num_generations: int, sampling: SamplingParams,
                 rewards: SubmitsBatches, seed: int, per_call: int, rank: int, world: int, comm: GathersObjects):
        self.rows, self.num_generations, self.sampling, self.rewards = list(rows), num_generations, sampling, rewards
        self.seed, self.per_call, self.comm = seed, max(1, per_call), comm
        self.mine = list(range(rank, len(self.rows), world))  # prompt i on rank i % world

    def evaluate(self, driver: GenerationDriver) -> dict[str, float]:
        """Every rank's held-out scores, on every rank (collective); {} without held-out prompts."""
        if not self.rows:
            return {}
        driver = replace(driver, decode_chunk_size=None, scoring=SequentialScoring())  # decode, then score
        totals: dict[str, list[float]] = {}
        failed: dict[str, int] = {}
        for s in range(0, len(self.mine), self.per_call):
            index = self.mine[s : s + self.per_call]
            rows = [self.rows[i] for i in index]
            seeds = [stream_seed(self.seed, "eval", i) for i in index]  # by global index: any world size
            request = RolloutRequest([r.prompt for r in rows], self.num_generations, self.sampling, seeds,
                                     [r.metadata for r in rows])
            _, scored = driver.generate_and_score(request, self.rewards)
            for name, out in scored.outputs.items():
                totals.setdefault(name, []).extend(x for x in out.scores if x is not None)
                failed[name] = failed.get(name, 0) + out.num_failed
        res = {}
        gathered = self.comm.all_gather_objects((totals, failed))  # every rank's scores, on every rank
        for name in gathered[0][0]:
            vals = [v for t, _ in gathered for v in t.get(name, [])]
            res[f"eval/{name}/mean"] = math.fsum(vals) / len(vals) if vals else math.nan  # order-independent
            res[f"eval/{name}/failed"] = float(sum(f.get(name, 0) for _, f in gathered))
        return res
