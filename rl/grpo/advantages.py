"""Group-relative advantages (GRPO).

For a group of G samples of one prompt with rewards r_1..r_G::

    A_i = (r_i - mean(r)) / (std(r) + 1e-4)          scale_rewards="group"   (TRL, the official run)
    A_i = (r_i - mean(r)) / (std(r_batch) + 1e-4)    scale_rewards="batch"
    A_i =  r_i - mean(r)                             scale_rewards="none"    (Dr. GRPO)

std is Bessel-corrected. A failed sample (NaN reward) takes no part in its group's statistics and
gets advantage 0; the trainer also masks it out of the loss (a zero advantage alone is not an
exclusion: the KL term would still act on it). A group with fewer than 2 valid rewards has no
baseline, so all its advantages are 0.

Several rewards (`reward_advantages`, ``grpo.reward_aggregation``, TRL's ``multi_objective_aggregation``):

- ``sum`` (TRL's ``sum_then_normalize``, also accepted): the weighted total ``r = Σ_k w_k r_k`` first,
  then `group_advantages` with ``scale_rewards`` (the reward with the widest spread dominates).
- ``normalize_then_sum`` (GDPO, equal to TRL's): each reward standardised within its group,
  ``z_k = (r_k − mean_group) / (std_group + 1e-4)``; ``s = Σ_k w_k z_k``; then ``s`` standardised over the
  **whole batch**, ``A = (s − mean_batch(s)) / (std_batch(s) + 1e-4)``. Each reward counts by its weight,
  whatever its units. ``scale_rewards`` does not apply (TRL ignores it here; "none" is refused).
- ``normalize_then_sum_per_group``: the same ``s``, then `group_advantages` with ``scale_rewards``
  (group std, batch std or none): the variant this library called normalize_then_sum before, kept for
  the runs measured with it (docs/benchmarks.md).

Where ours deliberately differs from TRL: a sample failed by *any* reward (NaN) is excluded from every
statistic and gets advantage 0; TRL leaves it in the other rewards' statistics and gives it an advantage
(only a sample failed by every reward is dropped there).
"""

from __future__ import annotations

import math

import torch

STD_EPS = 1e-4
SCALE_REWARDS = ("group", "batch", "none")


