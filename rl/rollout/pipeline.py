"""How decoded images reach the rewards: the generation driver's scoring option (phases 2-3 of the step).

The driver (`GenerationDriver.generate_and_score`, rl/rollout/generate.py) decodes a rollout chunk by chunk
(``decode_chunk_size`` samples: whole prompts, G samples each or the slice of a group split across
processes) and hands the chunks, lazily decoded, to its `Scoring`:

- `SequentialScoring`: decode every chunk, then score every image at once and wait.
- `PipelinedScoring`: each decoded chunk goes to `WeightedRewards.submit` at once (reward threads for
  in-process rewards, concurrent requests for `RemoteReward`) while the next chunk decodes. At most
  ``max_pending`` chunks wait for their rewards: past that, decoding waits for the oldest. Results are
  collected in submission order and joined (`CombinedScores.concat`), so nothing is reordered or
  dropped, and the step gets the same rewards as the sequential path: the decode gives each image its
  own noise generator (rl/rollout/generate.py), and a reward scores each image on its own.

Timings (seconds, added to the caller's ``timings``): ``time/reward`` (the reward stage's span: from the
first chunk's submission until every reward is in) and ``time/reward_wait`` (the part of it spent
blocked on rewards; all of it when sequential). ``1 - reward_wait / reward`` is the share of reward time
hidden behind decoding.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from PIL import Image

from ...rewards import CombinedScores


class SubmitsBatches(Protocol):
    """`WeightedRewards` (or a stand-in): ``submit`` returns a future of the batch's scores."""

    def submit(self, images: Any, prompts: Any, metadata: Any) -> Future[CombinedScores]: ...


class Chunk(NamedTuple):
    """One decoded chunk of whole prompts and its reward inputs (``[b]`` each)."""

    images: list[Image.Image]
    prompts: Sequence[str]
    metadata: Sequence[dict[str, Any]]


def chunk_slices(num_samples: int, chunk_size: int | None, samples_per_prompt: int) -> list[slice]:
    """Consecutive row slices of ``chunk_size`` samples (whole prompts' ``samples_per_prompt`` rows: G, or
    the slice of a split group; the last chunk may be shorter)."""
    size = chunk_size or num_samples
    if size % samples_per_prompt:
        raise ValueError(f"decode chunk of {size} samples splits a group (the {samples_per_prompt} samples of a "
                         "prompt held here)")
    return [slice(s, min(s + size, num_samples)) for s in range(0, num_samples, size)]


class Scoring(ABC):
    """Scores the chunks of one batch (decoded as they are iterated), in row order."""

    @abstractmethod
    def score(self, chunks: Iterable[Chunk], rewards: SubmitsBatches, timings: dict[str, float]) -> CombinedScores:
        """Every chunk's scores joined in row order; ``time/reward`` and ``time/reward_wait`` into ``timings``."""


@dataclass(frozen=True)
class SequentialScoring(Scoring):
    """Decode everything, then score every image in one submission and wait."""

    def score(self, chunks: Iterable[Chunk], rewards: SubmitsBatches, timings: dict[str, float]) -> CombinedScores:
        images: list[Image.Image] = []
        prompts: list[str] = []
        metadata: list[dict[str, Any]] = []
        for chunk in chunks:
            images += chunk.images
            prompts += chunk.prompts
            metadata += chunk.metadata
        start = time.perf_counter()
        scored = rewards.submit(images, prompts, metadata).result()
        timings["time/reward"] = timings["time/reward_wait"] = time.perf_counter() - start
        return scored


@dataclass(frozen=True)
class PipelinedScoring(Scoring):
    """Each chunk submitted as soon as it is decoded; at most ``max_pending`` chunks wait for rewards."""

    max_pending: int = 4

    def __post_init__(self) -> None:
        if self.max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {self.max_pending}")

    def score(self, chunks: Iterable[Chunk], rewards: SubmitsBatches, timings: dict[str, float]) -> CombinedScores:
        timings["time/reward_wait"] = 0.0
        pending: deque[Future[CombinedScores]] = deque()
        done: list[CombinedScores] = []  # in submission order = row order

        def wait_oldest() -> None:
            start = time.perf_counter()
            done.append(pending.popleft().result())
            timings["time/reward_wait"] += time.perf_counter() - start

        first_submit = None
        for chunk in chunks:
            first_submit = first_submit or time.perf_counter()
            pending.append(rewards.submit(chunk.images, chunk.prompts, chunk.metadata))
            while len(pending) > self.max_pending:  # the bounded queue: decoding waits for the oldest chunk
                wait_oldest()
        while pending:
            wait_oldest()
        assert first_submit is not None  # a batch has at least one chunk
        timings["time/reward"] = time.perf_counter() - first_submit  # the waits lie inside this span
        return CombinedScores.concat(done)
