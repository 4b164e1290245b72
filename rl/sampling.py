"""Logits → the sampling distribution, and sampling from it.

`process_logits` is the single definition of the distribution tokens are drawn from: the rollout
engine samples from it and the trainer computes its log-probs through it, so the importance ratio
is exact (no sampler/trainer mismatch from a mask, temperature or truncation applied on one side only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def process_logits(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Scale by temperature, then keep the top-k / nucleus top-p codes (others -inf). Float32 out.

    ``top_k=0`` and ``top_p=1.0`` mean no truncation (the RL default). ``temperature`` must be > 0;
    greedy decoding is handled by the caller (`sample_codes` with temperature 0).
    """
    x = logits.float() / temperature
    if top_k and top_k < x.shape[-1]:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = sorted_x.softmax(-1)
        # drop a code when the mass of the codes strictly before it already reaches top_p
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return x


def sample_codes(
    logits: torch.Tensor,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    group_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one code per row of ``logits [B, K]``; returns ``(codes [B], logprobs [B])``.

    Uses the exponential-race trick (argmax of p / Exp(1) noise), which needs no host sync. With a list
    of generators, consecutive blocks of ``group_size`` rows draw their noise from one generator each
    (a prompt's group), so a block's samples do not depend on the other rows.
    ``temperature == 0`` is greedy decoding; its log-probs are those of the temperature-1 distribution.
    """
    if temperature == 0:
        logp = torch.log_softmax(logits.float(), -1)
        codes = logp.argmax(-1)
        return codes, logp.gather(-1, codes[:, None]).squeeze(-1)
    logp = torch.log_softmax(process_logits(logits, temperature, top_k, top_p), -1)
    noise = torch.empty_like(logp)
    if isinstance(generator, Sequence):
        if group_size is None or group_size * len(generator) != logp.shape[0]:
            raise ValueError(f"{len(generator)} generators x group_size {group_size} != {logp.shape[0]} rows")
        for i, gen in enumerate(generator):
            noise[i * group_size : (i + 1) * group_size].exponential_(1, generator=gen)
    else:
        noise.exponential_(1, generator=generator)
    codes = (logp.exp() / noise).argmax(-1)
    return codes, logp.gather(-1, codes[:, None]).squeeze(-1)
