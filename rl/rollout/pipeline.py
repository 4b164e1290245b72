"""Generate → decode → score, sequential or pipelined (phases 2-3 of the GRPO step).

Sequential: roll out the batch, decode it (in chunks of ``decode_chunk_size`` samples if set), then
score every image at once and wait.

Pipelined (``pipelined=True``): roll out the batch, then decode it chunk by chunk (whole prompts: G samples
each, or the slice of a group split across processes); each
decoded chunk goes to `WeightedRewards.submit` at once (reward threads for in-process rewards,
concurrent requests for `RemoteReward`) while the next chunk decodes. At most ``max_pending`` chunks
wait for their rewards: past that, decoding waits for the oldest. Results are collected in submission
order and joined (`CombinedScores.concat`), so nothing is reordered or dropped, and the step gets the
same rewards as the sequential path: the decode gives each image its own noise generator
(`rl/rollout/generate.py`), and a reward scores each image on its own.

The rollout itself runs as one engine call in both paths (an engine that streams chunks of finished
samples could feed this loop earlier; `KVCacheEngine` finishes every sample at once).

Timings (seconds, added to ``Generation.timings``): ``time/rollout``, ``time/decode`` (summed over the
chunks, CUDA-synchronised on a GPU), ``time/reward`` (the reward stage's span: from the first chunk's
submission until the step holds every reward) and ``time/reward_wait`` (the part of it the step spent
blocked on rewards; all of it when sequential). ``1 - reward_wait / reward`` is the share of reward time
hidden behind decoding.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any, Protocol

import torch

from ...policies.base import ImageTokenPolicy
from ...rewards import CombinedScores
from .engines import RolloutEngine, SamplingParams
from .generate import Generation, decode_rows, sample_rollout


class SubmitsBatches(Protocol):
    """`WeightedRewards`, or a wrapper of it (rl/run/reward_watch.py): ``submit`` returns a future of the scores."""

    def submit(self, images: Any, prompts: Any, metadata: Any) -> Future[CombinedScores]: ...


def chunk_slices(num_samples: int, chunk_size: int | None, samples_per_prompt: int) -> list[slice]:
    """Consecutive row slices of ``chunk_size`` samples (whole prompts' ``samples_per_prompt`` rows: G, or
    the slice of a split group; the last chunk may be shorter)."""
    size = chunk_size or num_samples
    if size % samples_per_prompt:
        raise ValueError(f"decode chunk of {size} samples splits a group (the {samples_per_prompt} samples of a "
                         "prompt held here)")
    return [slice(s, min(s + size, num_samples)) for s in range(0, num_samples, size)]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generate_and_score(
    policy: ImageTokenPolicy,
    engine: RolloutEngine,
    captions: Sequence[str],
    num_generations: int,
    params: SamplingParams,
    seeds: Sequence[int],
    rewards: SubmitsBatches,
    prompts: Sequence[str],
    metadata: Sequence[dict[str, Any]],
    *,
    micro_batch_size: int = 16,
    logprob_chunk_size: int = 128,
    decode_chunk_size: int | None = None,
    pipelined: bool = False,
    max_pending: int = 4,
    samples: range | None = None,
) -> tuple[Generation, CombinedScores]:
    """Samples of ``captions`` (``seeds[j]`` seeds caption j's group), their images and their rewards.

    ``prompts`` / ``metadata`` are per sample (``[B]``, each caption's repeated for its rows).
    ``samples``: only those samples of each group (a group split across processes; None: all G).
    """
    prompts, metadata = list(prompts), list(metadata)
    if max_pending < 1:
        raise ValueError(f"max_pending must be >= 1, got {max_pending}")
    gen = sample_rollout(policy, engine, captions, num_generations, params, seeds, micro_batch_size,
                         logprob_chunk_size, samples)
    t = gen.timings
    b = gen.rollout.codes.shape[0]
    if len(prompts) != b or len(metadata) != b:
        raise ValueError(f"{b} samples but {len(prompts)} prompts and {len(metadata)} metadata rows")
    t["time/decode"] = t["time/reward_wait"] = 0.0
    pending: deque[Future[CombinedScores]] = deque()
    done: list[CombinedScores] = []  # in submission order = row order

    def wait_oldest() -> None:
        start = time.perf_counter()
        done.append(pending.popleft().result())
        t["time/reward_wait"] += time.perf_counter() - start

    first_submit = None
    for rows in chunk_slices(b, decode_chunk_size, gen.rollout.samples_per_prompt):
        start = time.perf_counter()
        images = decode_rows(policy, gen.rollout, rows)
        _synchronize(policy.device)
        t["time/decode"] += time.perf_counter() - start
        gen.images.extend(images)
        if pipelined:
            first_submit = first_submit or time.perf_counter()
            pending.append(rewards.submit(images, prompts[rows], metadata[rows]))
            while len(pending) > max_pending:  # the bounded queue: decoding waits for the oldest chunk
                wait_oldest()
    if pipelined:
        while pending:
            wait_oldest()
        scored = CombinedScores.concat(done)
        assert first_submit is not None
        t["time/reward"] = time.perf_counter() - first_submit  # the waits lie inside this span
    else:
        start = time.perf_counter()
        scored = rewards.submit(gen.images, prompts, metadata).result()
        t["time/reward"] = t["time/reward_wait"] = time.perf_counter() - start
    if len(scored.total) != b:  # never: each chunk's scores are checked against its images
        raise RuntimeError(f"{len(scored.total)} rewards for {b} samples")
    return gen, scored
