"""The one generate → decode loop: prompts → engine samples → (hidden states) → images.

Training (`GRPOTrainer.step`), in-training evaluation, ``blip3o-rl generate``, ``eval geneval``,
``eval ocr`` and the benchmarks all sample through `sample_and_decode`. Randomness is explicit: each
prompt's group is sampled from its seed, and each image's decode noise (BLIP3o-NEXT's refiner) comes
from a generator seeded from its prompt's seed and its index, never from the global RNG, so neither
evaluation nor the batch a prompt sits in changes what it draws.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from ...policies.base import ImageTokenPolicy
from ..grpo.logprobs import score_rollout
from ..run.tracking import timed
from .engines import KVCacheEngine, Rollout, RolloutEngine, SamplingParams, stream_seed


@dataclass
class Generation:
    """One batch of samples and their images; rows of one prompt's group are contiguous."""

    rollout: Rollout
    images: list[Image.Image]  # [B]
    # [B, N] the policy's own no-grad log-probs, when its forward had to supply the hidden states
    # (an engine without them): that is π_old under the current weights, reusable by the trainer.
    forward_logprobs: torch.Tensor | None = None
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


def sample_rollout(
    policy: ImageTokenPolicy,
    engine: RolloutEngine,
    captions: Sequence[str],
    num_generations: int,
    params: SamplingParams,
    seeds: Sequence[int],
    micro_batch_size: int = 16,
    logprob_chunk_size: int = 128,
    samples: range | None = None,
) -> Generation:
    """The first half of `sample_and_decode`: the codes (and hidden states) of every sample, no images yet.
    ``samples``: only those samples of each group (`RolloutEngine.generate`; None: all)."""
    t: dict[str, float] = {}
    lm = policy.lm
    with eval_mode(lm):
        with timed("rollout", t):
            ro = engine.generate(policy.prompt_batch(captions), num_generations, params, seeds,
                                 return_hidden=policy.needs_hidden_states, samples=samples)
        forward_logprobs = None
        if policy.needs_hidden_states and ro.hidden_states is None:
            with timed("hidden_states", t):
                forward_logprobs, ro.hidden_states = score_rollout(
                    lm, ro.prompts, ro.codes, params, micro_batch_size, logprob_chunk_size, return_hidden=True,
                    kept=ro.kept_sizes)
    return Generation(ro, [], forward_logprobs, t)


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


def sample_and_decode(
    policy: ImageTokenPolicy,
    engine: RolloutEngine,
    captions: Sequence[str],
    num_generations: int,
    params: SamplingParams,
    seeds: Sequence[int],
    micro_batch_size: int = 16,
    logprob_chunk_size: int = 128,
) -> Generation:
    """``num_generations`` images for each caption; ``seeds[j]`` seeds caption j's group.

    ``micro_batch_size`` / ``logprob_chunk_size`` bound the memory of the policy forward that supplies
    the hidden states when the engine does not. (`blip3o_rl.rl.rollout.pipeline` runs the same two halves,
    decoding in chunks that are scored while the next one decodes.)
    """
    gen = sample_rollout(policy, engine, captions, num_generations, params, seeds, micro_batch_size,
                         logprob_chunk_size)
    with timed("decode", gen.timings):
        gen.images = decode_rows(policy, gen.rollout, slice(None))
    return gen


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
    per_call = max(1, batch_size // images_per_prompt)
    out: list[list[Image.Image]] = []
    for s in tqdm(range(0, len(prompts), per_call), desc="generate", disable=not progress, unit="batch"):
        chunk = list(prompts[s : s + per_call])
        seeds = [stream_seed(seed, "generate", first_index + s + j) for j in range(len(chunk))]
        images = sample_and_decode(policy, engine, chunk, images_per_prompt, sampling, seeds).images
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
