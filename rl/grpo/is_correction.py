"""Importance sampling between the rollout engine and the trainer, with TRL's levels, modes and caps.

Two ratios, as in TRL's `GRPOTrainer`:

- **The engine-mismatch correction** (TRL's ``vllm_importance_sampling_*``): an engine whose numerics
  differ from the trainer's (vLLM's kernels, its own top-k/top-p cut, a bf16 engine) samples from a
  slightly different π_engine. Each sample's policy-gradient term is multiplied by a detached weight built
  from ``Δ = log π_old − log π_engine`` per token (π_old: the trainer's forward, before the update):

  ================== ================================ =====================================
  ``rollout.is_mode`` weight ``[B, L]`` or ``[B, 1]``  beyond ``[is_clip_min, is_clip_max]``
  ================== ================================ =====================================
  token_truncate     ``exp(Δ_t)``                     clamped to the bounds
  token_mask         ``exp(Δ_t)``                     0 (the token leaves the gradient)
  sequence_truncate  ``exp(Σ_t Δ_t)``                 clamped to the bounds
  sequence_mask      ``exp(Σ_t Δ_t)``                 0 (the sample leaves the gradient)
  ================== ================================ =====================================

  TRL's defaults: ``sequence_mask``, ``clip_max 3.0``, ``clip_min None`` (no lower bound). Excluded
  samples and tokens with an unknown engine log-prob (NaN) contribute ``Δ = 0``, as in TRL. The KL term is
  never reweighted. With a sequence of 729 image codes, ``Σ_t Δ_t`` grows with the per-token mismatch:
  watch ``rollout/is_masked_fraction`` (or pick a ``token_*`` mode).

- **The policy ratio's level** (``grpo.importance_sampling_level``, TRL's name): ``token`` (GRPO,
  ``exp(logp_t − old_t)`` per token) or ``sequence`` (GSPO, Zheng et al. 2025: ``exp(mean_t(logp_t −
  old_t))``, one ratio per sample, clipped as a whole), see `log_importance_weights`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")


@dataclass(frozen=True)
class ISCorrection:
    """The engine-mismatch weights of one run (see the module docstring); ``weights`` per micro-batch."""

    mode: str = "sequence_mask"
    clip_max: float | None = 3.0
    clip_min: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in IS_MODES:
            raise ValueError(f"importance-sampling mode must be one of {IS_MODES}, got {self.mode!r}")
        lo = 0.0 if self.clip_min is None else self.clip_min
        hi = math.inf if self.clip_max is None else self.clip_max
        if not 0 <= lo <= 1 <= hi:
            raise ValueError(f"importance-sampling bounds must satisfy 0 <= clip_min <= 1 <= clip_max, "
                             f"got [{self.clip_min}, {self.clip_max}]")

    @property
    def sequence_level(self) -> bool:
        return self.mode.startswith("sequence_")

    @property
    def masks(self) -> bool:
        return self.mode.endswith("_mask")

    @torch.no_grad()
    def weights(self, old_logprobs: torch.Tensor, engine_logprobs: torch.Tensor,
                token_mask: torch.Tensor) -> torch.Tensor:
        """Detached weights ``[B, L]`` (token modes) or ``[B, 1]`` (sequence modes) on the policy-gradient term.

        ``old_logprobs`` / ``engine_logprobs`` ``[B, L]``: the trainer's π_old and the engine's log-probs of
        the sampled codes; ``token_mask [B, L]``: 0 for excluded samples (their Δ is 0, whatever they hold).
        """
        diff = old_logprobs.float() - engine_logprobs.float()
        diff = torch.where(token_mask > 0, diff, torch.zeros_like(diff)).nan_to_num(nan=0.0)
        if self.sequence_level:
            diff = diff.sum(-1, keepdim=True)  # [B, 1]
        w = torch.exp(diff)
        if not self.masks:
            return w if self.clip_min is None and self.clip_max is None else w.clamp(self.clip_min, self.clip_max)
        lo = -math.inf if self.clip_min is None else self.clip_min
        hi = math.inf if self.clip_max is None else self.clip_max
        return w.masked_fill((w < lo) | (w > hi), 0.0)

    @torch.no_grad()
    def stats(self, weights: torch.Tensor, valid_rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """``rollout/is_weight_mean`` and the fraction of valid tokens (samples, at sequence level) at a bound
        (``rollout/is_capped_fraction``, truncate modes) or masked out (``rollout/is_masked_fraction``), as
        0-dim tensors (no host sync; 0 without a valid row). ``valid_rows [B]``: bool."""
        rows = valid_rows.bool()[:, None].expand_as(weights)  # [B, L] or [B, 1]
        n = rows.sum().clamp(min=1)

        def mean(values: torch.Tensor) -> torch.Tensor:
            return torch.where(rows, values.float(), 0.0).sum() / n

        out = {"rollout/is_weight_mean": mean(weights)}
        if self.masks:
            out["rollout/is_masked_fraction"] = mean(weights == 0)
        else:
            at = torch.zeros_like(weights, dtype=torch.bool)
            if self.clip_max is not None:
                at |= weights >= self.clip_max
            if self.clip_min is not None:
                at |= weights <= self.clip_min
            out["rollout/is_capped_fraction"] = mean(at)
        return out


def log_importance_weights(logprobs: torch.Tensor, old_logprobs: torch.Tensor, token_mask: torch.Tensor,
                           level: str = "token") -> torch.Tensor:
    """The policy ratio's log ``[B, L]``: per token (``token``, GRPO) or, broadcast over the sample's tokens,
    the mean over its valid tokens (``sequence``, GSPO; TRL's ``importance_sampling_level``)."""
    log_ratio = logprobs - old_logprobs
    if level == "token":
        return log_ratio
    if level != "sequence":
        raise ValueError(f"importance_sampling_level must be one of {IMPORTANCE_SAMPLING_LEVELS}, got {level!r}")
    per_sample = (log_ratio * token_mask).sum(-1, keepdim=True) / token_mask.sum(-1, keepdim=True).clamp(min=1.0)
    return per_sample.expand_as(log_ratio)
