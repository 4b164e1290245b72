"""One step's policy update: μ optimizer passes over this rank's rollout batch (torchtune's recipe shape).

`PolicyUpdate.batch` produces the `UpdateBatch` (π_old and π_ref scored here, under no grad); calling the
`PolicyUpdate` runs the passes::

    for each of μ passes:
        for each micro-batch (gradients reduced over ranks on the last one only):
            π_θ = the trainer's forward of the sampled codes               (the wrapped module)
            loss_share, stats = loss(π_θ, π_old, A, mask, π_ref, global counts, IS weights)   (rl/grpo/loss.py)
            first pass: π_θ against the engine's log-probs              (rl/rollout/agreement.py)
            strategy.backward(loss_share)
        strategy.clip_and_step(...)   grad norm → finite-update guard → optimizer step (or none) → LR schedule
    the statistics, reduced once over ranks: one collective, one transfer to the host

`StepStats` keeps the statistics as tensors on the device for the whole update (no host sync per
micro-batch): token-weighted sums with their weights, and running minima / maxima. The codes are scored in
``grpo.score_space`` (rl/grpo/score_space.py); the engine-mismatch correction (rl/grpo/is_correction.py)
is on where the engine's numerics differ from the trainer's and the space is the one it sampled from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .config import ConfigError, TrainConfig
from .grpo.is_correction import ISCorrection
from .grpo.logprobs import SequenceLogprobs, micro_batches, score_rollout, sequence_logprobs
from .grpo.loss import GRPOLoss, masked_mean
from .grpo.score_space import build_score_space
from .parallel import ParallelStrategy
from .rollout.agreement import LogprobAgreement
from .rollout.engines import Rollout, SamplingParams
from .run.guards.finite_update import FiniteUpdateGuard
from .weights.finetune import TrainableWeights


@dataclass(frozen=True)
class UpdateBatch:
    """What one step's update reads: this rank's rows of the step, and the step's global counts."""

    rollout: Rollout  # codes [B, N], prompts [B, P], sampler log-probs [B, N], kept sets [B, N]
    advantages: torch.Tensor  # [B] per-sample advantages (rl/grpo/advantages.py)
    mask: torch.Tensor  # [B] bool: False for a sample excluded by a failed reward
    old_logprobs: torch.Tensor | None  # [B, N] π_old (μ > 1); None: π_θ detached (μ = 1)
    ref_logprobs: torch.Tensor | None  # [B, N] π_ref (β > 0)
    global_valid_tokens: int  # valid tokens of the step over every rank (the loss normaliser)

    @property
    def global_valid_samples(self) -> int:
        return self.global_valid_tokens // self.rollout.codes.shape[1]


class StepStats:
    """One update's statistics as float64 tensors on the device, reduced over ranks once (`result`)."""

    #: token-weighted means: each micro-batch adds ``mean * weight`` and ``weight`` (its valid tokens)
    WEIGHTED = ("kl", "clip/low", "clip/high", "ratio/mean", "entropy", "rollout/is_weight_mean",
                "rollout/is_capped_fraction", "rollout/is_masked_fraction")
    MINIMA = ("ratio/min",)
    MAXIMA = ("ratio/max",)

    def __init__(self, device: torch.device):
        k = len(self.WEIGHTED)
        self._sums = torch.zeros(2 * k, dtype=torch.float64, device=device)  # [means x weight..., weight...]
        self._min = torch.full((len(self.MINIMA),), math.inf, dtype=torch.float64, device=device)
        self._max = torch.full((len(self.MAXIMA),), -math.inf, dtype=torch.float64, device=device)

    def add(self, weight: torch.Tensor, means: dict[str, torch.Tensor]) -> None:
        """Means (keys: `WEIGHTED`) over a micro-batch's ``weight`` valid tokens."""
        k, w = len(self.WEIGHTED), weight.to(torch.float64)
        for name, mean in means.items():
            i = self.WEIGHTED.index(name)
            self._sums[i] += mean.to(torch.float64) * w
            self._sums[k + i] += w

    def extremes(self, ratio_min: torch.Tensor, ratio_max: torch.Tensor) -> None:
        self._min[0] = torch.minimum(self._min[0], ratio_min.to(torch.float64))
        self._max[0] = torch.maximum(self._max[0], ratio_max.to(torch.float64))

    def result(self, comm: Any) -> dict[str, float]:
        """Means (a weight of 0 on every rank drops its metric), minima and maxima over every rank's
        micro-batches: one gather of the packed statistics, one transfer to the host."""
        k = len(self.WEIGHTED)
        rows = comm.gather_rows(torch.cat([self._sums, -self._min, self._max]))  # [world, 2k + 2]
        sums = rows[:, : 2 * k].sum(0)
        extremes = rows[:, 2 * k :].max(0).values
        values = torch.cat([sums, extremes]).tolist()  # the one host transfer of the step's statistics
        out = {name: values[i] / values[k + i] for i, name in enumerate(self.WEIGHTED) if values[k + i] > 0}
        out["ratio/min"] = -values[2 * k]
        out["ratio/max"] = values[2 * k + 1]
        return out


