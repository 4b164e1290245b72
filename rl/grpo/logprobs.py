"""The trainer's forward: log-probs of sampled image codes, entropy, and conditioning hidden states.

One score call of the policy's `ImageTokenLM` over ``prompt + codes`` gives everything the step needs
(`policies/model.py` does the forward, chunked over positions under activation checkpointing); this
module supplies the distribution it scores under, a `ScoreSpace` (`rl/grpo/score_space.py`): by default
`rl/grpo/sampling.py`'s `scored_logits`, the very set the rollout engine sampled from (with truncated
sampling, each code is scored against the sampler's kept set, and the sampled code is always in it).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from ...policies.base import PromptBatch, SamplingParams
from .score_space import KeptSetSpace, ScoreSpace


@dataclass
class SequenceLogprobs:
    logprobs: torch.Tensor  # [B, N] log-prob of each sampled code (grad flows when enabled)
    entropy: torch.Tensor  # [B, N] entropy of the sampling distribution at each position (detached)
    hidden_states: torch.Tensor | None  # [B, N + 1, H] conditioning states (detached), if requested


def _score_chunk(space: ScoreSpace, params: SamplingParams, kept: torch.Tensor | None, logits: torch.Tensor,
                 codes: torch.Tensor, positions: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits [B, n, K]`` → log-prob of ``codes [B, n]`` and the entropy, under the scored distribution."""
    return space.score(logits, codes, params, None if kept is None else kept[:, positions])


def sequence_logprobs(
    lm: nn.Module,
    prompts: PromptBatch,
    codes: torch.Tensor,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    return_hidden: bool = False,
    chunk_size: int = 128,
    kept: torch.Tensor | None = None,
    space: ScoreSpace | None = None,
) -> SequenceLogprobs:
    """Score ``codes [B, N]`` after ``prompts [B, P]`` with ``lm`` (an `ImageTokenLM`, possibly wrapped by
    DDP/FSDP/DeepSpeed): log-probs ``[B, N]``, entropy ``[B, N]``, and hidden ``[B, N + 1, H]`` if asked.

    ``kept [B, N]``: the sampler's kept-set sizes (truncated sampling), see `rl.grpo.sampling.scored_logits`.
    ``space``: the distribution scored (`rl.grpo.score_space`; default: the sampler's, ``kept_set``).
    """
    space = space or KeptSetSpace()
    score = functools.partial(_score_chunk, space, SamplingParams(temperature, top_k, top_p), kept)
    extra = {"full_vocabulary": True} if space.full_vocabulary else {}
    out = lm(prompts.input_ids, prompts.attention_mask, codes=codes, score=score,
             return_hidden=return_hidden, chunk_size=chunk_size, **extra)  # a `ScoredCodes`
    return SequenceLogprobs(out.logprobs, out.entropy, out.hidden_states)


def micro_batches(n: int, size: int) -> list[slice]:
    """Consecutive slices of at most ``size`` rows covering ``n``."""
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


@torch.no_grad()
def score_rollout(
    lm: nn.Module,
    prompts: PromptBatch,
    codes: torch.Tensor,
    params: SamplingParams,
    micro_batch_size: int,
    chunk_size: int = 128,
    return_hidden: bool = False,
    kept: torch.Tensor | None = None,
    space: ScoreSpace | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """No-grad log-probs ``[B, N]`` (and hidden ``[B, N + 1, H]``) of ``codes`` under ``lm``, by micro-batch."""
    outs = [
        sequence_logprobs(lm, prompts.slice(sl), codes[sl], params.temperature, params.top_k, params.top_p,
                          return_hidden=return_hidden, chunk_size=chunk_size,
                          kept=None if kept is None else kept[sl], space=space)
        for sl in micro_batches(codes.shape[0], micro_batch_size)
    ]
    hidden = torch.cat([o.hidden_states for o in outs if o.hidden_states is not None]) if return_hidden else None
    return torch.cat([o.logprobs for o in outs]), hidden
