"""The GRPO recipe: orchestration only; each phase is a component call.

Objective per step (see `rl/grpo/loss.py` for the exact normalisations)::

    for each prompt: G image-token sequences y_1..y_G ~ π_old(·|prompt)   (sampled among image codes only)
    r_i = Σ_k w_k · reward_k(decode(y_i), prompt)                        (a failed reward excludes y_i)
    A_i = (r_i − mean_group(r)) / (std_group(r) + 1e-4)                  (or batch std, or unscaled)
    L   = −min(ρ_t A_i, clip(ρ_t, 1−ε, 1+ε_high) A_i) + β · KL_k3(π_θ ‖ π_ref),  ρ_t = π_θ(y_t) / π_old(y_t)

with μ = ``num_iterations`` optimizer passes over each rollout batch (π_old = π_θ detached at μ = 1).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from ..policies import can_build, load_policy, policy_class
from ..rewards import WeightedRewards, load_reward
from .batch_layout import BatchLayout
from .config import ConfigError, RewardSpec, TrainConfig, check_components
from .data import PromptSampler, check_policy_prompts, load_prompts
from .grpo.advantages import count_groups_without_baseline, reward_advantages
from .parallel import make_strategy
from .parallel.checkpoint_shards import check_world_size, restore_rank_state
from .presets import describe as describe_sampling
from .presets import eval_sampling, lr_schedule_steps, rollout_sampling
from .rollout.engines import build_engine, stream_seed
from .rollout.evaluation import HeldOutEvaluation
from .rollout.generate import GenerationDriver, RolloutRequest
from .rollout.pipeline import PipelinedScoring, SequentialScoring
from .rollout.sync_probe import SyncProbe, pushes_weights
from .run.checkpoint import load_checkpoint
from .run.guards.finite_update import FiniteUpdateGuard
from .run.lifecycle import CheckpointContents, RunLifecycle, RunSummary
from .run.progress import library_bars_off
from .run.resume import apply_optimizer_config, optimizer_hyperparameters
from .run.tracking import timed
from .update import PolicyUpdate
from .weights.finetune import TrainableWeights
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
        refuses a changed config except the ``allow_config_change`` keys (rl/run/resume.py). The run's folder,
        resume checks, checkpoints, stops and summary are its `RunLifecycle` (rl/run/lifecycle.py).
        """
        cfg = self.cfg
        check_components(cfg)  # names resolve and input files exist, before any folder or model is touched
        # rl/parallel/: the launcher's world size checked, the strategy from the launcher or the recipe
        d = cfg.distributed
        self.strategy = make_strategy(d.strategy, cfg.model.mixed_precision, d.timeout_minutes,
                                      d.zero3_gather_for_rollout)
        self.acc, self.dist = self.strategy.acc, self.strategy.comm  # dist: the collectives (rl/parallel/distributed.py)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        try:  # this rank's prompts and samples of each step's global batch (rl/batch_layout.py)
            self.layout = BatchLayout(cfg.grpo.batch_size, cfg.grpo.num_generations, self.world, self.rank)
        except ValueError as exc:
            raise ConfigError(f"grpo.batch_size: {exc}") from None
        self.run = RunLifecycle(cfg, self.dist, self.acc.is_main_process)
        self.run.claim(resume, overwrite)
        self.resume_from = None
        if resume:  # before any model loads (rl/parallel/checkpoint_shards.py: the saved world size must match)
            self.resume_from = self.run.check_resume(resume, allow_config_change,
                                                     lambda path, saved: check_world_size(path, saved, self.world))
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed)  # the same initialisation on every rank (FSDP2 / ZeRO shard, not broadcast)

        kind, train_file = cfg.model.policy, cfg.data.train_file
        assert kind is not None and train_file is not None  # validate() requires both
        with self.strategy.loading():  # ZeRO-3: whole weights on every rank until wrap partitions them
            self.policy = load_policy(kind, self._model_path(kind, train_file), cfg.model.dtype,
                                      **cfg.model.policy_kwargs)
        self.policy.lm.to(self.acc.device)
        # rl/weights/finetune.py: the one owner of what trains (LoRA or full), the reference and the merged weights
        self.trainable = TrainableWeights(self.policy, cfg.model, need_reference=cfg.grpo.beta > 0)
        if self.resume_from is not None:  # before any sharding: every rank loads the full weights
            self.trainable.load_state_dict(load_checkpoint(self.resume_from, verify=False).weights)
        self.strategy.shard(self.policy.lm, self.trainable.reference_module)  # FSDP2: in place
        self.params = self.trainable.trainable_parameters()
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
        self.lm, self.optimizer = self.strategy.wrap(self.policy.lm, self.optimizer, g.micro_batch_size,
                                                     -(-g.batch_size // g.micro_batch_size), cfg.optim.max_grad_norm)
        self.trainable.wrap_reference(self.strategy.wrap_reference)  # ZeRO-3 partitions the full-FT reference
        self.guard = FiniteUpdateGuard(cfg.optim.max_nonfinite_steps)  # every optimizer step goes through it

        self.engine = build_engine(cfg.rollout.engine, **cfg.rollout.engine_kwargs)
        r = cfg.rollout
        self.engine.setup(self.policy)
        self.engine.sample_within(self.strategy.rollout_weights)  # ZeRO-3: one gather of the weights per rollout
        scoring = PipelinedScoring(r.max_pending_chunks) if r.pipeline_rewards else SequentialScoring()
        self.driver = GenerationDriver(self.policy, self.engine, g.micro_batch_size, r.logprob_chunk_size,
                                       r.decode_chunk_size, scoring)  # rl/rollout/generate.py, pipeline.py
        probe = r.sync_probe == "always" or (r.sync_probe == "auto" and pushes_weights(self.engine))
        self.sync_probe = SyncProbe(r.engine, [train_rows[0].prompt], r.sync_probe_samples,  # after every push
                                    stream_seed(cfg.seed, "sync_probe"), r.max_sync_probe_diff,
                                    self.acc.gather) if probe else None
        self.sampling, how = rollout_sampling(cfg.rollout, self.policy)  # rl/presets.py
        # rl/update.py: π_old / π_ref, then μ optimizer passes through the strategy and the guard
        self.update = PolicyUpdate(cfg, self.strategy, self.trainable, self.params, self.scheduler, self.guard,
                                   self.sampling, self.engine.exact_logprobs)
        self.eval_sampling, eval_how = eval_sampling(cfg.eval, self.policy, self.sampling)
        if self.acc.is_main_process and (cfg.rollout.sampling_from != "config" or cfg.eval.sampling != "rollout"):
            print(f"rollout sampling: {describe_sampling(self.sampling)}, from {how}\n"
                  f"eval sampling: {describe_sampling(self.eval_sampling)}, {eval_how}", flush=True)
        self.rewards = _build_rewards(cfg.rewards)
        self.eval_rewards = _build_rewards(cfg.eval.rewards) if cfg.eval.rewards else self.rewards
        self.sampler = PromptSampler(train_rows, self.layout.prompts_per_step, cfg.seed, cfg.data.shuffle,
                                     self.layout.prompts)
        self.eval_rows = load_prompts(cfg.eval.prompts_file)[: cfg.eval.num_prompts] if cfg.eval.prompts_file else []
        if cfg.eval.prompts_file:
            self._check_prompts(self.eval_rows, cfg.eval.prompts_file)
        self.held_out = HeldOutEvaluation(self.eval_rows, cfg.eval.num_generations, self.eval_sampling,
                                          self.eval_rewards, cfg.seed, g.batch_size // cfg.eval.num_generations,
                                          self.rank, self.world, self.dist)

        if self.resume_from is not None:
            self._resume(self.resume_from)
        self.run.open(self.start_step, self.save_checkpoint)

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
                cls.build(path, load_prompts(train_file), progress=self.run.show_bars, **m.build)
        self.acc.wait_for_everyone()
        return path

    def _check_prompts(self, rows, path: str) -> None:
        """Prompts that leave no room for the image tokens in the model's positions fail, naming the line."""
        check_policy_prompts(self.policy, rows, path)  # rl/data.py, shared with generate and eval

    def _resume(self, path: Path) -> None:
        """Optimizer, schedule, data position and this rank's RNG (the weights loaded before wrapping)."""
        ckpt = load_checkpoint(path, verify=False)  # verified in _check_resume
        fresh = optimizer_hyperparameters(self.optimizer)  # the configured values, before the saved ones load
        self.strategy.load_optimizer_state(ckpt.optimizer, path)  # rl/parallel/
        self.scheduler.load_state_dict(ckpt.scheduler)
        apply_optimizer_config(self.optimizer, self.scheduler, fresh,  # allowed changes really apply
                               recompute=self.run.optimizer_config_changed)
        self.sampler.load_state_dict(ckpt.state["data"])
        restore_rank_state(path, self.rank)  # sampling needs none: its seeds follow from the step
        self.start_step = int(ckpt.state["step"])
        self.run.resumed(path, self.start_step)

    # ------------------------------------------------------------------ training
    def train(self) -> RunSummary | None:
        """Steps ``start_step + 1 .. max_steps``, each closed by the run's lifecycle (rl/run/lifecycle.py: log,
        checkpoints; SIGINT / SIGTERM end it after the current step with a checkpoint, `TrainingStopped`; a
        reward that fails every sample too often stops it). The summary on rank 0, None elsewhere."""
        if self.start_step == 0 and self.cfg.eval.eval_every:
            self.run.record_initial_eval(self.evaluate())  # every rank: sharded and gathered, as later
        with self.run.steps(self.start_step) as loop:
            for step in loop:
                metrics = self.step(step)
                if self.run.eval_due(step):
                    metrics.update(self.evaluate())
                loop.end_step(step, metrics)
        return self.run.summarise()

    def step(self, step: int) -> dict[str, float]:
        """One GRPO step: prompts → rollouts → images → rewards → advantages → μ updates (the objective:
        the module's docstring). B = this rank's samples, N = image tokens per sample, K = rewards."""
        g, t, lay = self.cfg.grpo, dict[str, float](), self.layout
        with timed("step", t):
            # 1. This rank's prompts, by global index (rl/batch_layout.py), each with the samples of its group
            #    held here: all G, or a slice when a group is split across ranks; seeded by global index.
            rows = self.sampler.next_batch()
            request = RolloutRequest([r.prompt for r in rows], g.num_generations, self.sampling,
                                     [stream_seed(self.cfg.seed, "train", step, i) for i in lay.prompts],
                                     [r.metadata for r in rows], samples=lay.samples)
            # 2. Rollout and decode: exactly N image codes per sample, among the image tokens only; each
            #    image's noise keyed by its prompt's seed and its index in the group (rl/rollout/generate.py).
            # 3. Rewards; None (failed) becomes NaN and excludes the sample, reported and counted towards the
            #    reward-failure stop (rl/run/lifecycle.py). With rollout.pipeline_rewards, each decoded chunk of
            #    whole prompts is scored while the next decodes (rl/rollout/pipeline.py).
            gen, scored = self.driver.generate_and_score(request, self.rewards)
            ro = gen.rollout
            t.update(gen.timings)
            self.run.record_rewards(step, scored)
            rewards = torch.tensor([math.nan if s is None else s for s in scored.total], dtype=torch.float32)  # [B]
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
                batch = self.update.batch(ro, adv, mask, global_valid, gen.old_logprobs)  # rl/update.py
            # 6. μ optimizer passes over the batch, accumulating over micro-batches; the engine/trainer
            #    agreement, bounded by rollout.max_logprob_diff (rl/rollout/agreement.py).
            with timed("update", t):
                upd = self.update(batch, step)
            with timed("weight_sync", t):  # an engine with its own copy of the weights reloads them here
                self.engine.update_weights(self.policy)
            if self.sync_probe is not None:  # the push verified on a fixed probe (rl/rollout/sync_probe.py)
                with timed("sync_probe", t):  # scored in the space the engine sampled from
                    upd.update(self.sync_probe.check(step, self.policy, self.engine, self.sampling,
                                                     self.update.sampled_logprobs, self.update.applied(upd)))

        metrics = {**t, **upd, **self._reward_metrics(scored, all_rewards, all_adv)}
        metrics["lr"] = float(self.scheduler.get_last_lr()[0])
        self.run.log_samples(step, gen.images, request.per_sample()[0], rewards, scored, len(lay.samples))
        return metrics

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

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Score held-out prompts with the eval rewards (rl/rollout/evaluation.py); fixed per-prompt seeds
        keep steps comparable. Collective."""
        return self.held_out.evaluate(self.driver)

    # ------------------------------------------------------------------ checkpoints and the end
    def save_checkpoint(self, step: int) -> Path | None:
        """Checkpoint ``step`` (rl/run/lifecycle.py: every rank stages its files, rank 0 seals the folder).
        Collective; the path on rank 0, None elsewhere."""
        return self.run.save_checkpoint(step, lambda staging: self._checkpoint_contents(step, staging))

    def _checkpoint_contents(self, step: int, staging: Path) -> CheckpointContents:
        """Every rank's own files (RNG; DeepSpeed shards) staged; the gathered weights and optimizer (rank 0)."""
        self.strategy.stage_rank_files(staging)  # rl/parallel/: RNG states, DeepSpeed's shards
        weights = self.strategy.trainable_state(self.trainable)  # full, on rank 0
        optim = self.strategy.optimizer_state()
        state = {"step": step, "data": self.sampler.state_dict(), "world_size": self.world,
                 "strategy": self.strategy.name, "rng_cpu": torch.get_rng_state()}
        return CheckpointContents(weights, optim, self.scheduler.state_dict(), state)

    def cleanup(self) -> None:
        """Close the logs and release the run folder; safe after a `setup` that failed part-way."""
        if hasattr(self, "run"):
            self.run.close()
        if hasattr(self, "acc"):
            self._release_wrapper()
            if hasattr(self, "engine"):
                self.engine.close()  # before end_training: in-process vLLM's own teardown needs its group
            self.acc.end_training()
        if hasattr(self, "run"):
            self.run.release()

    def _release_wrapper(self) -> None:
        """Drop the wrapper (and accelerate's references to it) before the process group goes.

        A gloo group whose last owner is DDP's C++ reducer is destroyed inside the reducer's destructor with the
        GIL held, while a gloo worker may still need the GIL to free a finished collective's tensors: the
        process then never exits (seen on CPU after the last step). Freed here, the group ends in
        ``destroy_process_group``, which releases the GIL while it joins its threads.
        """
        if hasattr(self, "policy") and hasattr(self, "lm"):
            self.lm = self.policy.lm  # the inner module: still usable for reading weights after the run
            self.strategy.release()
        self.acc.free_memory()


def train(cfg: TrainConfig, resume: str | bool | None = None, overwrite: bool = False,
          allow_config_change: Sequence[str] = ()) -> RunSummary | None:
    """Build, run and tear down a GRPO run (arguments as in `GRPOTrainer.setup`); the summary on rank 0."""
    trainer = GRPOTrainer(cfg)
    try:
        trainer.setup(resume, overwrite, allow_config_change)
        return trainer.train()
    finally:
        trainer.cleanup()
