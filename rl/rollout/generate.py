"""The one generate → decode (→ score) loop: a `RolloutRequest` → engine samples → (hidden states) → images.

Training (`GRPOTrainer.step`), in-training evaluation, ``blip3o-rl generate``, ``eval geneval``,
``eval ocr`` and the benchmarks all sample through a `GenerationDriver`; how decoded chunks are scored
(sequentially, or pipelined behind decoding) is the driver's ``scoring`` option (rl/rollout/pipeline.py). The
π_old log-probs of the policy forward that supplies missing hidden states are a field of the result
(`Generation.old_logprobs`). Randomness is explicit: each
prompt's group is sampled from its seed, and each image's decode noise (BLIP3o-NEXT's refiner) comes
from a generator seeded from its prompt's seed and its index, never from the global RNG, so neither
evaluation nor the batch a prompt sits in changes what it draws.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from ...policies.base import ImageTokenPolicy
from ...rewards import CombinedScores
from ..grpo.logprobs import score_rollout
from ..run.tracking import timed
from .engines import KVCacheEngine, Rollout, RolloutEngine, SamplingParams, stream_seed
from .pipeline import Chunk, Scoring, SequentialScoring, SubmitsBatches, chunk_slices


@dataclass(frozen=True)
class RolloutRequest:
    """What to sample: a group of ``num_generations`` for each caption, ``seeds[j]`` seeding caption j's.

    ``metadata[j]`` is caption j's row for the rewards (empty: ``{}`` for each). ``samples``: only those
    in-group indices of each group (a group split across processes, rl/batch_layout.py; None: all G).
    ``return_hidden``: ask the engine for the decoder's conditioning states (None: when the policy's
    decoder needs them).
    """

    captions: Sequence[str]  # [P]
    num_generations: int  # G
    sampling: SamplingParams
    seeds: Sequence[int]  # [P]
    metadata: Sequence[dict[str, Any]] = ()  # [P]
    samples: range | None = None
    return_hidden: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "captions", tuple(self.captions))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "metadata", tuple(self.metadata) or tuple({} for _ in self.captions))
        if not len(self.seeds) == len(self.metadata) == len(self.captions):
            raise ValueError(f"{len(self.captions)} captions but {len(self.seeds)} seeds and {len(self.metadata)} "
                             "metadata rows")

    @property
    def samples_per_prompt(self) -> int:
        """The rows each caption gets here: G, or the length of ``samples``."""
        return self.num_generations if self.samples is None else len(self.samples)

    def per_sample(self) -> tuple[list[str], list[dict[str, Any]]]:
        """The rewards' prompts and metadata ``[B]``: each caption's repeated for its rows."""
        k = self.samples_per_prompt
        return ([c for c in self.captions for _ in range(k)], [m for m in self.metadata for _ in range(k)])


@dataclass
class Generation:
    """One batch of samples and their images; rows of one prompt's group are contiguous."""

    rollout: Rollout
    images: list[Image.Image]  # [B]
    # [B, N] π_old: the policy's own no-grad log-probs under the current weights, computed when its forward
    # had to supply the hidden states (an engine without them), so the trainer need not recompute them.
    old_logprobs: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)  # time/rollout, time/hidden_states, time/decode


def decode_generators(seeds: Sequence[int], num_generations: int, device: torch.device,
                      first_sample: int = 0) -> list[torch.Generator]:
    """One generator per image, seeded from its prompt's seed and its index in the group: samples
    ``first_sample .. first_sample + num_generations - 1`` of each prompt (a slice of a split group
    decodes exactly as those samples of the whole group)."""
    return [torch.Generator(device).manual_seed(stream_seed(s, i, "decode")) for s in seeds
            for i in range(first_sample, first_sample + num_generations)]


@contextlib.contextmanager
def eval_mode(lm: torch.nn.Module) -> Iterator[None]:
    """``lm`` in eval mode for the block, then back to the mode it was in."""
    was_training = lm.training
    lm.eval()
    try:
        yield
    finally:
        lm.train(was_training)


