"""Log-prob agreement between the rollout engine and the trainer, measured and bounded every step.

The engine reports the log-prob it sampled each code with (`Rollout.sampler_logprobs`); the trainer's
first forward of the step scores the same codes under the same distribution (`rl/grpo/sampling.py`).
`LogprobAgreement` collects both over the step's micro-batches and all ranks and logs

- ``rollout/logprob_diff_mean`` / ``_p99`` / ``_max``: ``|log π_trainer − log π_engine|`` over valid tokens;
- ``rollout/logprob_outside_clip_fraction``: the fraction of valid tokens whose ratio ``π_trainer / π_engine``
  lies outside the clip band ``[1 − epsilon, 1 + epsilon_high]`` (a token there is one the engine and
  the trainer disagree on by more than one update is allowed to move it).

An exact engine (`RolloutEngine.exact_logprobs`: the trainer's own model code) shows rounding only; an
inexact one (vLLM's kernels, its own top-k/top-p cut) its real mismatch. Beyond ``rollout.max_logprob_diff``
(on ``_max``) the run stops with `EngineDisagreementError` naming the step and the engine: a stale or
wrongly loaded copy of the weights, a different truncation or temperature, a broken kernel.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import EngineDisagreementError


class LogprobAgreement:
    """One run's engine/trainer log-prob agreement; `add` per micro-batch, `finish` once per step."""

    def __init__(self, engine: str, max_diff: float | None, epsilon: float, epsilon_high: float | None,
                 gather: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.engine, self.max_diff = engine, max_diff
        self.low, self.high = 1 - epsilon, 1 + (epsilon if epsilon_high is None else epsilon_high)
        self.gather = gather or (lambda t: t)
        self._diffs: list[torch.Tensor] = []

    def add(self, trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, valid: torch.Tensor) -> None:
        """``[b, N]`` log-probs of one micro-batch's codes (trainer's forward, engine's report); ``valid [b]``."""
        d = trainer_logprobs.detach().float() - engine_logprobs.detach().float().to(trainer_logprobs.device)
        self._diffs.append(torch.where(valid.bool()[:, None], d, torch.full_like(d, float("nan"))))

    def finish(self, step: int) -> dict[str, float]:
        """The step's metrics over every rank (a collective call when distributed); raises
        `EngineDisagreementError` past the bound. Empty when nothing was added or no token is valid."""
        if not self._diffs:
            return {}
        local = torch.cat(self._diffs)  # [B, N], NaN on excluded rows
        self._diffs = []
        d = self.gather(local.contiguous()).flatten()
        d = d[~torch.isnan(d)]  # non-finite engine values stay in (an inf is a disagreement)
        if not d.numel():
            return {}
        a = d.abs().nan_to_num(nan=float("inf"))
        ratio = torch.exp(d)
        out = {
            "rollout/logprob_diff_mean": float(a.mean()),
            "rollout/logprob_diff_p99": float(torch.quantile(a.double(), 0.99)),
            "rollout/logprob_diff_max": float(a.max()),
            "rollout/logprob_outside_clip_fraction": float(((ratio < self.low) | (ratio > self.high)).float().mean()),
        }
        if self.max_diff is not None and not out["rollout/logprob_diff_max"] <= self.max_diff:
            raise EngineDisagreementError(
                f"step {step}: rollout engine {self.engine!r} disagrees with the trainer's log-probs: max "
                f"|diff| {out['rollout/logprob_diff_max']:.4g} > rollout.max_logprob_diff {self.max_diff:g} "
                f"(mean {out['rollout/logprob_diff_mean']:.4g}, p99 {out['rollout/logprob_diff_p99']:.4g}); "
                "the engine samples from another distribution than the one trained on (stale or wrongly "
                "loaded weights, another truncation or temperature); raise the bound only if this engine's "
                "numerics are known to differ that much")
        return out