class PolicyUpdate:
    """The update component: built once in the recipe's set-up, called once per step (module docstring)."""

    def __init__(self, cfg: TrainConfig, strategy: ParallelStrategy, trainable: TrainableWeights,
                 params: Sequence[nn.Parameter], scheduler: Any, guard: FiniteUpdateGuard,
                 sampling: SamplingParams, exact_engine: bool):
        self.strategy, self.trainable, self.params = strategy, trainable, list(params)
        self.scheduler, self.guard, self.sampling = scheduler, guard, sampling
        self.loss = GRPOLoss.from_config(cfg.grpo)  # the loss-type registry: rl/grpo/loss.py
        g, r = cfg.grpo, cfg.rollout
        self.score_space = build_score_space(g.score_space)  # kept_set (the sampler's) or official
        lm = trainable.policy.lm
        if self.score_space.full_vocabulary and not lm.scores_full_vocabulary:
            raise ConfigError(f"grpo.score_space: {g.score_space!r} scores the codes as rows of the full text "
                              f"vocabulary, which {type(lm).__name__} does not have (its own image head, or a "
                              "guided CFG mixture); use grpo.score_space=kept_set")
        sampled_space = self.score_space.is_sampling_distribution
        on = r.is_correction == "on" or (r.is_correction == "auto" and not exact_engine and sampled_space)
        self.is_correction = ISCorrection(r.is_mode, r.is_clip_max, r.is_clip_min) if on else None
        # every step: the engine's log-probs against the trainer's first forward; official: the bias, unbounded
        self.agreement = LogprobAgreement(r.engine, r.max_logprob_diff if sampled_space else None, g.epsilon,
                                          g.epsilon_high, strategy.acc.gather)
        self.num_iterations, self.micro_batch_size, self.beta = g.num_iterations, g.micro_batch_size, g.beta
        self.max_grad_norm = cfg.optim.max_grad_norm
        self.chunk_size = cfg.rollout.logprob_chunk_size

    # -- the batch ------------------------------------------------------------------------------------

    def batch(self, ro: Rollout, advantages: torch.Tensor, mask: torch.Tensor, global_valid_tokens: int,
              forward_logprobs: torch.Tensor | None = None) -> UpdateBatch:
        """The step's `UpdateBatch`: π_old (μ > 1: the rollout's own trainer forward when it made one,
        ``forward_logprobs``, else a no-grad forward; never the engine's log-probs) and π_ref (β > 0)."""
        old = forward_logprobs if self.num_iterations > 1 and self.score_space.is_sampling_distribution else None
        if self.num_iterations > 1 and old is None:
            old = self._no_grad_logprobs(self.strategy.model, ro)
        ref = None
        if self.beta > 0:
            with self.trainable.reference(self.strategy.model) as ref_lm:
                ref = self._no_grad_logprobs(ref_lm, ro)
        return UpdateBatch(ro, advantages, mask, old, ref, global_valid_tokens)

    def _no_grad_logprobs(self, lm: nn.Module, ro: Rollout, sampled: bool = False) -> torch.Tensor:
        """Log-probs ``[B, N]`` of the rollout under ``lm`` (the policy's, or the frozen reference's), in
        ``grpo.score_space`` (``sampled``: in the space the engine sampled from)."""
        space = None if sampled else self.score_space
        return score_rollout(lm, ro.prompts, ro.codes, self.sampling, self.micro_batch_size, self.chunk_size,
                             kept=ro.kept_sizes, space=space)[0]

    def sampled_logprobs(self, ro: Rollout) -> torch.Tensor:
        """The policy's no-grad log-probs ``[B, N]`` of ``ro`` in the space it was sampled from (the sync probe)."""
        return self._no_grad_logprobs(self.strategy.model, ro, sampled=True)

    def _forward(self, ro: Rollout, sl: slice) -> SequenceLogprobs:
        s = self.sampling  # the resolved rollout sampling (rl/presets.py)
        kept = None if ro.kept_sizes is None else ro.kept_sizes[sl]  # the sampler's kept sets (truncated sampling)
        return sequence_logprobs(self.strategy.model, ro.prompts.slice(sl), ro.codes[sl], s.temperature, s.top_k,
                                 s.top_p, chunk_size=self.chunk_size, kept=kept, space=self.score_space)

    # -- the update -----------------------------------------------------------------------------------

    def __call__(self, b: UpdateBatch, step: int = 0) -> dict[str, float]:
        """μ optimizer passes over ``b``; the step's update metrics, with the engine agreement's (which raises
        `EngineDisagreementError` past ``rollout.max_logprob_diff``, naming ``step``)."""
        if b.global_valid_tokens == 0:  # nothing to learn from on any rank, and Adam would still move the weights
            return {"update/skipped": 1.0, "loss": 0.0, "kl": 0.0, "entropy": math.nan, "grad_norm": 0.0,
                    "update/skipped_nonfinite": 0.0}
        ro, s = b.rollout, self.strategy
        slices = micro_batches(ro.codes.shape[0], self.micro_batch_size)
        s.model.train()
        stats = StepStats(ro.codes.device)
        skipped, losses, norm = 0, [], math.nan
        for it in range(self.num_iterations):
            step_loss = torch.zeros((), dtype=torch.float64, device=ro.codes.device)  # Σ of the shares
            for i, sl in enumerate(slices):
                last = i == len(slices) - 1
                with s.no_sync(last):  # gradients reduced once per update
                    loss = self._micro_batch(b, sl, stats, first_pass=it == 0)
                    s.backward(loss, last)  # x world size: wrappers average (rl/parallel/base.py)
                step_loss += loss.detach().to(torch.float64)
            global_loss = s.comm.all_sum([float(step_loss)])[0]  # host sync: the guard reads the update's loss
            stepped, norm = s.clip_and_step(self.params, self.max_grad_norm, global_loss, self.guard, self.scheduler)
            skipped += not stepped
            losses.append(global_loss)
        out = stats.result(s.comm)
        out["clip/fraction"] = out["clip/low"] + out["clip/high"]
        out["grad_norm"] = norm  # the last pass's, before clipping
        out["loss"] = sum(losses) / len(losses)
        out["update/skipped_nonfinite"] = float(skipped)
        out.update(self.agreement.finish(step))  # one gather per step (rl/rollout/agreement.py)
        return out

    def applied(self, metrics: dict[str, float]) -> bool:
        """True when the step whose update metrics are ``metrics`` moved the weights (some pass stepped)."""
        return not metrics.get("update/skipped") and metrics["update/skipped_nonfinite"] < self.num_iterations

    def _micro_batch(self, b: UpdateBatch, sl: slice, stats: StepStats, first_pass: bool) -> torch.Tensor:
        """Forward and loss share of rows ``sl``; its statistics into ``stats`` (tensors: no host sync)."""
        ro = b.rollout
        fwd = self._forward(ro, sl)
        old = fwd.logprobs.detach() if b.old_logprobs is None else b.old_logprobs[sl]
        tokens = b.mask[sl][:, None].expand_as(fwd.logprobs).to(fwd.logprobs.dtype)  # [b, N]
        isw = None if self.is_correction is None else self.is_correction.weights(old, ro.sampler_logprobs[sl], tokens)
        loss, st = self.loss(fwd.logprobs, old, b.advantages[sl], b.mask[sl],
                             ref_logprobs=None if b.ref_logprobs is None else b.ref_logprobs[sl],
                             global_valid_tokens=b.global_valid_tokens, global_valid_samples=b.global_valid_samples,
                             is_weights=isw)
        stats.add(st.valid_tokens, {"kl": st.kl, "clip/low": st.clip_low, "clip/high": st.clip_high,
                                    "ratio/mean": st.ratio_mean})
        if first_pass:  # the rollout's own statistics, once
            self.agreement.add(fwd.logprobs, ro.sampler_logprobs[sl], b.mask[sl])  # kept as tensors until finish
            with torch.no_grad():
                means = {"entropy": masked_mean(fwd.entropy, tokens)}
                if isw is not None and self.is_correction is not None:
                    means.update(self.is_correction.stats(isw, b.mask[sl]))
                stats.add(tokens.sum(), means)
        stats.extremes(st.ratio_min, st.ratio_max)
        return loss
