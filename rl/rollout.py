"""Rollouts: sample groups of image-token sequences from the policy.

`RolloutEngine` is the interface the trainer calls; `KVCacheEngine` is our engine over any
Hugging Face causal LM: prefill each prompt once, copy its KV cache to the G samples of its group,
then decode exactly N image codes, sampling only among the image tokens (their rows of ``lm_head``).

The engine's own log-probs are kept only to measure the sampler–trainer mismatch: the importance
ratio's old log-probs always come from the trainer's forward (`rl/logprobs.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from blip3o_rl import registry
from blip3o_rl.policies.base import ImageTokenPolicy, PromptBatch
from blip3o_rl.rl.sampling import sample_codes


@dataclass
class Rollout:
    """Samples of one step; rows of one prompt's group are contiguous."""

    prompts: PromptBatch  # [B, P] each prompt repeated for its group's rows (B = prompts * G)
    codes: torch.Tensor  # [B, N] sampled image codes (0-based)
    sampler_logprobs: torch.Tensor  # [B, N] log-probs the engine sampled with
    hidden_states: torch.Tensor | None = None  # [B, N + 1, H] conditioning states, if the engine gives them


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k truncation (RL default)
    top_p: float = 1.0  # 1.0: no nucleus truncation (RL default)


class RolloutEngine(Protocol):
    def generate(
        self,
        policy: ImageTokenPolicy,
        prompts: PromptBatch,
        num_generations: int,
        params: SamplingParams,
        generator: torch.Generator | None = None,
        return_hidden: bool = False,
    ) -> Rollout: ...


def prefill(policy: ImageTokenPolicy, prompts: PromptBatch):
    """Run the prompts once; returns (KV cache, hidden state of the last prompt token [B, H])."""
    out = policy.hidden_states(prompts.input_ids, prompts.attention_mask, use_cache=True)
    return out.past_key_values, out.last_hidden_state[:, -1]


def decode_one_token(policy, codes, cache, attention_mask, position_ids):
    """Feed one image code per row; returns the new last hidden state ``[B, H]`` (cache updated in place)."""
    ids = policy.layout.to_token_ids(codes)[:, None]  # [B, 1]
    out = policy.hidden_states(ids, attention_mask, cache, position_ids=position_ids[:, None], use_cache=True)
    return out.last_hidden_state[:, -1]


class KVCacheEngine:
    """Batched, KV-cached sampler for any `ImageTokenPolicy` (our own engine; runs on CPU and GPU)."""

    @torch.no_grad()
    def generate(
        self,
        policy: ImageTokenPolicy,
        prompts: PromptBatch,
        num_generations: int,
        params: SamplingParams,
        generator: torch.Generator | None = None,
        return_hidden: bool = False,
    ) -> Rollout:
        n = policy.layout.tokens_per_image
        cache, h = prefill(policy, prompts)  # h: [P, H]
        # One prefill per prompt, then the cache is copied to its G rows.
        cache.batch_repeat_interleave(num_generations)
        group = prompts.repeat_interleave(num_generations)  # [B, P]
        h = h.repeat_interleave(num_generations, 0)  # [B, H]
        b, p = group.input_ids.shape
        mask = torch.cat([group.attention_mask, group.attention_mask.new_ones(b, n)], 1)  # [B, P + N]
        next_pos = group.attention_mask.sum(1)  # [B] position of the first image token

        codes = torch.empty(b, n, dtype=torch.long, device=h.device)
        logprobs = torch.empty(b, n, dtype=torch.float32, device=h.device)
        hidden = [h] if return_hidden else None
        for j in range(n):
            c, lp = sample_codes(policy.image_logits(h), params.temperature, params.top_k, params.top_p, generator)
            codes[:, j], logprobs[:, j] = c, lp
            # The last code's hidden state is needed only as a conditioning state: one extra step.
            if j < n - 1 or return_hidden:
                h = decode_one_token(policy, c, cache, mask[:, : p + j + 1], next_pos + j)
                if hidden is not None:
                    hidden.append(h)
        states = torch.stack(hidden, 1) if hidden is not None else None  # [B, N + 1, H]
        return Rollout(prompts=group, codes=codes, sampler_logprobs=logprobs, hidden_states=states)


def build_engine(name: str, **kwargs: Any) -> RolloutEngine:
    """The rollout engine ``name``: a registered ``blip3o_rl.engine`` name ("kv_cache"), or
    "package.module:Class" / "path/to/file.py:Class", built with ``kwargs``."""
    if name == "vllm":
        raise NotImplementedError(
            "the vLLM rollout engine is not implemented yet; use rollout.engine=kv_cache (see README)"
        )
    return registry.build("engine", name, **kwargs)
