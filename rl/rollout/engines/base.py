"""The rollout-engine interface: sample groups of image-code sequences from a policy.

An engine is built from the recipe (``rollout.engine`` + ``rollout.engine_kwargs``), handed its policy
once (`setup`), asked for samples every step (`generate`), and told after every optimizer step that the
weights changed (`update_weights`: nothing to do for an engine that reads the live model in-process;
an engine with its own copy of the weights, such as vLLM, reloads them there).

Randomness is explicit: `generate` takes one seed per prompt, and a prompt's G samples depend only on
its seed (not on the other prompts of the batch, nor on the process that runs it). A caller spaces
seeds by at least G (vLLM's convention: sample i of a request seeded s uses s + i); `stream_seed`
derives them from named parts.

A process may hold only part of each group (``samples``: the in-group indices ``[start, stop)``, a
group split across processes, rl/batch_layout.py): it then gets exactly those samples of the full
group, the same codes as rows ``start..stop-1`` of generating all G.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ....policies.base import ImageTokenPolicy, PromptBatch, SamplingParams

__all__ = ["Rollout", "RolloutEngine", "SamplingParams", "stream_seed"]


@dataclass
class Rollout:
    """Samples of one batch; the rows of one prompt are contiguous: its samples ``first_sample ..
    first_sample + samples_per_prompt - 1`` (all G of its group unless the group is split across processes)."""

    prompts: PromptBatch  # [B, P] each prompt repeated for its rows (B = prompts * samples_per_prompt)
    codes: torch.Tensor  # [B, N] sampled image codes (0-based)
    sampler_logprobs: torch.Tensor  # [B, N] log-probs the engine sampled with (logged, never trained on)
    seeds: list[int]  # [prompts] the seed of each prompt's group
    hidden_states: torch.Tensor | None = None  # [B, N + 1, H] conditioning states, if the engine gives them
    # [B, N] sizes of the sampler's kept sets (truncated sampling only; the trainer scores against them)
    kept_sizes: torch.Tensor | None = None
    first_sample: int = 0  # in-group index of each prompt's first row (> 0 for a later slice of a group)

    @property
    def samples_per_prompt(self) -> int:
        return self.codes.shape[0] // len(self.seeds)


def stream_seed(*parts: int | str) -> int:
    """A 62-bit seed from named parts, e.g. ``stream_seed(seed, "train", step, prompt_index)``: stable
    across processes and Python runs (no ``hash()``), and unrelated for different parts."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


class RolloutEngine(ABC):
    """Samples exactly ``policy.layout.tokens_per_image`` image codes per sample, among the image tokens."""

    #: True when `generate` fills `Rollout.hidden_states` (else one no-grad forward of the trainer does).
    provides_hidden_states: bool = False
    #: True when the engine's log-probs are the trainer's own computation (same weights, dtype and model
    #: code: only float rounding differs); False (vLLM's kernels, a bf16 engine) turns on the truncated
    #: importance-sampling correction under ``rollout.is_correction: auto``.
    exact_logprobs: bool = True

    def setup(self, policy: ImageTokenPolicy) -> None:
        """Bind the engine to ``policy`` (called once, before the first `generate`)."""
        self.policy = policy

    def generate(
        self,
        prompts: PromptBatch,
        num_generations: int,
        params: SamplingParams,
        seeds: Sequence[int],
        return_hidden: bool = False,
        samples: range | None = None,
    ) -> Rollout:
        """``num_generations`` samples of each of the ``prompts [P, L]``; ``seeds[j]`` seeds prompt j's group.

        ``return_hidden`` asks for the N + 1 conditioning states (engines that cannot give them ignore it).
        ``samples`` (``range(start, stop)``, step 1, within ``range(num_generations)``; None: all): only
        those samples of each group, equal to rows ``start..stop-1`` of the whole group's generation; the
        `Rollout` then holds ``stop - start`` rows per prompt and ``first_sample = start``.
        """
        if len(seeds) != prompts.input_ids.shape[0]:
            raise ValueError(f"got {len(seeds)} seeds for {prompts.input_ids.shape[0]} prompts")
        full = range(num_generations)
        samples = full if samples is None else samples
        if samples.step != 1 or len(samples) < 1 or samples.start < 0 or samples.stop > num_generations:
            raise ValueError(f"samples {samples} is not a non-empty contiguous part of a group of {num_generations}")
        return self._generate(prompts, num_generations, params, [int(s) for s in seeds], return_hidden, samples)

    @abstractmethod
    def _generate(
        self,
        prompts: PromptBatch,
        num_generations: int,
        params: SamplingParams,
        seeds: list[int],
        return_hidden: bool,
        samples: range,
    ) -> Rollout:
        """`generate` with its arguments checked (one seed per prompt, ``samples`` a valid part of the
        group): what an engine implements."""

    def update_weights(self, policy: ImageTokenPolicy) -> None:  # noqa: B027 (a no-op is the right default)
        """The policy's weights changed (after an optimizer step)."""
