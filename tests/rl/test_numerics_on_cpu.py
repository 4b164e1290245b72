"""Numerics of real tiny-world runs: truncated sampling in bf16 stays finite; a non-finite update is skipped."""

import json
import math

import pytest
import torch

import blip3o_rl.rl.trainer as trainer_module
from blip3o_rl.rl.config import load_config
from blip3o_rl.rl.run.guard import NonFiniteUpdateError
from blip3o_rl.rl.trainer import GRPOTrainer, train

QUIET = ["logging.progress_bar=false", "logging.tensorboard=false", "logging.image_every=0",
         "eval.eval_every=0", "checkpoint.save_final=false"]


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_bf16_lora_truncated_sampling_stays_finite(tmp_path):
    """bf16 LoRA with top_k 6 / top_p 0.9 (issue 10's reproduction, which made every trainable weight NaN;
    on this tiny world the old code was already NaN after step 1), plus μ = 2 and a KL reference so
    π_old and π_ref are scored against the sampler's kept sets too.

    Bound: |trainer − sampler| log-prob ≤ 0.5 per code. Measured max 0.07–0.10 per step over 8 steps
    (bf16 logits from a KV-cached decode vs a full forward); an out-of-set code would be inf.
    """
    out = tmp_path / "run"
    cfg = load_config("demo", [f"output_dir={out}", "max_steps=4", "model.dtype=bfloat16", "model.finetune=lora",
                               "optim.learning_rate=3e-3", "rollout.top_k=6", "rollout.top_p=0.9",
                               "grpo.num_iterations=2", "grpo.beta=0.01", "grpo.batch_size=32",
                               "grpo.micro_batch_size=12", *QUIET])
    trainer = GRPOTrainer(cfg)
    trainer.setup()
    try:
        for step in range(1, cfg.max_steps + 1):
            m = trainer.step(step)
            assert m["update/skipped_nonfinite"] == 0.0, step
            assert 0.0 <= m["rollout/logprob_diff_max"] <= 0.5, (step, m["rollout/logprob_diff_max"])
            assert math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) and math.isfinite(m["kl"]), m
        assert all(torch.isfinite(p).all() for p in trainer.params)
        assert trainer.guard.total_skipped == 0
    finally:
        trainer.cleanup()


def test_trainer_skips_a_nan_update_and_counts_it(tmp_path, monkeypatch):
    """Step 2's loss is made NaN: its update is skipped (weights and Adam state unchanged; the LR schedule
    advances, so it stays tied to the step), counted in ``update/skipped_nonfinite`` and warned; step 3
    trains normally."""
    real = trainer_module.policy_loss
    poisoned = {"on": False}

    def policy_loss(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return (loss * math.nan if poisoned["on"] else loss), stats

    monkeypatch.setattr(trainer_module, "policy_loss", policy_loss)
    cfg = load_config("demo", [f"output_dir={tmp_path / 'run'}", "max_steps=3", "model.build.sft_steps=0",
                               "grpo.batch_size=16", "grpo.micro_batch_size=8", "optim.lr_scheduler_type=cosine",
                               *QUIET])
    trainer = GRPOTrainer(cfg)
    trainer.setup()
    try:
        assert trainer.step(1)["update/skipped_nonfinite"] == 0.0
        weights = [p.detach().clone() for p in trainer.params]
        adam = {k: v.clone() for k, v in trainer.optimizer.state[trainer.params[0]].items()}
        sched = trainer.scheduler.state_dict()
        poisoned["on"] = True
        m = trainer.step(2)
        assert m["update/skipped_nonfinite"] == 1.0 and math.isnan(m["loss"])
        assert all(torch.equal(p, w) for p, w in zip(trainer.params, weights, strict=True))
        assert all(torch.equal(v, adam[k]) for k, v in trainer.optimizer.state[trainer.params[0]].items())
        assert trainer.scheduler.state_dict()["last_epoch"] == sched["last_epoch"] + 1
        poisoned["on"] = False
        assert trainer.step(3)["update/skipped_nonfinite"] == 0.0
        assert trainer.guard.total_skipped == 1 and trainer.guard.consecutive == 0
    finally:
        trainer.cleanup()


def test_repeated_nonfinite_updates_stop_the_run(tmp_path, monkeypatch):
    real = trainer_module.policy_loss
    monkeypatch.setattr(trainer_module, "policy_loss", lambda *a, **k: (lambda r: (r[0] * math.nan, r[1]))(real(*a, **k)))
    cfg = load_config("demo", [f"output_dir={tmp_path / 'run'}", "max_steps=5", "model.build.sft_steps=0",
                               "grpo.batch_size=16", "optim.max_nonfinite_steps=2", *QUIET])
    with pytest.raises(NonFiniteUpdateError, match="2 optimizer updates in a row"):
        train(cfg)
