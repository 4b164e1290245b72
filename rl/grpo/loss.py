"""The clipped GRPO policy loss with an optional k3 KL penalty, and its normalisations.

Per token t of sample i (all log-probs over the image codes only, same mask and temperature)::

    ratio   = exp(logp - old_logp)
    pg      = -min(ratio * A_i, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A_i)
    kl      = exp(ref_logp - logp) - (ref_logp - logp) - 1          (k3 estimator, >= 0)
    l_{i,t} = pg + beta * kl

With ``is_weights`` ``w_{i,t}`` (the engine-mismatch correction, `rl/grpo/is_correction.py`: TRL's token or
sequence level, truncate or mask), the policy-gradient term becomes ``w_{i,t} · pg``: it corrects for
tokens sampled by an engine whose numerics differ from the trainer's (detached; the KL term is not
reweighted). ``importance_sampling_level="sequence"`` makes ``ratio`` one value per sample, the exp of
its mean token log-ratio (GSPO, TRL's name), clipped as a whole.

``mask[i]`` is 0 for an excluded (failed-reward) sample: its inputs are zeroed *before* any arithmetic
(a NaN advantage or log-prob there cannot reach the loss or the gradients), and its tokens leave the
numerator, the KL term and every normaliser. The per-token losses become one scalar per optimizer step
(``loss_type``); ``S`` = valid samples and ``T`` = valid tokens of the **whole step** (every micro-batch,
and every rank once there are several), ``L`` = tokens per sample:

- ``grpo``:    Σ_i mean_t l_{i,t} / S            (each valid sample weighs the same)
- ``bnpo``:    Σ_{i,t} l_{i,t} / T               (each valid token weighs the same)
- ``dr_grpo``: Σ_{i,t} l_{i,t} / (S * L)         (a constant normaliser for fixed-length sequences)
- ``dapo``:    Σ_{i,t} l_{i,t} / T

`policy_loss` returns one micro-batch's share of that scalar: summing the shares of all micro-batches
(gradient accumulation) gives exactly the step's loss and gradient, whatever ``micro_batch_size`` is, so
it is a memory setting only. (TRL normalises ``grpo``/``bnpo``/``dr_grpo`` per micro-batch, which makes
the split part of the objective; with whole-step counts ``bnpo`` and ``dapo`` coincide, and both names
are kept for TRL compatibility.) Without step counts, a micro-batch is taken to be the whole step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .is_correction import log_importance_weights

LossNormaliser = Callable[..., torch.Tensor]
_NORMALISERS: dict[str, LossNormaliser] = {}


def register_loss_type(name: str) -> Callable[[LossNormaliser], LossNormaliser]:
    def wrap(fn: LossNormaliser) -> LossNormaliser:
        _NORMALISERS[name] = fn
        return fn

    return wrap


def loss_types() -> tuple[str, ...]:
    return tuple(_NORMALISERS)


# Each normaliser maps masked per-token losses [B, L], the token mask [B, L] and the step's counts
# (valid_samples S, valid_tokens T, both >= 1) to this micro-batch's share of the step's loss.
@register_loss_type("grpo")
def _grpo(per_token, token_mask, *, valid_samples, **_):
    per_sample = (per_token * token_mask).sum(1) / token_mask.sum(1).clamp(min=1)  # [B]
    return per_sample.sum() / valid_samples


@register_loss_type("bnpo")
def _bnpo(per_token, token_mask, *, valid_tokens, **_):
    return (per_token * token_mask).sum() / valid_tokens


@register_loss_type("dr_grpo")
def _dr_grpo(per_token, token_mask, *, valid_samples, max_tokens, **_):
    return (per_token * token_mask).sum() / (valid_samples * max_tokens)


@register_loss_type("dapo")
def _dapo(per_token, token_mask, *, valid_tokens, **_):
    return (per_token * token_mask).sum() / valid_tokens


@dataclass
class LossStats:
    """Detached statistics of one micro-batch, averaged over valid tokens."""

    kl: float
    clip_low: float  # fraction of valid tokens where the lower clip is active (ratio < 1 - eps, A < 0)
    clip_high: float  # fraction where the upper clip is active (ratio > 1 + eps_high, A > 0)
    ratio_mean: float
    ratio_min: float
    ratio_max: float
    valid_tokens: int

    @property
    def clip_fraction(self) -> float:
        return self.clip_low + self.clip_high


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    sample_mask: torch.Tensor,
    *,
    loss_type: str = "bnpo",
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
    global_valid_tokens: int | None = None,
    global_valid_samples: int | None = None,
    is_weights: torch.Tensor | None = None,
    importance_sampling_level: str = "token",
) -> tuple[torch.Tensor, LossStats]:
    """Loss of one micro-batch (see the module docstring for the exact objective).

    Args:
        logprobs: ``[B, L]`` current log-probs of the sampled image codes (with grad).
        old_logprobs: ``[B, L]`` log-probs of the policy that sampled (detached; equals ``logprobs`` at μ=1).
        advantages: ``[B]`` per-sample advantages.
        sample_mask: ``[B]`` bool/float, 0 for excluded samples.
        loss_type: one of `loss_types()`.
        epsilon, epsilon_high: clip range ``[1 - epsilon, 1 + epsilon_high]`` (epsilon_high defaults to epsilon).
        beta: KL coefficient; needs ``ref_logprobs`` ``[B, L]`` when > 0.
        global_valid_tokens, global_valid_samples: valid tokens / samples of the whole step (all
            micro-batches and ranks), the normalisers of every loss type; None: this micro-batch's own
            (it is the whole step).
        is_weights: ``[B, L]`` or ``[B, 1]`` engine-mismatch weights on the policy-gradient term
            (`rl.grpo.is_correction.ISCorrection.weights`); None: no correction.
        importance_sampling_level: "token" (GRPO) or "sequence" (GSPO), `rl.grpo.is_correction.log_importance_weights`.
    """
    if loss_type not in _NORMALISERS:
        raise ValueError(f"loss_type must be one of {loss_types()}, got {loss_type!r}")
    if beta > 0 and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs")
    eps_high = epsilon if epsilon_high is None else epsilon_high
    valid = sample_mask.bool()  # [B]
    rows = valid[:, None]  # [B, 1]
    token_mask = rows.to(logprobs.dtype).expand_as(logprobs)  # [B, L]
    # Excluded rows may carry NaN/inf garbage (a placeholder advantage, a failed forward): zero their
    # inputs before any arithmetic, so nothing non-finite reaches the loss or the backward pass.
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    logprobs = torch.where(rows, logprobs, zero)
    old_logprobs = torch.where(rows, old_logprobs.detach().to(logprobs.dtype), zero)
    adv = torch.where(valid, advantages.to(logprobs.dtype), zero)[:, None]  # [B, 1]

    log_ratio = log_importance_weights(logprobs, old_logprobs, token_mask, importance_sampling_level)
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)  # [B, L]
    if is_weights is not None:
        per_token = per_token * torch.where(rows, is_weights.detach().to(logprobs.dtype), zero)
    kl = None
    if beta > 0:
        assert ref_logprobs is not None, "beta > 0 needs ref_logprobs"
        delta = torch.where(rows, ref_logprobs.detach().to(logprobs.dtype), zero) - logprobs
        kl = torch.exp(delta) - delta - 1  # [B, L]
        per_token = per_token + beta * kl

    n_tokens = global_valid_tokens if global_valid_tokens is not None else token_mask.sum()
    n_samples = global_valid_samples if global_valid_samples is not None else valid.sum()
    loss = _NORMALISERS[loss_type](
        per_token,
        token_mask,
        valid_tokens=max(float(n_tokens), 1.0),  # host sync only without step counts
        valid_samples=max(float(n_samples), 1.0),
        max_tokens=logprobs.shape[1],
    )

    with torch.no_grad():
        m = token_mask > 0
        n = int(m.sum().item())  # host sync: statistics for logging
        if n:
            r = ratio[m]
            a = adv.expand_as(ratio)[m]
            stats = LossStats(
                kl=float(kl[m].mean()) if kl is not None else 0.0,
                clip_low=float(((r < 1 - epsilon) & (a < 0)).float().mean()),
                clip_high=float(((r > 1 + eps_high) & (a > 0)).float().mean()),
                ratio_mean=float(r.mean()),
                ratio_min=float(r.min()),
                ratio_max=float(r.max()),
                valid_tokens=n,
            )
        else:
            stats = LossStats(0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0)
    return loss, stats
