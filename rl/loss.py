"""The clipped GRPO policy loss with an optional k3 KL penalty, and its normalisations.

Per token t of sample i (all log-probs over the image codes only, same mask and temperature)::

    ratio   = exp(logp - old_logp)
    pg      = -min(ratio * A_i, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A_i)
    kl      = exp(ref_logp - logp) - (ref_logp - logp) - 1          (k3 estimator, >= 0)
    l_{i,t} = pg + beta * kl

``mask[i]`` is 0 for an excluded (failed-reward) sample: its tokens leave the numerator, the KL term
and every normaliser. How the per-token losses of one micro-batch become a scalar (``loss_type``):

- ``grpo``:    mean over valid samples of the per-sample token mean, / num_micro_batches
- ``bnpo``:    sum over valid tokens / valid tokens in the micro-batch, / num_micro_batches
- ``dr_grpo``: sum over valid tokens / (valid samples in the micro-batch * max_tokens), / num_micro_batches
- ``dapo``:    sum over valid tokens / valid tokens in the whole (global) batch

Dividing by ``num_micro_batches`` (or using the global token count) makes gradient accumulation over
micro-batches sum to the loss of the full batch. Image sequences have a fixed length, so the types
differ only through excluded samples and uneven micro-batches (and dr_grpo's constant length).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

LossNormaliser = Callable[..., torch.Tensor]
_NORMALISERS: dict[str, LossNormaliser] = {}


def register_loss_type(name: str) -> Callable[[LossNormaliser], LossNormaliser]:
    def wrap(fn: LossNormaliser) -> LossNormaliser:
        _NORMALISERS[name] = fn
        return fn

    return wrap


def loss_types() -> tuple[str, ...]:
    return tuple(_NORMALISERS)


# Each normaliser maps masked per-token losses [B, L] and the token mask [B, L] to a scalar.
@register_loss_type("grpo")
def _grpo(per_token, token_mask, *, num_micro_batches, **_):
    per_sample = (per_token * token_mask).sum(1) / token_mask.sum(1).clamp(min=1)  # [B]
    n_valid = (token_mask.sum(1) > 0).sum().clamp(min=1)
    return per_sample.sum() / n_valid / num_micro_batches


@register_loss_type("bnpo")
def _bnpo(per_token, token_mask, *, num_micro_batches, **_):
    return (per_token * token_mask).sum() / token_mask.sum().clamp(min=1) / num_micro_batches


@register_loss_type("dr_grpo")
def _dr_grpo(per_token, token_mask, *, num_micro_batches, max_tokens, **_):
    n_valid = (token_mask.sum(1) > 0).sum().clamp(min=1)
    return (per_token * token_mask).sum() / (n_valid * max_tokens) / num_micro_batches


@register_loss_type("dapo")
def _dapo(per_token, token_mask, *, global_valid_tokens, **_):
    if global_valid_tokens is None:
        raise ValueError("loss_type='dapo' needs global_valid_tokens (valid tokens in the whole batch)")
    return (per_token * token_mask).sum() / max(float(global_valid_tokens), 1.0)


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
    num_micro_batches: int = 1,
    global_valid_tokens: int | None = None,
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
        num_micro_batches: micro-batches accumulated into one optimizer step.
        global_valid_tokens: valid tokens in the whole step's batch (all micro-batches and ranks), for dapo.
    """
    if loss_type not in _NORMALISERS:
        raise ValueError(f"loss_type must be one of {loss_types()}, got {loss_type!r}")
    if beta > 0 and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs")
    eps_high = epsilon if epsilon_high is None else epsilon_high
    token_mask = sample_mask.to(logprobs.dtype)[:, None].expand_as(logprobs)  # [B, L]
    adv = advantages.to(logprobs.dtype)[:, None]  # [B, 1]

    log_ratio = logprobs - old_logprobs.detach()
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)  # [B, L]
    kl = None
    if beta > 0:
        assert ref_logprobs is not None, "beta > 0 needs ref_logprobs"
        delta = ref_logprobs.detach() - logprobs
        kl = torch.exp(delta) - delta - 1  # [B, L]
        per_token = per_token + beta * kl
    # Excluded samples may carry NaN/inf garbage (e.g. a placeholder advantage): zero them, not just mask.
    per_token = torch.where(token_mask > 0, per_token, torch.zeros_like(per_token))

    loss = _NORMALISERS[loss_type](
        per_token,
        token_mask,
        num_micro_batches=num_micro_batches,
        max_tokens=logprobs.shape[1],
        global_valid_tokens=global_valid_tokens,
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
