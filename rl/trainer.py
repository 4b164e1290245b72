"""The GRPO recipe: orchestration only; each phase is a component call.

Objective per step (see `rl/grpo/loss.py` for the exact normalisations)::

    for each prompt: G image-token sequences y_1..y_G ~ π_old(·|prompt)   (sampled among image codes only)
    r_i = Σ_k w_k · reward_k(decode(y_i), prompt)                        (a failed reward excludes y_i)
    A_i = (r_i − mean_group(r)) / (std_group(r) + 1e-4)                  (or batch std, or unscaled)
    L   = −min(ρ_t A_i, clip(ρ_t, 1−ε, 1+ε_high) A_i) + β · KL_k3(π_θ ‖ π_ref),  ρ_t = π_θ(y_t) / π_old(y_t)

with μ = ``num_iterations`` optimizer passes over each rollout batch (π_old = π_θ detached at μ = 1).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from ..policies import can_build, load_policy, policy_class
from ..rewards import WeightedRewards, load_reward
from .batch_layout import BatchLayout
from .config import ConfigError, RewardSpec, TrainConfig, check_components, config_to_dict
from .data import PromptSampler, check_policy_prompts, load_prompts
from .errors import CheckpointError, NothingLearnedError, ResumeError, RunError, TrainingStopped
from .grpo.advantages import count_groups_without_baseline, reward_advantages
from .grpo.is_correction import ISCorrection
from .grpo.logprobs import micro_batches, score_rollout, sequence_logprobs
from .grpo.loss import policy_loss
from .grpo.score_space import build_score_space
from .parallel.checkpoint_shards import (
    check_world_size,
    load_optimizer_state,
    optimizer_state,
    restore_rank_state,
    stage_rank_files,
    trainable_state,
)
from .parallel.distributed import Distributed, make_accelerator, resolve_strategy
from .presets import describe as describe_sampling
from .presets import eval_sampling, lr_schedule_steps, rollout_sampling
from .rollout.agreement import LogprobAgreement
from .rollout.engines import Rollout, build_engine, stream_seed
from .rollout.generate import sample_and_decode
from .rollout.pipeline import generate_and_score
from .rollout.sync_probe import SyncProbe, pushes_weights
from .run.best_checkpoint import BestCheckpoint
from .run.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    previous_intact,
    resolve_checkpoint,
    save_checkpoint,
    staging_dir,
    verify_checkpoint,
)
from .run.eval_guard import OverOptimisationGuard
from .run.guard import FiniteUpdateGuard
from .run.progress import Progress, library_bars_off, quiet_library_bars, show_bars
from .run.resume import (
    apply_optimizer_config,
    check_resume_config,
    optimizer_hyperparameters,
    record_changes,
    with_defaults,
)
from .run.reward_watch import RewardFailureWatch
from .run.run_dir import archive_after, claim_run_dir
from .run.signals import StopSignals
from .run.tracking import METRICS_FILE, RunLogger, image_grid, plot_reward_curve, read_metrics, timed
from .weights.finetune import FinetuneSetup
from .weights.optim import build_optimizer, build_scheduler

logger = logging.getLogger(__name__)


def _build_rewards(specs: tuple[RewardSpec, ...]) -> WeightedRewards:
    return WeightedRewards([(s.log_name, s.weight, load_reward(s.reward, **s.kwargs), s.timeout_s) for s in specs])


class GRPOTrainer:
    """``setup()`` → ``train()`` (→ ``step()`` / ``evaluate()`` / ``save_checkpoint()``) → ``cleanup()``."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.start_step = 0

    # ------------------------------------------------------------------ setup
    def setup(self, resume: str | bool | None = None, overwrite: bool = False,
              allow_config_change: Sequence[str] = ()) -> None:
        """Build everything; ``resume``: True (the latest checkpoint) or a checkpoint (path, ``step_N``, N).

        A new run refuses an ``output_dir`` holding files unless ``overwrite`` (rl/run/run_dir.py); a resume
        refuses a changed config except the ``allow_config_change`` keys (rl/run/resume.py).
        """
        cfg = self.cfg
        check_components(cfg)  # names resolve and input files exist, before any folder or model is touched
        # rl/parallel/distributed.py: the launcher's world size checked, the strategy from the launcher or the recipe
        d = cfg.distributed
        strategy = resolve_strategy(d.strategy)
        self.acc = make_accelerator(strategy, cfg.model.mixed_precision, d.timeout_minutes)
        self.dist = Distributed(self.acc, strategy)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        try:  # this rank's prompts and samples of each step's global batch (rl/batch_layout.py)
            self.layout = BatchLayout(cfg.grpo.batch_size, cfg.grpo.num_generations, self.world, self.rank)
        except ValueError as exc:
            raise ConfigError(f"grpo.batch_size: {exc}") from None
        self._claim_run_dir(resume, overwrite)
        self.show_bars = show_bars(cfg.logging.progress_bar)
        if not self.show_bars:
            quiet_library_bars()  # transformers' "Loading weights" / "Writing model shards" bars
        self.resume_from = self._check_resume(resume, allow_config_change) if resume else None
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed)  # the same initialisation on every rank (FSDP2 / ZeRO shard, not broadcast)

        kind, train_file = cfg.model.policy, cfg.data.train_file
        assert kind is not None and train_file is not None  # validate() requires both
        with self.dist.loading():  # ZeRO-3: whole weights on every rank until prepare partitions them
            self.policy = load_policy(kind, self._model_path(kind, train_file), cfg.model.dtype,
                                      **cfg.model.policy_kwargs)
        self.policy.lm.to(self.acc.device)
        self.finetune = FinetuneSetup(self.policy, cfg.model, need_reference=cfg.grpo.beta > 0)
        if self.resume_from is not None:  # before any sharding: every rank loads the full weights
            self.finetune.load_trainable_state_dict(load_checkpoint(self.resume_from, verify=False).weights)
        self.dist.shard(self.policy.lm, self.finetune.reference_module)  # FSDP2: in place (rl/parallel/distributed.py)
        self.params = self.finetune.trainable_parameters()
        frozen = {id(p) for p in self.policy.frozen_parameters()}
        if any(id(p) in frozen for p in self.params):
            raise RuntimeError("a frozen (decoder) parameter is trainable: it must not enter the optimizer")
        train_rows = load_prompts(train_file)
        self._check_prompts(train_rows, train_file)
        horizon = lr_schedule_steps(cfg.optim, cfg.max_steps, len(train_rows), self.layout.prompts_per_step)
        self.optimizer = build_optimizer(self.params, cfg.optim)
        # rl/presets.py: the LR horizon is optim.schedule_steps / schedule_epochs, else max_steps
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, horizon * cfg.grpo.num_iterations)
        # The one module every trainer forward runs through (wrapped here when distributed); the engine
        # samples through policy.lm, the same module inside the wrapper.
        g = cfg.grpo
        self.lm, self.optimizer = self.dist.prepare(self.policy.lm, self.optimizer, g.micro_batch_size,
                                                    -(-g.batch_size // g.micro_batch_size), cfg.optim.max_grad_norm)
        self.finetune.wrap_reference(self.dist.prepare_reference)  # ZeRO-3 partitions the full-FT reference
        self.guard = FiniteUpdateGuard(cfg.optim.max_nonfinite_steps)  # every optimizer step goes through it

        engine = build_engine(cfg.rollout.engine, **cfg.rollout.engine_kwargs)
        r = cfg.rollout  # importance sampling when the engine's numerics differ from ours (rl/grpo/is_correction.py)
        self.score_space = build_score_space(g.score_space)  # kept_set (the sampler's) or official
        on = r.is_correction == "on" or (r.is_correction == "auto" and not engine.exact_logprobs
                                         and self.score_space.is_sampling_distribution)
        self.is_correction = ISCorrection(r.is_mode, r.is_clip_max, r.is_clip_min) if on else None
        self.engine = self.dist.rollout_engine(engine, self.lm, d.zero3_gather_for_rollout)
        self.engine.setup(self.policy)
        # every step: engine vs trainer log-probs; after every push of an engine's own weights: a fixed probe
        bound = r.max_logprob_diff if self.score_space.is_sampling_distribution else None  # official: the bias, logged
        self.agreement = LogprobAgreement(r.engine, bound, g.epsilon, g.epsilon_high, self.acc.gather)
        probe = r.sync_probe == "always" or (r.sync_probe == "auto" and pushes_weights(engine))
        self.sync_probe = SyncProbe(r.engine, [train_rows[0].prompt], r.sync_probe_samples,
                                    stream_seed(cfg.seed, "sync_probe"), r.max_sync_probe_diff,
                                    self.acc.gather) if probe else None
        self.sampling, how = rollout_sampling(cfg.rollout, self.policy)  # rl/presets.py
        self.eval_sampling, eval_how = eval_sampling(cfg.eval, self.policy, self.sampling)
        if self.acc.is_main_process and (cfg.rollout.sampling_from != "config" or cfg.eval.sampling != "rollout"):
            print(f"rollout sampling: {describe_sampling(self.sampling)}, from {how}\n"
                  f"eval sampling: {describe_sampling(self.eval_sampling)}, {eval_how}", flush=True)
        rewards = _build_rewards(cfg.rewards)
        self.eval_rewards = _build_rewards(cfg.eval.rewards) if cfg.eval.rewards else rewards
        self.rewards = RewardFailureWatch(rewards, cfg.grpo.max_failed_reward_steps)  # rl/run/reward_watch.py
        self.sampler = PromptSampler(train_rows, self.layout.prompts_per_step, cfg.seed, cfg.data.shuffle,
                                     self.layout.prompts)
        self.eval_rows = load_prompts(cfg.eval.prompts_file)[: cfg.eval.num_prompts] if cfg.eval.prompts_file else []
        if cfg.eval.prompts_file:
            self._check_prompts(self.eval_rows, cfg.eval.prompts_file)
        self.overopt = OverOptimisationGuard(cfg.eval.guard)  # rl/run/eval_guard.py
        self.best = BestCheckpoint(self.out / "checkpoints", cfg.checkpoint.best_metric, cfg.checkpoint.best_mode)

        if self.resume_from is not None:
            self._resume(self.resume_from)
        if self.acc.is_main_process:
            (self.out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
            self.log = RunLogger(self.out, cfg.logging, config_to_dict(cfg), self.start_step)

    def _claim_run_dir(self, resume: str | bool | None, overwrite: bool) -> None:
        """Rank 0 locks the run folder (rl/run/run_dir.py); the others learn its verdict."""
        error: BaseException | None = None
        if self.acc.is_main_process:
            try:
                self.lock, archived = claim_run_dir(self.out, resume=bool(resume), overwrite=overwrite)
                if archived is not None:
                    print(f"--overwrite: moved the previous contents of {self.out} to {archived}", flush=True)
            except RunError as exc:
                error = exc
        shared = self.dist.broadcast_object(None if error is None else (type(error), str(error)))
        if error is not None:
            raise error
        if shared is not None:
            raise shared[0](shared[1])

    def _model_path(self, kind: str, train_file: str) -> Path:
        """``model.name_or_path``; when null, the folder the policy class builds (`ImageTokenPolicy.build`)."""
        m = self.cfg.model
        if m.name_or_path is not None:
            return Path(m.name_or_path)
        cls = policy_class(kind)
        if not can_build(cls):
            raise ConfigError(f"model.name_or_path is required: policy {kind!r} cannot build a model folder")
        path = self.out / "base_model"
        if self.acc.is_main_process and not (path / "config.json").is_file():
            with library_bars_off():  # the build's own progress covers its model saves and loads
                cls.build(path, load_prompts(train_file), progress=self.show_bars, **m.build)
        self.acc.wait_for_everyone()
        return path

    def _check_resume(self, resume: str | bool, allowed: Sequence[str]) -> Path:
        """Before any model loads: the checkpoint to resume (verified), and the config compared with its own."""
        root = self.out / "checkpoints"
        path = latest_checkpoint(root) if resume is True else resolve_checkpoint(root, str(resume))
        if path is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {root}")
        try:
            if not verify_checkpoint(path):  # every file against its sha256 (rl/run/checkpoint.py)
                logger.warning("checkpoint %s predates checksums (no manifest.json): resuming unverified", path)
        except CheckpointError as exc:
            prev = previous_intact(root, path)
            hint = (f"; to resume from the previous intact checkpoint, pass --resume {prev}" if prev
                    else "; no earlier intact checkpoint exists")
            raise CheckpointError(f"{exc}{hint}") from None
        state_json = path / "trainer_state.json"
        saved_state = json.loads(state_json.read_text()) if state_json.is_file() else {}
        step = int(saved_state["step"]) if "step" in saved_state else None
        check_world_size(path, saved_state.get("world_size"), self.world)  # rl/parallel/checkpoint_shards.py
        if step is not None and step >= self.cfg.max_steps:
            raise ResumeError(f"--resume: checkpoint {path} is at step {step} and max_steps is {self.cfg.max_steps}: "
                              f"nothing to train; raise max_steps (e.g. max_steps={2 * step}) to continue the run")
        saved_file = path / "config.yaml" if (path / "config.yaml").is_file() else self.out / "config.yaml"
        if saved_file.is_file():
            new = yaml.safe_load(yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False))
            saved = with_defaults(config_to_dict(TrainConfig()), yaml.safe_load(saved_file.read_text()))
            self.config_changes = check_resume_config(saved, new, allowed, str(saved_file))
            self.allowed_changes = tuple(allowed)
        return path

    def _check_prompts(self, rows, path: str) -> None:
        """Prompts that leave no room for the image tokens in the model's positions fail, naming the line."""
        check_policy_prompts(self.policy, rows, path)  # rl/data.py, shared with generate and eval

    def _resume(self, path: Path) -> None:
        """Optimizer, schedule, data position and this rank's RNG (the weights loaded before wrapping)."""
        ckpt = load_checkpoint(path, verify=False)  # verified in _check_resume
        fresh = optimizer_hyperparameters(self.optimizer)  # the configured values, before the saved ones load
        load_optimizer_state(self.dist, self.lm, self.optimizer, ckpt.optimizer, path)  # rl/parallel/checkpoint_shards.py
        self.scheduler.load_state_dict(ckpt.scheduler)
        changes = getattr(self, "config_changes", {})
        apply_optimizer_config(self.optimizer, self.scheduler, fresh,  # allowed changes really apply
                               recompute=any(k.startswith("optim.") or k == "max_steps" for k in changes))
        self.sampler.load_state_dict(ckpt.state["data"])
        restore_rank_state(path, self.rank)  # sampling needs none: its seeds follow from the step
        self.start_step = int(ckpt.state["step"])
        if self.acc.is_main_process:
            record_changes(self.out, self.start_step, changes, getattr(self, "allowed_changes", ()))
            archived = archive_after(self.out, self.start_step, METRICS_FILE)  # a rollback keeps the newer ones
            if archived is not None:
                print(f"--resume {path.name}: moved the later checkpoints and metrics to {archived}", flush=True)
        logger.info("resumed from %s at step %d", path, self.start_step)

    # ------------------------------------------------------------------ training
    def train(self) -> dict[str, float]:
        """Steps ``start_step + 1 .. max_steps``; SIGINT / SIGTERM end it after the current step with a
        checkpoint (`TrainingStopped`), and a reward that fails every sample stops it (rl/run/reward_watch.py)."""
        cfg, main = self.cfg, self.acc.is_main_process
        if self.start_step == 0 and cfg.eval.eval_every:
            first = self.evaluate()  # every rank: sharded and gathered, as at later steps
            watched = self._watch(0, first)  # every rank: the metrics agree, a best checkpoint is collective
            if main:
                self.log.log(0, {**first, **watched})
        progress = Progress(self.start_step, cfg.max_steps, bar=self.show_bars, enabled=main)  # rl/run/progress.py
        with StopSignals() as stop:  # rl/run/signals.py
            for step in range(self.start_step + 1, cfg.max_steps + 1):
                metrics = self.step(step)
                if cfg.eval.eval_every and (step % cfg.eval.eval_every == 0 or step == cfg.max_steps):
                    metrics.update(self.evaluate())
                metrics.update(self._watch(step, metrics))  # over-optimisation guard, best checkpoint
                guard_stop = self.overopt.stop_reason is not None
                logged = step % cfg.logging.log_every == 0 or step == cfg.max_steps or guard_stop
                if main and logged:
                    self.log.log(step, metrics)
                progress.update(step, metrics, logged)
                saved = None
                if ((cfg.checkpoint.save_every and step % cfg.checkpoint.save_every == 0) or guard_stop or (
                    step == cfg.max_steps and cfg.checkpoint.save_final
                )) and self.best.saved_step != step:
                    saved = self.save_checkpoint(step)
                self._check_rewards(step, last=step == cfg.max_steps)
                if guard_stop:
                    logger.warning("stopping at step %d: %s", step, self.overopt.stop_reason)
                    break
                if self.dist.any_rank(stop.received is not None) and step < cfg.max_steps:
                    path = saved or self.save_checkpoint(step)
                    progress.close()
                    raise TrainingStopped(stop.name or "SIGTERM", stop.received or 15, step, path)
        progress.close()
        return self._summarise() if main else {}

    def _check_rewards(self, step: int, last: bool) -> None:
        """`RewardFailureWatch.check` (rl/run/reward_watch.py), agreed over the ranks: when one rank's rewards
        failed too often every rank stops, with that rank's message (alone, it would leave the others waiting
        in the next collective until the timeout)."""
        error: NothingLearnedError | None = None
        try:
            self.rewards.check(step, last)
        except NothingLearnedError as exc:
            error = exc
        if self.dist.any_rank(error is not None):
            messages = self.dist.all_gather_objects(None if error is None else str(error))
            if error is not None:
                raise error
            rank, text = next((r, m) for r, m in enumerate(messages) if m is not None)
            raise NothingLearnedError(f"rank {rank}: {text}")

    def _watch(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """The eval watchers: the over-optimisation guard (rl/run/eval_guard.py), then the best checkpoint."""
        out = self.overopt.observe(step, metrics)
        out.update(self.best.observe(step, metrics, self.save_checkpoint))
        return out

    def step(self, step: int) -> dict[str, float]:
        """One GRPO step: prompts → rollouts → images → rewards → advantages → μ updates."""
        g, t, lay = self.cfg.grpo, dict[str, float](), self.layout
        with timed("step", t):
            # 1. Prompts for this rank, with their global indices; each is repeated for the samples of its
            #    group held here: all G, or a slice when a group is split across ranks (rl/batch_layout.py).
            rows = self.sampler.next_batch()
            texts = [r.prompt for r in rows for _ in lay.samples]  # [B]
            meta = [r.metadata for r in rows for _ in lay.samples]  # [B]
            seeds = [stream_seed(self.cfg.seed, "train", step, i) for i in lay.prompts]  # by global prompt index

            # 2. Rollout and decode: exactly N image codes per sample, among the image tokens only.
            #    Each sample's noise is keyed by its prompt's seed and its index in the group.
            # 3. Rewards; None (failed) becomes NaN and excludes the sample. With rollout.pipeline_rewards,
            #    each decoded chunk of whole prompts is scored while the next decodes (rl/rollout/pipeline.py).
            rc = self.cfg.rollout
            gen, scored = generate_and_score(
                self.policy, self.engine, [r.prompt for r in rows], g.num_generations, self.sampling, seeds,
                self.rewards, texts, meta, micro_batch_size=g.micro_batch_size,
                logprob_chunk_size=rc.logprob_chunk_size, decode_chunk_size=rc.decode_chunk_size,
                pipelined=rc.pipeline_rewards, max_pending=rc.max_pending_chunks, samples=lay.samples)
            ro, images = gen.rollout, gen.images
            t.update(gen.timings)
            rewards = torch.tensor([math.nan if s is None else s for s in scored.total], dtype=torch.float32)
            for name, out in scored.outputs.items():
                if out.num_failed:  # excluded from the loss, counted in the metrics, and said here
                    first_error = next(d for s, d in zip(out.scores, out.details, strict=True) if s is None)
                    logger.warning("step %d: reward %r failed on %d of %d samples (first: %s)", step, name,
                                   out.num_failed, len(out.scores), first_error.get("error", first_error))
            # 4. Advantages over the gathered per-reward scores of all ranks (in rank order: the global batch,
            #    groups contiguous, whether a group lives on one rank or is split over several), combined as
            #    grpo.reward_aggregation says (rl/grpo/advantages.py); this rank keeps its rows.
            all_rewards = self.acc.gather(rewards.to(self.acc.device)).cpu()  # [world * B]
            per = torch.tensor([[math.nan if x is None else x for x in scored.outputs[s.log_name].scores]
                                for s in self.cfg.rewards], dtype=torch.float32).T  # [B, K]
            all_per = self.acc.gather(per.contiguous().to(self.acc.device)).cpu()  # [world * B, K]
            all_adv = reward_advantages(all_per, [s.weight for s in self.cfg.rewards], g.num_generations,
                                        g.scale_rewards, g.reward_aggregation)  # [world * B]
            adv = all_adv[lay.rows].to(self.acc.device)  # [B]
            mask = (~torch.isnan(rewards)).to(self.acc.device)  # [B]
            global_valid = int(self.acc.gather(mask.sum()[None]).sum()) * ro.codes.shape[1]
            # 5. π_old (μ > 1; the trainer's forward, never the engine's log-probs) and π_ref (β > 0).
            with timed("reference", t):
                old = gen.forward_logprobs if g.num_iterations > 1 and self.score_space.is_sampling_distribution else None
                if g.num_iterations > 1 and old is None:
                    old = self._no_grad_logprobs(self.lm, ro)
                ref = None
                if g.beta > 0:
                    with self.finetune.reference(self.lm) as ref_lm:
                        ref = self._no_grad_logprobs(ref_lm, ro)
            # 6. μ optimizer passes over the batch, accumulating over micro-batches.
            with timed("update", t):
                upd = self._update(ro, adv, mask, old, ref, global_valid)
            upd.update(self.agreement.finish(step))  # stops past rollout.max_logprob_diff (rl/rollout/agreement.py)
            with timed("weight_sync", t):  # an engine with its own copy of the weights reloads them here
                self.engine.update_weights(self.policy)
            if self.sync_probe is not None:  # the push verified on a fixed probe (rl/rollout/sync_probe.py)
                with timed("sync_probe", t):
                    applied = not upd.get("update/skipped") and upd["update/skipped_nonfinite"] < g.num_iterations
                    score = lambda r: score_rollout(self.lm, r.prompts, r.codes, self.sampling,  # noqa: E731
                                                    g.micro_batch_size, kept=r.kept_sizes)[0]  # the sampling space
                    upd.update(self.sync_probe.check(step, self.policy, self.engine, self.sampling, score, applied))

        metrics = {**t, **upd, **self._reward_metrics(scored, all_rewards, all_adv)}
        metrics["lr"] = float(self.scheduler.get_last_lr()[0])
        if self.acc.is_main_process and self.cfg.logging.image_every and step % self.cfg.logging.image_every == 0:
            self._log_samples(step, images, texts, rewards, scored)
        return metrics

    def _forward(self, ro: Rollout, sl: slice):
        s = self.sampling  # the resolved rollout sampling (rl/presets.py)
        kept = None if ro.kept_sizes is None else ro.kept_sizes[sl]  # the sampler's kept sets (truncated sampling)
        return sequence_logprobs(self.lm, ro.prompts.slice(sl), ro.codes[sl], s.temperature, s.top_k, s.top_p,
                                 chunk_size=self.cfg.rollout.logprob_chunk_size, kept=kept, space=self.score_space)

    def _no_grad_logprobs(self, lm, ro: Rollout) -> torch.Tensor:
        """Log-probs ``[B, N]`` of the rollout under ``lm`` (the policy's, or the frozen reference's)."""
        return score_rollout(lm, ro.prompts, ro.codes, self.sampling, self.cfg.grpo.micro_batch_size,
                             self.cfg.rollout.logprob_chunk_size, kept=ro.kept_sizes, space=self.score_space)[0]

    def _update(self, ro: Rollout, adv, mask, old, ref, global_valid: int) -> dict[str, float]:
        g, o = self.cfg.grpo, self.cfg.optim
        slices = micro_batches(ro.codes.shape[0], g.micro_batch_size)
        self.lm.train()
        sums: dict[str, float] = {}
        if global_valid == 0:  # nothing to learn from on any rank, and Adam would still move the weights
            return {"update/skipped": 1.0, "loss": 0.0, "kl": 0.0, "entropy": math.nan, "grad_norm": 0.0,
                    "update/skipped_nonfinite": 0.0}
        global_samples = global_valid // ro.codes.shape[1]  # valid samples of the step (all ranks)
        skipped, step_losses = 0, []
        for it in range(g.num_iterations):
            step_loss = 0.0  # Σ of the micro-batches' shares = this update's loss (rl/grpo/loss.py)
            for i, sl in enumerate(slices):
                last = i == len(slices) - 1
                with self.dist.no_sync(self.lm, last):  # gradients all-reduced once per update
                    fwd = self._forward(ro, sl)
                    isw = None if self.is_correction is None else self.is_correction.weights(
                        fwd.logprobs if old is None else old[sl], ro.sampler_logprobs[sl],
                        mask[sl][:, None].expand_as(fwd.logprobs).float())
                    loss, st = policy_loss(
                        fwd.logprobs, fwd.logprobs.detach() if old is None else old[sl], adv[sl], mask[sl],
                        loss_type=g.loss_type, epsilon=g.epsilon, epsilon_high=g.epsilon_high, beta=g.beta,
                        ref_logprobs=None if ref is None else ref[sl],
                        global_valid_tokens=global_valid, global_valid_samples=global_samples, is_weights=isw,
                        importance_sampling_level=g.importance_sampling_level,
                    )
                    self.dist.backward(self.lm, loss, last)  # x world size: wrappers average (rl/parallel/distributed.py)
                w = st.valid_tokens
                m = mask[sl]
                step_loss += float(loss.detach())
                vals = {"kl": st.kl, "clip/low": st.clip_low,
                        "clip/high": st.clip_high, "ratio/mean": st.ratio_mean}
                if it == 0:  # the engine's log-probs against the trainer's first forward (rl/rollout/agreement.py)
                    self.agreement.add(fwd.logprobs, ro.sampler_logprobs[sl], m)
                if it == 0 and m.any():
                    vals["entropy"] = float(fwd.entropy[m].mean())
                    if isw is not None and self.is_correction is not None:
                        vals.update(self.is_correction.stats(isw, m))
                for k, v in vals.items():
                    sums[k] = sums.get(k, 0.0) + v * w
                    sums[f"_w/{k}"] = sums.get(f"_w/{k}", 0.0) + w
                sums["ratio/min"] = min(sums.get("ratio/min", math.inf), st.ratio_min)
                sums["ratio/max"] = max(sums.get("ratio/max", -math.inf), st.ratio_max)
            max_norm = o.max_grad_norm if o.max_grad_norm is not None else math.inf
            norm = self.dist.clip_grad_norm(self.params, max_norm)  # global: the gradients are synchronised
            step_loss = self.dist.all_sum([step_loss])[0]  # every rank's share: the update's global loss
            # optimizer step, or a skipped non-finite update on every rank at once (rl/run/guard.py); the LR
            # schedule steps either way; grads cleared
            skipped += not self.guard.step(self.dist.optimizer_for_guard(self.lm, self.optimizer), self.scheduler,
                                           step_loss, norm, agree=self.dist.all_ranks)
            sums["grad_norm"] = self.dist.grad_norm_after_step(self.lm, norm)
            step_losses.append(step_loss)
        sums = self._reduce_update_sums(sums)
        out = {k: v / sums[f"_w/{k}"] for k, v in sums.items() if f"_w/{k}" in sums and sums[f"_w/{k}"] > 0}
        out.update({k: v for k, v in sums.items() if k in ("ratio/min", "ratio/max", "grad_norm")})
        out["clip/fraction"] = out["clip/low"] + out["clip/high"]
        out["loss"] = sum(step_losses) / len(step_losses)
        out["update/skipped_nonfinite"] = float(skipped)
        return out

    _WEIGHTED = ("kl", "clip/low", "clip/high", "ratio/mean", "entropy")

    def _reduce_update_sums(self, sums: dict[str, float]) -> dict[str, float]:
        """Token-weighted sums and weights added over ranks, minima and maxima taken over ranks."""
        if self.world == 1:
            return sums
        keys = [k for name in self._WEIGHTED for k in (name, f"_w/{name}")]
        total = self.dist.all_sum([sums.get(k, 0.0) for k in keys])
        lo, hi = self.dist.all_min_max([sums.get("ratio/min", math.inf)], [sums.get("ratio/max", -math.inf)])
        out = dict(zip(keys, total, strict=True))  # a weight of 0 (no valid token anywhere) drops its metric
        out.update({"ratio/min": lo[0], "ratio/max": hi[0], "grad_norm": sums["grad_norm"]})
        return out

    def _reward_metrics(self, scored, all_rewards, all_adv) -> dict[str, float]:
        """Reward, exclusion and advantage metrics over the global batch (every rank's samples)."""
        g = self.cfg.grpo
        m = self._global_reward_metrics(scored)
        mask = ~torch.isnan(all_rewards)  # [world * B]
        m["samples/excluded"] = float((~mask).sum())
        m["groups/no_baseline"] = float(count_groups_without_baseline(all_rewards, g.num_generations))
        a = all_adv[mask]
        m["advantage/mean"] = float(a.mean()) if a.numel() else 0.0
        m["advantage/std"] = float(a.std()) if a.numel() > 1 else 0.0
        m["advantage/abs_max"] = float(a.abs().max()) if a.numel() else 0.0
        return m

    def _global_reward_metrics(self, scored) -> dict[str, float]:
        """``scored.metrics("reward")`` over every rank's samples (gathered scores, NaN for a failure)."""
        if self.world == 1:
            return scored.metrics("reward")
        from ..rewards.base import CombinedScores, RewardOutput

        def nan(xs):
            return torch.tensor([math.nan if x is None else float(x) for x in xs], dtype=torch.float64)

        def back(t):
            return [None if math.isnan(x) else x for x in self.acc.gather(t.to(self.acc.device)).cpu().tolist()]

        outputs = {n: RewardOutput(back(nan(o.scores))) for n, o in scored.outputs.items()}
        return CombinedScores(back(nan(scored.total)), outputs).metrics("reward")

    def _log_samples(self, step, images, texts, rewards, scored) -> None:
        """Rank 0's samples: a grid row per prompt (its G samples, or rank 0's slice of a split group),
        each image's reward under it (``excluded``: a reward failed on it)."""
        g, k = len(self.layout.samples), self.cfg.logging.num_images
        rows = max(1, min(k // g, len(images) // g))
        shown = images[: rows * g]
        labels = [texts[r * g] for r in range(rows)]
        captions = ["excluded" if math.isnan(r) else f"{r:.3f}" for r in map(float, rewards[: len(shown)])]
        self.log.log_images(step, image_grid(shown, g, labels, captions))
        with (self.out / "samples" / f"step_{step:06d}.jsonl").open("w") as f:
            for i in range(len(shown)):
                row = {"prompt": texts[i], "reward": None if math.isnan(rewards[i]) else float(rewards[i]),
                       "rewards": {n: {"score": o.scores[i], **o.details[i]} for n, o in scored.outputs.items()}}
                f.write(json.dumps(row, default=str) + "\n")

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Score held-out prompts with the eval rewards; fixed per-prompt seeds keep steps comparable."""
        if not self.eval_rows:
            return {}
        cfg, n = self.cfg, self.cfg.eval.num_generations
        totals: dict[str, list[float]] = {}
        failed: dict[str, int] = {}
        per_call = max(1, cfg.grpo.batch_size // n)
        mine = list(range(self.rank, len(self.eval_rows), self.world))  # prompt i on rank i % world
        for s in range(0, len(mine), per_call):
            index = mine[s : s + per_call]
            rows = [self.eval_rows[i] for i in index]
            seeds = [stream_seed(cfg.seed, "eval", i) for i in index]  # by global index: any world size
            gen = sample_and_decode(self.policy, self.engine, [r.prompt for r in rows], n, self.eval_sampling, seeds,
                                    cfg.grpo.micro_batch_size, cfg.rollout.logprob_chunk_size)
            scored = self.eval_rewards.submit(gen.images, [r.prompt for r in rows for _ in range(n)],
                                              [r.metadata for r in rows for _ in range(n)]).result()
            for name, out in scored.outputs.items():
                totals.setdefault(name, []).extend(x for x in out.scores if x is not None)
                failed[name] = failed.get(name, 0) + out.num_failed
        res = {}
        gathered = self.dist.all_gather_objects((totals, failed))  # every rank's scores, on every rank
        for name in gathered[0][0]:
            vals = [v for t, _ in gathered for v in t.get(name, [])]
            res[f"eval/{name}/mean"] = math.fsum(vals) / len(vals) if vals else math.nan  # order-independent
            res[f"eval/{name}/failed"] = float(sum(f.get(name, 0) for _, f in gathered))
        return res

    # ------------------------------------------------------------------ checkpoints and the end
    def save_checkpoint(self, step: int) -> Path | None:
        """Every rank stages its own files (RNG; DeepSpeed shards), rank 0 the gathered weights and optimizer,
        then rank 0 seals the folder (manifest, atomic rename, ``latest``; rl/run/checkpoint.py). Collective."""
        root, main = self.out / "checkpoints", self.acc.is_main_process
        staging = staging_dir(root, step)
        if main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        self.dist.barrier("checkpoint staging")
        stage_rank_files(self.dist, self.lm, staging)  # rl/parallel/checkpoint_shards.py
        weights = trainable_state(self.dist, self.lm, self.finetune)  # full, on rank 0
        optim = optimizer_state(self.dist, self.lm, self.optimizer)
        self.dist.barrier("checkpoint files")
        result: Path | BaseException | None = None
        if main:
            assert weights is not None and optim is not None
            state = {"step": step, "data": self.sampler.state_dict(), "world_size": self.world,
                     "strategy": self.dist.strategy, "rng_cpu": torch.get_rng_state()}
            try:
                result = save_checkpoint(root, step, weights, optim, self.scheduler.state_dict(), state,
                                         self.cfg.checkpoint.keep_last, staged=True,
                                         config_text=yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False))
            except CheckpointError as exc:
                result = exc
        shared = self.dist.broadcast_object(str(result) if isinstance(result, BaseException) else None)
        if isinstance(result, BaseException):
            raise result
        if shared is not None:
            raise CheckpointError(f"rank 0 could not save the checkpoint: {shared}")
        return result

    def _summarise(self) -> dict[str, float]:
        metrics = read_metrics(self.log.metrics_path)
        plot_reward_curve(metrics, self.out / "reward_curve.png")
        train = [m["reward/mean"] for m in metrics if m["step"] > 0 and "reward/mean" in m]
        fifth = max(1, len(train) // 5)
        summary = {"reward_first_fifth": sum(train[:fifth]) / fifth, "reward_last_fifth": sum(train[-fifth:]) / fifth}
        evals = [m for m in metrics if any(k.startswith("eval/") for k in m)]
        if len(evals) >= 2:
            for k in evals[0]:
                if k.startswith("eval/") and k.endswith("/mean"):
                    summary[f"{k}_before"], summary[f"{k}_after"] = evals[0][k], evals[-1].get(k, math.nan)
        if self.overopt.stop_reason is not None:
            summary["stopped_by_guard_at_step"] = float(metrics[-1]["step"])
        if self.best.best_step is not None:
            summary["best_checkpoint_step"] = float(self.best.best_step)
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def cleanup(self) -> None:
        """Close the logs and release the run folder; safe after a `setup` that failed part-way."""
        if hasattr(self, "acc") and self.acc.is_main_process and hasattr(self, "log"):
            self.log.close()
        if hasattr(self, "acc"):
            self._release_wrapper()
            self.acc.end_training()
        if hasattr(self, "lock"):  # rank 0's
            self.lock.release()


    def _release_wrapper(self) -> None:
        """Drop the wrapper (and accelerate's references to it) before the process group goes.

        A gloo group whose last owner is DDP's C++ reducer is destroyed inside the reducer's destructor with the
        GIL held, while a gloo worker may still need the GIL to free a finished collective's tensors: the
        process then never exits (seen on CPU after the last step). Freed here, the group ends in
        ``destroy_process_group``, which releases the GIL while it joins its threads.
        """
        if hasattr(self, "policy") and hasattr(self, "lm"):
            self.lm = self.policy.lm  # the inner module: still usable for reading weights after the run
        self.acc.free_memory()


def train(cfg: TrainConfig, resume: str | bool | None = None, overwrite: bool = False,
          allow_config_change: Sequence[str] = ()) -> dict[str, float]:
    """Build, run and tear down a GRPO run (arguments as in `GRPOTrainer.setup`)."""
    trainer = GRPOTrainer(cfg)
    try:
        trainer.setup(resume, overwrite, allow_config_change)
        return trainer.train()
    finally:
        trainer.cleanup()
