"""Log-prob agreement measured and bounded every step, and every weight push verified (rl/rollout/
agreement.py, rl/rollout/sync_probe.py), on real tiny-world runs with an engine that holds its own copy of
the weights and whose push can be made to fail silently (copy_engine.py)."""

import json
import re
from pathlib import Path

import pytest
import torch

from blip3o_rl.rl.config import ModelConfig, load_config
from blip3o_rl.rl.errors import EngineDisagreementError
from blip3o_rl.rl.grpo.logprobs import score_rollout
from blip3o_rl.rl.rollout.agreement import LogprobAgreement
from blip3o_rl.rl.rollout.engines import KVCacheEngine, SamplingParams, build_engine
from blip3o_rl.rl.rollout.sync_probe import SyncProbe, lora_modules_changed, pushes_weights
from blip3o_rl.rl.trainer import train
from blip3o_rl.rl.weights.finetune import TrainableWeights

COPY_ENGINE = f"{Path(__file__).parent / 'copy_engine.py'}:CopyEngine"
QUIET = ["logging.progress_bar=false", "logging.tensorboard=false", "logging.image_every=0", "eval.eval_every=0",
         "checkpoint.save_final=false", "checkpoint.save_every=0"]


@pytest.fixture
def run(tmp_path, tiny_world_dir):
    """A short demo run on the shared tiny world (no warm start: the checks do not need a skilled model)."""

    def go(*overrides, steps=3):
        return _run(tmp_path, tiny_world_dir, *overrides, steps=steps)

    return go


def _run(tmp_path, model_dir, *overrides, steps=3):
    out = tmp_path / "run"
    cfg = load_config("demo", [f"output_dir={out}", f"max_steps={steps}", f"rollout.engine={COPY_ENGINE}",
                               f"model.name_or_path={model_dir}", "model.build={}",
                               "grpo.batch_size=32", "grpo.micro_batch_size=32", *QUIET, *overrides])
    try:
        train(cfg)
        error = None
    except EngineDisagreementError as exc:
        error = str(exc)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()] if (
        out / "metrics.jsonl").exists() else []
    return rows, error


def test_a_push_that_silently_fails_stops_the_run_at_that_step_naming_the_engine(run):
    rows, error = run("rollout.engine_kwargs={fail_from: 2}")
    assert error is not None and error.startswith("step 2: the weight push to rollout engine")
    assert "copy_engine.py:CopyEngine" in error and "did not take effect" in error
    assert [r["step"] for r in rows] == [1]  # step 1's push worked: probe and agreement exact
    assert rows[0]["rollout/sync_probe_diff"] < 1e-5 and rows[0]["rollout/logprob_diff_max"] < 1e-5


def test_without_the_probe_the_agreement_bound_stops_the_stale_run_one_step_later(run):
    rows, error = run("rollout.engine_kwargs={fail_from: 2}", "rollout.sync_probe=never",
                       "rollout.max_logprob_diff=0.2")
    assert error is not None and re.match(r"step 3: rollout engine '.*copy_engine\.py:CopyEngine' disagrees", error)
    assert [r["step"] for r in rows] == [1, 2]
    assert "rollout/sync_probe_diff" not in rows[0]


def test_agreement_metrics_on_every_step_and_the_lora_merge_count_logged(run):
    rows, error = run("model.finetune=lora", "optim.learning_rate=3e-3", steps=2)
    assert error is None and len(rows) == 2
    for r in rows:
        assert r["rollout/logprob_diff_max"] < 1e-5 and r["rollout/logprob_diff_p99"] <= r["rollout/logprob_diff_max"]
        assert r["rollout/logprob_outside_clip_fraction"] == 0.0
        assert r["rollout/sync_probe_diff"] < 1e-5
        assert r["rollout/lora_merged_modules"] == 14  # q/k/v/o/gate/up/down in the tiny world's 2 layers


def test_the_exact_engine_is_bounded_too(run):
    _, error = run("rollout.engine=kv_cache", "rollout.max_logprob_diff=1e-12", steps=1)
    assert error is not None and error.startswith("step 1: rollout engine 'kv_cache' disagrees")
    assert "rollout.max_logprob_diff 1e-12" in error


def test_engines_that_read_the_live_model_are_not_probed():
    assert pushes_weights(build_engine(COPY_ENGINE)) and not pushes_weights(KVCacheEngine())


def test_a_lora_merge_that_changes_no_module_is_an_error(tiny_policy):
    TrainableWeights(tiny_policy, ModelConfig(policy="tiny", finetune="lora"), need_reference=False)
    assert lora_modules_changed(tiny_policy.model) == 0  # lora_B starts at 0: the merge changes nothing
    probe = SyncProbe("vllm", ["green"], 2, 0, 0.1)
    engine = KVCacheEngine()
    engine.setup(tiny_policy)
    with pytest.raises(EngineDisagreementError, match="LoRA merge pushed to rollout engine 'vllm' changed no module"):
        probe.check(1, tiny_policy, engine, SamplingParams(), lambda ro: torch.zeros(()))
    # before any applied update (a skipped step) zero is expected, and the probe runs
    out = probe.check(1, tiny_policy, engine, SamplingParams(), lambda ro: _trainer_scores(tiny_policy, ro),
                      updated=False)
    assert out["rollout/lora_merged_modules"] == 0 and out["rollout/sync_probe_diff"] < 1e-5


def _trainer_scores(policy, ro):
    return score_rollout(policy.lm, ro.prompts, ro.codes, SamplingParams(), 16)[0]


def test_agreement_reports_the_clip_band_and_percentiles():
    a = LogprobAgreement("vllm", None, 0.2, 0.28)
    trainer = torch.zeros(2, 100)
    engine = torch.zeros(2, 100)
    engine[0, :10] = 0.5  # ratio exp(-0.5) = 0.61 < 0.8: outside the band
    engine[1] = 5.0  # an excluded row: ignored
    a.add(trainer, engine, torch.tensor([True, False]))
    m = a.finish(7)
    assert m["rollout/logprob_outside_clip_fraction"] == pytest.approx(0.1)
    assert m["rollout/logprob_diff_max"] == 0.5 and m["rollout/logprob_diff_mean"] == pytest.approx(0.05)
    assert m["rollout/logprob_diff_p99"] == pytest.approx(0.5)
    assert a.finish(8) == {}  # reset after each step
