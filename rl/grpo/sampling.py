"""Logits → the sampling distribution, sampling from it, and scoring sampled codes against it.

`process_logits` is the single definition of the distribution tokens are drawn from (temperature,
then top-k, then nucleus top-p: the order of transformers' and vLLM's samplers).

**One truncation rule: a kept set that is a function of the logits alone.** Both truncations are
*closed under ties at the cut*: top-k keeps every code whose logit is >= the k-th largest; top-p finds
the last code of the nucleus in sorted order (the first at which the mass before it reaches ``top_p``)
and keeps every code whose logit is >= that code's logit. So the kept set is ``{x >= cut}`` for a cut
value that depends only on the sorted *values* (never on which of several tied codes `torch.sort`
happens to put first): the same on every device, and rebuilt exactly from its size. Exact ties are
routine with bf16 logits (spacing 0.0625 between 8 and 16). transformers' and vLLM's own samplers cut
top-p inside a run of ties (by sort order): vLLM cannot follow this rule, and there the truncated
importance-sampling correction (`rl/grpo/is_correction.py`) covers the difference.

**Exact truncated log-probs.** With ``top_k``/``top_p`` set, the sampler draws from a *kept set* of
codes. The trainer's forward (and the reference's) never reproduces the sampler's logits bit for bit
(a KV-cached decode vs a full forward, bf16 rounding), so re-deriving the truncation from its own
logits can leave out a code the sampler drew: log-prob −∞, a NaN ratio, NaN gradients. Instead:

- `sample_codes` returns, per row, the **size** of the set it kept. The set is ``{x >= cut}``, so
  its size characterises it exactly (the ``size`` largest logits, ties included).
- `scored_logits` builds the distribution a forward scores the codes against: the ``size`` largest
  logits of *that forward*, plus the sampled code, always (so a rounding difference at the boundary
  can never make it −∞); renormalised by the caller's ``log_softmax``. Given no sizes (an engine that
  reports none) it recomputes the truncation from the forward's logits by the same rule, again forcing
  the sampled code in. The policy, π_old and the reference all score against their own top-``size`` set.
- Untruncated sampling (``top_k=0``, ``top_p=1``, the RL default) returns no sizes, and
  `scored_logits` is exactly ``logits.float() / temperature``: bit-identical to before.

The remaining sampler/trainer difference is the numerical one (``rollout/logprob_diff_*`` in the
logs); the importance ratio's π_old always comes from the trainer's forward, not from the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch


def is_truncated(top_k: int, top_p: float) -> bool:
    """True when top-k or top-p removes codes (``top_k=0``/``top_p=1`` disable them)."""
    return bool(top_k) or top_p < 1.0


def process_logits(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Scale by temperature, then keep the top-k / nucleus top-p codes (others -inf). Float32 out.

    Both cuts keep every code tied with the last one kept (module docstring): the kept set is
    ``{x >= cut}``, a function of the logits alone. ``top_k=0`` and ``top_p=1.0`` mean no truncation (the
    RL default). ``temperature`` must be > 0; greedy decoding is handled by the caller (`sample_codes`
    with temperature 0).
    """
    x = logits.float() / temperature
    if top_k and top_k < x.shape[-1]:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))  # every code tied with the k-th is kept
    if top_p < 1.0:
        x = x.masked_fill(x < top_p_cut(x, top_p), float("-inf"))
    return x


def top_p_cut(x: torch.Tensor, top_p: float) -> torch.Tensor:
    """``[..., 1]`` the smallest logit top-p keeps: that of the nucleus's last code, the last one (in
    descending order) before which the mass of the codes ahead of it has not yet reached ``top_p``.

    Only the sorted *values* enter (their order among equal values does not change them), so the cut is
    deterministic; ``x >= cut`` then keeps every code tied with it.
    """
    sorted_x = torch.sort(x, dim=-1, descending=True).values
    probs = sorted_x.softmax(-1)
    inside = (probs.cumsum(-1) - probs) < top_p  # the mass strictly before the code has not reached top_p
    last = inside.sum(-1, keepdim=True) - 1  # >= 0: the first code is always inside
    return sorted_x.gather(-1, last)


class SampledCodes(NamedTuple):
    codes: torch.Tensor  # [B] sampled codes
    logprobs: torch.Tensor  # [B] their log-probs under the (truncated, renormalised) sampling distribution
    kept: torch.Tensor | None  # [B] size of the kept set per row; None when nothing was truncated


