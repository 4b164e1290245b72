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

`GRPOLoss` returns one micro-batch's share of that scalar: summing the shares of all micro-batches
(gradient accumulation) gives exactly the step's loss and gradient, whatever ``micro_batch_size`` is, so
it is a memory setting only. (TRL normalises ``grpo``/``bnpo``/``dr_grpo`` per micro-batch, which makes
the split part of the objective; with whole-step counts ``bnpo`` and ``dapo`` coincide, and both names
are kept for TRL compatibility.) Without step counts, a micro-batch is taken to be the whole step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .is_correction import IMPORTANCE_SAMPLING_LEVELS, log_importance_weights

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
    """Detached statistics of one micro-batch as 0-d tensors on the loss's device (no host sync): means over
    its valid tokens (0, and ratios 1, when it has none) and their count."""

    kl: torch.Tensor
    clip_low: torch.Tensor  # fraction of valid tokens where the lower clip is active (ratio < 1 - eps, A < 0)
    clip_high: torch.Tensor  # fraction where the upper clip is active (ratio > 1 + eps_high, A > 0)
    ratio_mean: torch.Tensor
    ratio_min: torch.Tensor
    ratio_max: torch.Tensor
    valid_tokens: torch.Tensor  # int64

    @property
    def clip_fraction(self) -> torch.Tensor:
        return self.clip_low + self.clip_high


@dataclass(frozen=True)
class GRPOLoss:
    """The clipped policy loss (module docstring), built once from the recipe (`from_config`); a call gives
    one micro-batch's share of the step's loss and its `LossStats`."""

    loss_type: str = "bnpo"  # one of `loss_types()`
    epsilon: float = 0.2
    epsilon_high: float | None = None  # None: epsilon
    beta: float = 0.0  # KL coefficient; > 0 needs ref_logprobs
    importance_sampling_level: str = "token"  # "token" (GRPO) or "sequence" (GSPO): `log_importance_weights`

    def __post_init__(self) -> None:
        if self.loss_type not in _NORMALISERS:
            raise ValueError(f"loss_type must be one of {loss_types()}, got {self.loss_type!r}")
        if self.importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
            raise ValueError(f"importance_sampling_level must be one of {IMPORTANCE_SAMPLING_LEVELS}, "
                             f"got {self.importance_sampling_level!r}")

    @classmethod
    def from_config(cls, grpo: Any) -> GRPOLoss:
        """From ``grpo.loss_type``, ``epsilon``, ``epsilon_high``, ``beta`` and ``importance_sampling_level``
        (a `GRPOConfig`)."""
        return cls(grpo.loss_type, grpo.epsilon, grpo.epsilon_high, grpo.beta, grpo.importance_sampling_level)

    def __call__(
        self,
        logprobs: torch.Tensor,
        old_logprobs: torch.Tensor,
        advantages: torch.Tensor,
        sample_mask: torch.Tensor,
        *,
        ref_logprobs: torch.Tensor | None = None,
        global_valid_tokens: int | None = None,
        global_valid_samples: int | None = None,
        is_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, LossStats]:
        """Loss of one micro-batch.

        Args:
            logprobs: ``[B, L]`` current log-probs of the sampled image codes (with grad).
            old_logprobs: ``[B, L]`` log-probs of the policy that sampled (detached; ``logprobs`` at μ=1).
            advantages: ``[B]`` per-sample advantages.
            sample_mask: ``[B]`` bool/float, 0 for excluded samples.
            ref_logprobs: ``[B, L]`` the reference's log-probs (needed when ``beta > 0``).
            global_valid_tokens, global_valid_samples: valid tokens / samples of the whole step (all
                micro-batches and ranks), the normalisers of every loss type; None: this micro-batch's own
                (it is the whole step).
            is_weights: ``[B, L]`` or ``[B, 1]`` engine-mismatch weights on the policy-gradient term
                (`rl.grpo.is_correction.ISCorrection.weights`); None: no correction.
        """
        if self.beta > 0 and ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs")
        eps_low = self.epsilon
        eps_high = self.epsilon if self.epsilon_high is None else self.epsilon_high
        valid = sample_mask.bool()  # [B]
        rows = valid[:, None]  # [B, 1]
        token_mask = rows.to(logprobs.dtype).expand_as(logprobs)  # [B, L]
        # Excluded rows may carry NaN/inf garbage (a placeholder advantage, a failed forward): zero their
        # inputs before any arithmetic, so nothing non-finite reaches the loss or the backward pass.
        zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
        logprobs = torch.where(rows, logprobs, zero)
        old_logprobs = torch.where(rows, old_logprobs.detach().to(logprobs.dtype), zero)
        adv = torch.where(valid, advantages.to(logprobs.dtype), zero)[:, None]  # [B, 1]

        log_ratio = log_importance_weights(logprobs, old_logprobs, token_mask, self.importance_sampling_level)
        ratio = torch.exp(log_ratio)
        clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
        per_token = -torch.min(ratio * adv, clipped * adv)  # [B, L]
        if is_weights is not None:
            per_token = per_token * torch.where(rows, is_weights.detach().to(logprobs.dtype), zero)
        kl = None
        if self.beta > 0:
            assert ref_logprobs is not None, "beta > 0 needs ref_logprobs"
            delta = torch.where(rows, ref_logprobs.detach().to(logprobs.dtype), zero) - logprobs
            kl = torch.exp(delta) - delta - 1  # [B, L]
            per_token = per_token + self.beta * kl

        n_tokens = global_valid_tokens if global_valid_tokens is not None else token_mask.sum()
        n_samples = global_valid_samples if global_valid_samples is not None else valid.sum()
        loss = _NORMALISERS[self.loss_type](
            per_token,
            token_mask,
            valid_tokens=max(float(n_tokens), 1.0),  # host sync only without step counts
            valid_samples=max(float(n_samples), 1.0),
            max_tokens=logprobs.shape[1],
        )
        with torch.no_grad():
            r, a = ratio, adv.expand_as(ratio)
            stats = LossStats(
                kl=masked_mean(kl, token_mask) if kl is not None else zero.new_zeros(()),
                clip_low=masked_mean(((r < 1 - eps_low) & (a < 0)).to(r.dtype), token_mask),
                clip_high=masked_mean(((r > 1 + eps_high) & (a > 0)).to(r.dtype), token_mask),
                ratio_mean=torch.where(token_mask.any(), masked_mean(r, token_mask), 1.0),
                ratio_min=torch.where(token_mask.any(), torch.where(token_mask > 0, r, math.inf).min(), 1.0),
                ratio_max=torch.where(token_mask.any(), torch.where(token_mask > 0, r, -math.inf).max(), 1.0),
                valid_tokens=(token_mask > 0).sum(),
            )
        return loss, stats


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` (same shape, 0/1) is set, 0 where nothing is: a 0-d tensor, no host
    sync (a boolean index would need one)."""
    n = mask.sum()
    kept = torch.where(mask > 0, values, 0.0)  # not values * mask: a non-finite value outside stays out
    return torch.where(n > 0, kept.sum() / n.clamp(min=1), 0.0)


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
    importance_sampling_level: str = "token",
    **kwargs: Any,
) -> tuple[torch.Tensor, LossStats]:
    """`GRPOLoss` as one function call (hyper-parameters and inputs together; the keyword inputs as in
    `GRPOLoss.__call__`)."""
    loss = GRPOLoss(loss_type, epsilon, epsilon_high, beta, importance_sampling_level)
    return loss(logprobs, old_logprobs, advantages, sample_mask, **kwargs)
