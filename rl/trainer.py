"""The GRPO recipe: orchestration only; each phase is a component call.

Objective per step (see `rl/loss.py` for the exact normalisations)::

    for each prompt: G image-token sequences y_1..y_G ~ π_old(·|prompt)   (sampled among image codes only)
    r_i = Σ_k w_k · reward_k(decode(y_i), prompt)                        (a failed reward excludes y_i)
    A_i = (r_i − mean_group(r)) / (std_group(r) + 1e-4)                  (or batch std, or unscaled)
    L   = −min(ρ_t A_i, clip(ρ_t, 1−ε, 1+ε_high) A_i) + β · KL_k3(π_θ ‖ π_ref),  ρ_t = π_θ(y_t) / π_old(y_t)

with μ = ``num_iterations`` optimizer passes over each rollout batch (π_old = π_θ detached at μ = 1).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_scheduler

from blip3o_rl.policies import load_policy
from blip3o_rl.rewards import WeightedRewards, load_reward
from blip3o_rl.rl.advantages import count_groups_without_baseline, group_advantages
from blip3o_rl.rl.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from blip3o_rl.rl.config import RewardSpec, TrainConfig, config_to_dict
from blip3o_rl.rl.data import PromptSampler, load_prompts
from blip3o_rl.rl.finetune import FinetuneSetup
from blip3o_rl.rl.guard import FiniteUpdateGuard
from blip3o_rl.rl.logprobs import sequence_logprobs
from blip3o_rl.rl.loss import policy_loss
from blip3o_rl.rl.presets import describe as describe_sampling
from blip3o_rl.rl.presets import eval_sampling, lr_schedule_steps, rollout_sampling
from blip3o_rl.rl.rollout import Rollout, build_engine
from blip3o_rl.rl.tracking import RunLogger, image_grid, plot_reward_curve, read_metrics, timed

logger = logging.getLogger(__name__)


def _build_rewards(specs: tuple[RewardSpec, ...]) -> WeightedRewards:
    return WeightedRewards([(s.log_name, s.weight, load_reward(s.reward, **s.kwargs)) for s in specs])


def _nan_stats(x: torch.Tensor) -> tuple[float, float]:
    v = x[~torch.isnan(x)]
    if v.numel() == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std()) if v.numel() > 1 else 0.0


class GRPOTrainer:
    """``setup()`` → ``train()`` (→ ``step()`` / ``evaluate()`` / ``save_checkpoint()``) → ``cleanup()``."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.start_step = 0

    # ------------------------------------------------------------------ setup
    def setup(self, resume: str | bool | None = None) -> None:
        cfg = self.cfg
        self.acc = Accelerator()
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        if self.world > 1:
            # Rewards, advantages and data are already rank-aware, but gradients are not yet all-reduced:
            # refuse rather than train N diverging copies.
            raise NotImplementedError(
                f"multi-process training ({self.world} processes) is not supported yet: gradients are not "
                "synchronised across processes. Run a single process (see README, 'What runs where')."
            )
        self.out.mkdir(parents=True, exist_ok=True)
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed + self.rank)

        self.policy = load_policy(cfg.model.policy, self._model_path(), cfg.model.dtype, **cfg.model.policy_kwargs)
        self.policy.model.to(self.acc.device)
        self.finetune = FinetuneSetup(self.policy, cfg.model, need_reference=cfg.grpo.beta > 0)
        self.params = self.finetune.trainable_parameters()
        frozen = {id(p) for p in getattr(self.policy, "frozen_parameters", list)()}
        if any(id(p) in frozen for p in self.params):
            raise RuntimeError("a frozen (decoder) parameter is trainable: it must not enter the optimizer")
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            self.params, lr=o.learning_rate, betas=(o.adam_beta1, o.adam_beta2), eps=o.adam_epsilon,
            weight_decay=o.weight_decay,
        )
        train_rows = load_prompts(cfg.data.train_file)
        horizon = lr_schedule_steps(o, cfg.max_steps, len(train_rows), cfg.prompts_per_step * self.world)
        self.scheduler = get_scheduler(
            o.lr_scheduler_type, self.optimizer, num_warmup_steps=o.warmup_steps,
            num_training_steps=horizon * cfg.grpo.num_iterations,  # rl/presets.py: schedule_steps / _epochs
        )
        self.optimizer = self.acc.prepare(self.optimizer)
        self.guard = FiniteUpdateGuard(o.max_nonfinite_steps)  # every optimizer step goes through it

        self.engine = build_engine(cfg.rollout.engine)
        self.sampling, how = rollout_sampling(cfg.rollout, self.policy)  # rl/presets.py
        self.eval_sampling, eval_how = eval_sampling(cfg.eval, self.policy, self.sampling)
        if self.acc.is_main_process and (cfg.rollout.sampling_from != "config" or cfg.eval.sampling != "rollout"):
            print(f"rollout sampling: {describe_sampling(self.sampling)}, from {how}\n"
                  f"eval sampling: {describe_sampling(self.eval_sampling)}, {eval_how}", flush=True)
        self.rewards = _build_rewards(cfg.rewards)
        self.eval_rewards = _build_rewards(cfg.eval.rewards) if cfg.eval.rewards else self.rewards
        self.sampler = PromptSampler(
            train_rows, cfg.prompts_per_step, cfg.seed, cfg.data.shuffle, self.rank, self.world
        )
        self.eval_rows = load_prompts(cfg.eval.prompts_file)[: cfg.eval.num_prompts] if cfg.eval.prompts_file else []
        self.generator = torch.Generator(self.acc.device).manual_seed(cfg.seed * 7919 + self.rank)

        if resume:
            self._resume(None if resume is True else Path(resume))
        if self.acc.is_main_process:
            (self.out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
            self.log = RunLogger(self.out, cfg.logging, config_to_dict(cfg), self.start_step)

    def _model_path(self) -> Path:
        m = self.cfg.model
        if m.name_or_path is not None:
            return Path(m.name_or_path)
        if m.policy != "tiny":
            raise ValueError("model.name_or_path is required (only the tiny world can be made on the fly)")
        path = self.out / "base_model"
        if self.acc.is_main_process and not (path / "config.json").is_file():
            from blip3o_rl.policies.tiny.warm_start import build_tiny_world

            build_tiny_world(path, load_prompts(self.cfg.data.train_file), m.tiny_world,
                             progress=self.cfg.logging.progress_bar)
        self.acc.wait_for_everyone()
        return path

    def _resume(self, path: Path | None) -> None:
        path = path or latest_checkpoint(self.out / "checkpoints")
        if path is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {self.out / 'checkpoints'}")
        ckpt = load_checkpoint(path)
        self.finetune.load_trainable_state_dict(ckpt.weights)
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.scheduler.load_state_dict(ckpt.scheduler)
        self.sampler.load_state_dict(ckpt.state["data"])
        torch.set_rng_state(ckpt.state["rng_cpu"])
        self.generator.set_state(ckpt.state["rng_sampling"])
        if torch.cuda.is_available() and "rng_cuda" in ckpt.state:
            torch.cuda.set_rng_state_all(ckpt.state["rng_cuda"])
        self.start_step = int(ckpt.state["step"])
        logger.info("resumed from %s at step %d", path, self.start_step)

    # ------------------------------------------------------------------ training
    def train(self) -> dict[str, float]:
        cfg, main = self.cfg, self.acc.is_main_process
        if self.start_step == 0 and cfg.eval.eval_every and main:
            self.log.log(0, self.evaluate())
        bar = tqdm(range(self.start_step + 1, cfg.max_steps + 1), initial=self.start_step, total=cfg.max_steps,
                   desc="GRPO", disable=not (main and cfg.logging.progress_bar), dynamic_ncols=True)
        for step in bar:
            metrics = self.step(step)
            if cfg.eval.eval_every and (step % cfg.eval.eval_every == 0 or step == cfg.max_steps):
                metrics.update(self.evaluate())
            if main and (step % cfg.logging.log_every == 0 or step == cfg.max_steps):
                self.log.log(step, metrics)
            bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics['kl']:.4f}")
            if (cfg.checkpoint.save_every and step % cfg.checkpoint.save_every == 0) or (
                step == cfg.max_steps and cfg.checkpoint.save_final
            ):
                self.save_checkpoint(step)
        return self._summarise() if main else {}

    def step(self, step: int) -> dict[str, float]:
        """One GRPO step: prompts → rollouts → decode → rewards → advantages → μ updates."""
        cfg, g, t = self.cfg, self.cfg.grpo, {}
        model = self.policy.model
        with timed("step", t):
            # 1. Prompts for this rank; each is repeated for its group of G rows below.
            rows = self.sampler.next_batch()
            prompts = self.policy.prompt_batch([r.prompt for r in rows])  # [P, L]
            texts = [r.prompt for r in rows for _ in range(g.num_generations)]
            meta = [r.metadata for r in rows for _ in range(g.num_generations)]

            # 2. Rollout: exactly N image codes per sample, among the image tokens only.
            with timed("rollout", t):
                model.eval()
                ro = self.engine.generate(self.policy, prompts, g.num_generations, self.sampling, self.generator,
                                          return_hidden=self.policy.needs_hidden_states)
            old = None
            if self.policy.needs_hidden_states and ro.hidden_states is None:
                # An engine without hidden states (e.g. vLLM): one no-grad forward gives them and π_old.
                with timed("hidden_states", t):
                    old, ro.hidden_states = self._no_grad_pass(self.policy, ro, return_hidden=True)
            # 3. Decode to images.
            with timed("decode", t):
                images = self.policy.decode(ro.codes, ro.hidden_states)
            # 4. Rewards; None (failed) becomes NaN and excludes the sample.
            with timed("reward", t):
                scored = self.rewards(images, texts, meta)
            rewards = torch.tensor([math.nan if s is None else s for s in scored.total], dtype=torch.float32)
            for name, out in scored.outputs.items():
                if out.num_failed:  # excluded from the loss, counted in the metrics, and said here
                    first = next(d for s, d in zip(out.scores, out.details, strict=True) if s is None)
                    logger.warning("step %d: reward %r failed on %d of %d samples (first: %s)", step, name,
                                   out.num_failed, len(out.scores), first.get("error", first))
            # 5. Advantages over the gathered rewards of all ranks (whole groups live on one rank).
            all_rewards = self.acc.gather(rewards.to(self.acc.device)).cpu()  # [world * B]
            adv = group_advantages(all_rewards, g.num_generations, g.scale_rewards)
            b = rewards.numel()
            adv = adv[self.rank * b : (self.rank + 1) * b].to(self.acc.device)  # [B]
            mask = (~torch.isnan(rewards)).to(self.acc.device)  # [B]
            global_valid = int(self.acc.gather(mask.sum()[None]).sum()) * ro.codes.shape[1]
            # 6. π_old (μ > 1; the trainer's forward, never the engine's log-probs) and π_ref (β > 0).
            with timed("reference", t):
                if g.num_iterations > 1 and old is None:
                    old, _ = self._no_grad_pass(self.policy, ro)
                ref = None
                if g.beta > 0:
                    with self.finetune.reference() as ref_policy:
                        ref, _ = self._no_grad_pass(ref_policy, ro)
            old = old if g.num_iterations > 1 else None  # at μ = 1, π_old is the current forward, detached
            # 7. μ optimizer passes over the batch, accumulating over micro-batches.
            with timed("update", t):
                upd = self._update(ro, adv, mask, old, ref, global_valid)

        metrics = {**t, **upd, **self._reward_metrics(scored, rewards, all_rewards, adv, mask)}
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        if self.acc.is_main_process and cfg.logging.image_every and step % cfg.logging.image_every == 0:
            self._log_samples(step, images, texts, rewards, scored)
        return metrics

    def _micro_batches(self, n: int) -> list[slice]:
        mb = self.cfg.grpo.micro_batch_size
        return [slice(s, min(s + mb, n)) for s in range(0, n, mb)]

    def _forward(self, policy, ro: Rollout, sl: slice, return_hidden: bool = False):
        r, s = self.cfg.rollout, self.sampling  # the resolved rollout sampling (rl/presets.py)
        kept = None if ro.kept_sizes is None else ro.kept_sizes[sl]  # the sampler's kept sets (truncated sampling)
        return sequence_logprobs(policy, ro.prompts.slice(sl), ro.codes[sl], s.temperature, s.top_k, s.top_p,
                                 return_hidden=return_hidden, chunk_size=r.logprob_chunk_size, kept=kept)

    @torch.no_grad()
    def _no_grad_pass(self, policy, ro: Rollout, return_hidden: bool = False):
        """Log-probs ``[B, N]`` (and hidden states ``[B, N + 1, H]``) of the rollout under ``policy``."""
        outs = [self._forward(policy, ro, sl, return_hidden) for sl in self._micro_batches(ro.codes.shape[0])]
        hidden = torch.cat([o.hidden_states for o in outs]) if return_hidden else None
        return torch.cat([o.logprobs for o in outs]), hidden

    def _update(self, ro: Rollout, adv, mask, old, ref, global_valid: int) -> dict[str, float]:
        g, o = self.cfg.grpo, self.cfg.optim
        model, slices = self.policy.model, self._micro_batches(ro.codes.shape[0])
        model.train()
        sums: dict[str, float] = {}
        if not bool(mask.any()):  # host sync: nothing to learn from, and Adam would still move the weights
            return {"update/skipped": 1.0, "loss": 0.0, "kl": 0.0, "entropy": math.nan, "grad_norm": 0.0,
                    "update/skipped_nonfinite": 0.0}
        global_samples = global_valid // ro.codes.shape[1]  # valid samples of the step (all ranks)
        skipped, step_losses = 0, []
        for it in range(g.num_iterations):
            step_loss = 0.0  # Σ of the micro-batches' shares = this update's loss (rl/loss.py)
            for i, sl in enumerate(slices):
                ctx = self.acc.no_sync(model) if i < len(slices) - 1 else contextlib.nullcontext()
                with ctx:
                    fwd = self._forward(self.policy, ro, sl)
                    loss, st = policy_loss(
                        fwd.logprobs, fwd.logprobs.detach() if old is None else old[sl], adv[sl], mask[sl],
                        loss_type=g.loss_type, epsilon=g.epsilon, epsilon_high=g.epsilon_high, beta=g.beta,
                        ref_logprobs=None if ref is None else ref[sl],
                        global_valid_tokens=global_valid, global_valid_samples=global_samples,
                    )
                    self.acc.backward(loss)
                w = st.valid_tokens
                m = mask[sl]
                step_loss += float(loss.detach())
                vals = {"kl": st.kl, "clip/low": st.clip_low,
                        "clip/high": st.clip_high, "ratio/mean": st.ratio_mean}
                if it == 0 and m.any():
                    vals["entropy"] = float(fwd.entropy[m].mean())
                    diff = (fwd.logprobs.detach() - ro.sampler_logprobs[sl])[m].abs()
                    vals["rollout/logprob_diff_mean"] = float(diff.mean())
                    sums["rollout/logprob_diff_max"] = max(sums.get("rollout/logprob_diff_max", 0.0), float(diff.max()))
                for k, v in vals.items():
                    sums[k] = sums.get(k, 0.0) + v * w
                    sums[f"_w/{k}"] = sums.get(f"_w/{k}", 0.0) + w
                sums["ratio/min"] = min(sums.get("ratio/min", math.inf), st.ratio_min)
                sums["ratio/max"] = max(sums.get("ratio/max", -math.inf), st.ratio_max)
            max_norm = o.max_grad_norm if o.max_grad_norm is not None else math.inf
            sums["grad_norm"] = float(self.acc.clip_grad_norm_(self.params, max_norm))
            # optimizer + scheduler step, or a skipped non-finite update (rl/guard.py); grads cleared
            skipped += not self.guard.step(self.optimizer, self.scheduler, step_loss, sums["grad_norm"])
            step_losses.append(step_loss)
        out = {k: v / sums[f"_w/{k}"] for k, v in sums.items() if f"_w/{k}" in sums}
        out.update({k: v for k, v in sums.items() if k in ("ratio/min", "ratio/max", "grad_norm",
                                                               "rollout/logprob_diff_max")})
        out["clip/fraction"] = out["clip/low"] + out["clip/high"]
        out["loss"] = sum(step_losses) / len(step_losses)
        out["update/skipped_nonfinite"] = float(skipped)
        return out

    def _reward_metrics(self, scored, rewards, all_rewards, adv, mask) -> dict[str, float]:
        g = self.cfg.grpo
        m: dict[str, float] = {}
        m["reward/mean"], m["reward/std"] = _nan_stats(rewards)
        for name, out in scored.outputs.items():
            per = torch.tensor([math.nan if s is None else s for s in out.scores])
            m[f"reward/{name}/mean"], m[f"reward/{name}/std"] = _nan_stats(per)
            m[f"reward/{name}/failed"] = float(out.num_failed)
        m["samples/excluded"] = float((~mask).sum())
        m["groups/no_baseline"] = float(count_groups_without_baseline(all_rewards, g.num_generations))
        a = adv[mask]
        m["advantage/mean"] = float(a.mean()) if a.numel() else 0.0
        m["advantage/std"] = float(a.std()) if a.numel() > 1 else 0.0
        m["advantage/abs_max"] = float(a.abs().max()) if a.numel() else 0.0
        return m

    def _log_samples(self, step, images, texts, rewards, scored) -> None:
        g, k = self.cfg.grpo.num_generations, self.cfg.logging.num_images
        rows = max(1, min(k // g, len(images) // g))
        shown = images[: rows * g]
        labels = [texts[r * g] for r in range(rows)]
        self.log.log_images(step, image_grid(shown, g, labels))
        with (self.out / "samples" / f"step_{step:06d}.jsonl").open("w") as f:
            for i in range(len(shown)):
                row = {"prompt": texts[i], "reward": None if math.isnan(rewards[i]) else float(rewards[i]),
                       "rewards": {n: {"score": o.scores[i], **o.details[i]} for n, o in scored.outputs.items()}}
                f.write(json.dumps(row, default=str) + "\n")

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Score held-out prompts with the eval rewards; a fixed generator keeps steps comparable."""
        if not self.eval_rows:
            return {}
        cfg = self.cfg
        gen = torch.Generator(self.acc.device).manual_seed(cfg.seed + 12345)
        self.policy.model.eval()
        totals: dict[str, list[float]] = {}
        failed: dict[str, int] = {}
        per_call = max(1, cfg.grpo.batch_size // cfg.eval.num_generations)
        for s in range(0, len(self.eval_rows), per_call):
            rows = self.eval_rows[s : s + per_call]
            ro = self.engine.generate(self.policy, self.policy.prompt_batch([r.prompt for r in rows]),
                                      cfg.eval.num_generations, self.eval_sampling, gen,
                                      return_hidden=self.policy.needs_hidden_states)
            images = self.policy.decode(ro.codes, ro.hidden_states)
            n = cfg.eval.num_generations
            scored = self.eval_rewards(images, [r.prompt for r in rows for _ in range(n)],
                                       [r.metadata for r in rows for _ in range(n)])
            for name, out in scored.outputs.items():
                totals.setdefault(name, []).extend(x for x in out.scores if x is not None)
                failed[name] = failed.get(name, 0) + out.num_failed
        res = {}
        for name, vals in totals.items():
            res[f"eval/{name}/mean"] = sum(vals) / len(vals) if vals else math.nan
            res[f"eval/{name}/failed"] = float(failed[name])
        return res

    # ------------------------------------------------------------------ checkpoints and the end
    def save_checkpoint(self, step: int) -> Path | None:
        self.acc.wait_for_everyone()
        if not self.acc.is_main_process:
            return None
        state = {"step": step, "data": self.sampler.state_dict(), "rng_cpu": torch.get_rng_state(),
                 "rng_sampling": self.generator.get_state()}
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        return save_checkpoint(self.out / "checkpoints", step, self.finetune.trainable_state_dict(),
                               self.optimizer.state_dict(), self.scheduler.state_dict(), state,
                               self.cfg.checkpoint.keep_last)

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
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def cleanup(self) -> None:
        if self.acc.is_main_process and hasattr(self, "log"):
            self.log.close()
        self.acc.end_training()


def train(cfg: TrainConfig, resume: str | bool | None = None) -> dict[str, float]:
    """Build, run and tear down a GRPO run."""
    trainer = GRPOTrainer(cfg)
    trainer.setup(resume)
    try:
        return trainer.train()
    finally:
        trainer.cleanup()