def sample_codes(
    logits: torch.Tensor,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    group_size: int | None = None,
    samples: range | None = None,
) -> SampledCodes:
    """Draw one code per row of ``logits [B, K]``; returns ``(codes [B], logprobs [B], kept [B] | None)``.

    Uses the exponential-race trick (argmax of p / Exp(1) noise), which needs no host sync. With a list
    of generators, consecutive blocks of ``group_size`` rows draw their noise from one generator each
    (a prompt's group), so a block's samples do not depend on the other rows; with ``samples`` the blocks
    are those rows of each group's draw (`draw_noise`).
    ``temperature == 0`` is greedy decoding; its log-probs are those of the temperature-1 distribution
    (and ``kept`` is None: greedy is for generation, not for training).
    """
    if temperature == 0:
        return sample_with_noise(logits, None, 0.0)
    noise = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    draw_noise(noise, generator, group_size, samples)
    return sample_with_noise(logits, noise, temperature, top_k, top_p)


def draw_noise(noise: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None = None,
               group_size: int | None = None, samples: range | None = None) -> torch.Tensor:
    """Fill ``noise [B, K]`` with Exp(1) draws in place: consecutive blocks of ``group_size`` rows from one
    generator each (a prompt's group), or all rows from ``generator``. Launches kernels only (no host sync).

    ``samples`` (part of a group held by this process): each generator still draws its whole
    ``[group_size, K]`` block, and its rows ``samples`` fill a block of ``len(samples)`` rows, so a slice of
    a group gets exactly the noise those samples get when the whole group is drawn.
    """
    if isinstance(generator, Sequence):
        rows = group_size if samples is None else len(samples)
        if group_size is None or rows is None or rows * len(generator) != noise.shape[0]:
            raise ValueError(f"{len(generator)} generators x {rows} rows (samples {samples} of group_size "
                             f"{group_size}) != {noise.shape[0]} rows")
        whole = samples is None or len(samples) == group_size
        block = None if whole else noise.new_empty(group_size, noise.shape[1])  # [G, K] one group's draw
        for i, gen in enumerate(generator):
            dst = noise[i * rows : (i + 1) * rows]
            if block is None:
                dst.exponential_(1, generator=gen)
            else:
                assert samples is not None
                dst.copy_(block.exponential_(1, generator=gen)[samples.start : samples.stop])
    else:
        noise.exponential_(1, generator=generator)
    return noise


def sample_with_noise(logits: torch.Tensor, noise: torch.Tensor | None, temperature: float, top_k: int = 0,
                      top_p: float = 1.0) -> SampledCodes:
    """`sample_codes` given its Exp(1) ``noise [B, K]`` (`draw_noise`): a pure tensor function, so a
    compiled decode step can contain it. ``temperature == 0`` is greedy (``noise`` unused, may be None)."""
    if temperature == 0:
        logp = torch.log_softmax(logits.float(), -1)
        codes = logp.argmax(-1)
        return SampledCodes(codes, logp.gather(-1, codes[:, None]).squeeze(-1), None)
    assert noise is not None, "sampling at temperature > 0 needs noise"
    x = process_logits(logits, temperature, top_k, top_p)
    kept = torch.isfinite(x).sum(-1) if is_truncated(top_k, top_p) else None  # [B]
    logp = torch.log_softmax(x, -1)
    codes = (logp.exp() / noise).argmax(-1)
    return SampledCodes(codes, logp.gather(-1, codes[:, None]).squeeze(-1), kept)


def scored_logits(
    logits: torch.Tensor,
    codes: torch.Tensor,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    kept: torch.Tensor | None = None,
) -> torch.Tensor:
    """The logits ``[..., K]`` (float32, −inf outside the set) a forward scores ``codes [...]`` against.

    ``kept [...]``: the sampler's kept-set sizes (`sample_codes`). With them, each row keeps its own
    ``kept`` largest logits; without them (and ``top_k``/``top_p`` set) the truncation is recomputed.
    Either way the sampled code is always in the set. Untruncated: ``logits.float() / temperature``.
    Gradients flow through the kept logits; the set itself is chosen without grad.
    """
    x = logits.float() / temperature
    if kept is None and not is_truncated(top_k, top_p):
        return x
    with torch.no_grad():
        if kept is None:
            keep = torch.isfinite(process_logits(logits, temperature, top_k, top_p))
        else:
            sorted_x = torch.sort(x, dim=-1, descending=True).values
            idx = (kept.long().clamp(1, x.shape[-1]) - 1)[..., None]  # [..., 1]
            keep = x >= sorted_x.gather(-1, idx)  # the set {x >= cut} has exactly `kept` members
        keep.scatter_(-1, codes[..., None], True)
    return x.masked_fill(~keep, float("-inf"))