def _masked_mean_std(x: torch.Tensor, valid: torch.Tensor, dim: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and Bessel-corrected std over the valid entries (std is 0 where fewer than 2 are valid)."""
    v = valid.to(x.dtype)
    x0 = torch.where(valid, x, torch.zeros_like(x))
    n = v.sum() if dim is None else v.sum(dim, keepdim=True)
    mean = (x0.sum() if dim is None else x0.sum(dim, keepdim=True)) / n.clamp(min=1)
    sq = ((x0 - mean) ** 2) * v
    var = (sq.sum() if dim is None else sq.sum(dim, keepdim=True)) / (n - 1).clamp(min=1)
    return mean, var.sqrt()


def group_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str = "group") -> torch.Tensor:
    """Advantages for ``rewards`` laid out as contiguous groups.

    Args:
        rewards: ``[num_prompts * group_size]`` float tensor, each group contiguous; NaN marks a failed sample.
        group_size: samples per prompt (``num_generations``), at least 2.
        scale_rewards: "group", "batch" or "none" (see module docstring).

    Returns:
        ``[num_prompts * group_size]`` advantages; 0 for failed samples and for groups with < 2 valid rewards.
    """
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D, got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2, got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")

    r = rewards.float().view(-1, group_size)  # [P, G]
    valid = ~torch.isnan(r)
    mean, std = _masked_mean_std(r, valid, dim=1)  # [P, 1] each
    if scale_rewards == "batch":
        _, std = _masked_mean_std(r, valid, dim=None)
    adv = r - mean
    if scale_rewards != "none":
        adv = adv / (std + STD_EPS)
    has_baseline = valid.sum(1, keepdim=True) >= 2  # [P, 1]
    adv = torch.where(valid & has_baseline, adv, torch.zeros_like(adv))
    return adv.view(-1)


def count_groups_without_baseline(rewards: torch.Tensor, group_size: int) -> int:
    """Number of groups with fewer than 2 valid rewards (their advantages are all 0)."""
    valid = ~torch.isnan(rewards.float().view(-1, group_size))
    return int((valid.sum(1) < 2).sum().item())  # host sync: logging only


# --------------------------------------------------------------------------- several rewards


def _sum_then_normalise(scores: torch.Tensor, weights: torch.Tensor, group_size: int,
                        scale_rewards: str) -> torch.Tensor:
    """``sum``: the weighted total ``Σ_k w_k r_k`` of each sample, then `group_advantages`."""
    total = (scores * weights).sum(1)  # [B]; NaN where any reward failed the sample
    return group_advantages(total, group_size, scale_rewards)


def _standardised_sum(scores: torch.Tensor, weights: torch.Tensor, group_size: int) -> torch.Tensor:
    """``s = Σ_k w_k z_k`` ``[B]``, each reward standardised in its group over the samples that every reward
    scored (``z_k = (r_k − mean_group(r_k)) / (std_group(r_k) + 1e-4)``); NaN for a failed sample. A reward
    constant within a group contributes 0 there, whatever its units."""
    valid = ~torch.isnan(scores).any(1, keepdim=True)  # [B, 1]: failed by any reward -> out of every statistic
    masked = torch.where(valid, scores, torch.full_like(scores, math.nan))  # [B, K]
    z = torch.stack([group_advantages(masked[:, k], group_size, "group") for k in range(scores.shape[1])], 1)
    z = torch.where(valid, z, torch.full_like(z, math.nan))  # [B, K]; failed samples stay NaN (excluded)
    return (z * weights).sum(1)


def _normalise_then_sum(scores: torch.Tensor, weights: torch.Tensor, group_size: int,
                        scale_rewards: str) -> torch.Tensor:
    """``normalize_then_sum`` (GDPO, TRL's): the standardised sum, then standardised over the whole batch
    (its valid samples in groups with a baseline). ``scale_rewards`` "group" (TRL's default) and "batch"
    mean the same here; "none" is refused (TRL ignores the setting)."""
    if scale_rewards == "none":
        raise ValueError("reward_aggregation 'normalize_then_sum' standardises over the batch (TRL's GDPO): "
                         "scale_rewards 'none' does not apply; use 'normalize_then_sum_per_group' for it")
    s = _standardised_sum(scores, weights, group_size)  # [B]
    valid = ~torch.isnan(s).view(-1, group_size)
    valid = (valid & (valid.sum(1, keepdim=True) >= 2)).view(-1)  # [B]: a group needs 2 valid for a baseline
    mean, std = _masked_mean_std(s, valid, dim=None)
    adv = (s - mean) / (std + STD_EPS)
    return torch.where(valid, adv, torch.zeros_like(adv))


def _normalise_then_sum_per_group(scores: torch.Tensor, weights: torch.Tensor, group_size: int,
                                  scale_rewards: str) -> torch.Tensor:
    """``normalize_then_sum_per_group``: the standardised sum, then `group_advantages` with ``scale_rewards``."""
    return group_advantages(_standardised_sum(scores, weights, group_size), group_size, scale_rewards)


#: ``grpo.reward_aggregation`` -> fn(scores [B, K], weights [K], group_size, scale_rewards) -> advantages [B]
REWARD_AGGREGATIONS = {"sum": _sum_then_normalise, "sum_then_normalize": _sum_then_normalise,
                       "normalize_then_sum": _normalise_then_sum,
                       "normalize_then_sum_per_group": _normalise_then_sum_per_group}


def reward_advantages(scores: torch.Tensor, weights: torch.Tensor | list[float], group_size: int,
                      scale_rewards: str = "group", aggregation: str = "sum") -> torch.Tensor:
    """Advantages from several rewards.

    Args:
        scores: ``[B, K]`` per-sample, per-reward scores, groups contiguous along B; NaN marks a sample
            that reward failed (the sample is then excluded from every reward's statistics, advantage 0).
        weights: ``[K]`` reward weights.
        group_size: samples per prompt.
        scale_rewards: "group", "batch" or "none", applied to the combined reward.
        aggregation: "sum" / "sum_then_normalize" (weight, sum, normalise: the classic GRPO reward),
            "normalize_then_sum" (TRL's GDPO: normalise each reward in its group, weight, sum, standardise
            over the batch) or "normalize_then_sum_per_group", see the module docstring.

    Returns:
        ``[B]`` advantages.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be [samples, rewards], got shape {tuple(scores.shape)}")
    w = torch.as_tensor(weights, dtype=torch.float32)
    if w.shape != (scores.shape[1],):
        raise ValueError(f"{scores.shape[1]} rewards but {w.numel()} weights")
    if aggregation not in REWARD_AGGREGATIONS:
        raise ValueError(f"reward_aggregation must be one of {tuple(REWARD_AGGREGATIONS)}, got {aggregation!r}")
    return REWARD_AGGREGATIONS[aggregation](scores.float(), w, group_size, scale_rewards)