def decode_rows(policy: ImageTokenPolicy, rollout: Rollout, rows: slice) -> list[Image.Image]:
    """Images of the samples ``rows`` (whole prompts: ``rows.start`` and ``rows.stop`` multiples of the
    rollout's samples per prompt, G unless a group is split across processes).

    Each image draws its decode noise from its own generator (`decode_generators`, by its true index in
    its group), so decoding a batch in chunks, or a group in slices on several processes, gives the images
    of decoding it at once.
    """
    k = rollout.samples_per_prompt
    start, stop, _ = rows.indices(rollout.codes.shape[0])
    if start % k or stop % k:
        raise ValueError(f"decode rows {start}:{stop} split the {k} samples of a prompt")
    seeds = rollout.seeds[start // k : stop // k]
    hidden = None if rollout.hidden_states is None else rollout.hidden_states[start:stop]
    with eval_mode(policy.lm):
        return policy.decode(rollout.codes[start:stop], hidden,
                             generators=decode_generators(seeds, k, policy.device, rollout.first_sample))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class GenerationDriver:
    """The one generate → decode (→ score) loop over a `RolloutRequest`.

    ``micro_batch_size`` / ``logprob_chunk_size`` bound the memory of the policy forward that supplies the
    hidden states when the engine does not; ``decode_chunk_size`` samples are decoded at a time (None: all
    at once); ``scoring`` says how decoded chunks reach the rewards (rl/rollout/pipeline.py: sequential, or
    pipelined behind decoding).
    """

    policy: ImageTokenPolicy
    engine: RolloutEngine
    micro_batch_size: int = 16
    logprob_chunk_size: int = 128
    decode_chunk_size: int | None = None
    scoring: Scoring = field(default_factory=SequentialScoring)

    def rollout(self, request: RolloutRequest) -> Generation:
        """The codes (and hidden states; then also π_old) of every sample, no images yet."""
        policy, t = self.policy, dict[str, float]()
        hidden = policy.needs_hidden_states if request.return_hidden is None else request.return_hidden
        with eval_mode(policy.lm):
            with timed("rollout", t):
                ro = self.engine.generate(policy.prompt_batch(list(request.captions)), request.num_generations,
                                          request.sampling, request.seeds, return_hidden=hidden,
                                          samples=request.samples)
            old = None
            if hidden and ro.hidden_states is None:  # the policy's own forward supplies them
                with timed("hidden_states", t):
                    old, ro.hidden_states = score_rollout(
                        policy.lm, ro.prompts, ro.codes, request.sampling, self.micro_batch_size,
                        self.logprob_chunk_size, return_hidden=True, kept=ro.kept_sizes)
        return Generation(ro, [], old, t)

    def generate(self, request: RolloutRequest) -> Generation:
        """`rollout`, then every sample's image (decoded ``decode_chunk_size`` at a time)."""
        gen = self.rollout(request)
        for _ in self._decoded(gen, request):
            pass
        return gen

    def generate_and_score(self, request: RolloutRequest, rewards: SubmitsBatches) -> tuple[Generation, CombinedScores]:
        """`generate`, each decoded chunk scored by ``rewards`` as ``scoring`` says; scores in row order."""
        gen = self.rollout(request)
        scored = self.scoring.score(self._decoded(gen, request), rewards, gen.timings)
        if len(scored.total) != len(gen.images):  # never: each chunk's scores are checked against its images
            raise RuntimeError(f"{len(scored.total)} rewards for {len(gen.images)} samples")
        return gen, scored

    def _decoded(self, gen: Generation, request: RolloutRequest) -> Iterator[Chunk]:
        """Decode ``gen`` chunk by chunk into ``gen.images`` (``time/decode``), yielding each chunk."""
        t, ro = gen.timings, gen.rollout
        prompts, metadata = request.per_sample()
        t["time/decode"] = 0.0
        for rows in chunk_slices(ro.codes.shape[0], self.decode_chunk_size, ro.samples_per_prompt):
            start = time.perf_counter()
            images = decode_rows(self.policy, ro, rows)
            _synchronize(self.policy.device)
            t["time/decode"] += time.perf_counter() - start
            gen.images.extend(images)
            yield Chunk(images, prompts[rows], metadata[rows])


@torch.no_grad()
def generate_images(
    policy: ImageTokenPolicy,
    prompts: Sequence[str],
    images_per_prompt: int = 1,
    sampling: SamplingParams | None = None,
    seed: int = 0,
    batch_size: int = 16,
    engine: RolloutEngine | None = None,
    progress: bool = True,
    first_index: int = 0,
) -> list[list[Image.Image]]:
    """``images_per_prompt`` images for each prompt (outer list follows ``prompts``).

    Runs about ``batch_size`` images per engine call; prompt i is seeded by ``(seed, first_index + i)``,
    so its images do not depend on ``batch_size`` or on the other prompts.
    """
    if engine is None:
        engine = KVCacheEngine()
        engine.setup(policy)
    sampling = sampling or policy.inference_sampling
    driver = GenerationDriver(policy, engine)
    per_call = max(1, batch_size // images_per_prompt)
    out: list[list[Image.Image]] = []
    for s in tqdm(range(0, len(prompts), per_call), desc="generate", disable=not progress, unit="batch"):
        chunk = list(prompts[s : s + per_call])
        seeds = [stream_seed(seed, "generate", first_index + s + j) for j in range(len(chunk))]
        images = driver.generate(RolloutRequest(chunk, images_per_prompt, sampling, seeds)).images
        out += [images[i * images_per_prompt : (i + 1) * images_per_prompt] for i in range(len(chunk))]
    return out


def inference_policy(
    model: str | Path | None = None,
    *,
    policy: str = "blip3o_next",
    run: str | Path | None = None,
    checkpoint: str | None = None,
    dtype: str | None = None,
    policy_kwargs: dict[str, Any] | None = None,
) -> ImageTokenPolicy:
    """A policy to generate with: from a model folder (``policy`` kind + its ``policy_kwargs``), or from a
    training ``run`` with a checkpoint applied (its own kind and settings). On the GPU when there is one;
    ``dtype`` defaults to bfloat16 there and float32 on the CPU."""
    from ...policies import DTYPES, load_policy
    from ..weights.export import load_run_policy

    dtype = dtype or ("bfloat16" if torch.cuda.is_available() else "float32")
    if run is not None:
        if model is not None or policy_kwargs:
            raise ValueError("a run names its own model and policy settings: give run or model, not both")
        loaded, _, _ = load_run_policy(run, checkpoint)
        loaded.lm.to(DTYPES[dtype])
    elif model is None:
        raise ValueError("give a model folder or a training run")
    else:
        loaded = load_policy(policy, model, dtype, **(policy_kwargs or {}))
    if torch.cuda.is_available():
        loaded.lm.to("cuda")
    return loaded
