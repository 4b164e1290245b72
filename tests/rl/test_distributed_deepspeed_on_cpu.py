"""DeepSpeed ZeRO on CPU (2 processes, gloo): ZeRO-2 (and its finite-update guard), and ZeRO-3 full fine-tuning with its partitioned KL
reference, equal the 1-process run; a ZeRO-3 run killed at step 3 resumes exactly; ZeRO-1 and ZeRO-3 LoRA
(rollouts inside one parameter gather) run and save a full-weight checkpoint.

Needs the ``[deepspeed]`` extra (tested with 0.19.8): skipped without it. Not in the default ``make
test`` install: DeepSpeed compiles its CPU shared-memory op on first use (~80-200 s with g++/ninja on
2 cores); ``make test-deepspeed`` installs it and runs this file (CI does, after ``make test``).
"""

import pytest
from safetensors.torch import load_file

from blip3o_rl.tiny import make_tiny_world

from .distributed_helpers import (
    GLOBAL_BATCH,
    TOLERANCE,
    assert_same_metrics,
    assert_skipped,
    common,
    launch,
    max_diff,
    metrics,
    results,
)

pytest.importorskip("deepspeed", reason="needs the [deepspeed] extra (make test-deepspeed)")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_world(tmp_path_factory.mktemp("ds") / "base_model", seed=0)


def test_zero2_two_processes_equal_one(base, tmp_path):
    ref = tmp_path / "ref"
    launch(1, ref, common(base, ref, f"grpo.batch_size={GLOBAL_BATCH}"))
    out = tmp_path / "zero2"
    launch(2, out, common(base, out, f"grpo.batch_size={GLOBAL_BATCH // 2}"), launcher="accelerate",
           accelerate_config="zero2.yaml")
    r0, _ = results(out, 2)
    assert max_diff(results(ref, 1)[0]["full"], r0["full"]) <= TOLERANCE
    assert_same_metrics(metrics(ref), metrics(out))
    assert (out / "checkpoints" / "step_000003" / "deepspeed").is_dir()


def test_zero2_an_infinite_gradient_on_one_rank_skips_the_update_on_every_rank(base, tmp_path):
    """The finite-update guard sees DeepSpeed's real gradient norm (read before its step): one rank's
    infinite gradient (every loss finite) at step 2 skips the update on both ranks; so does one rank's NaN
    loss with finite gradients at step 3 (DeepSpeed is made to discard them); the weights stay those of the
    step before, finite, and step 4 trains (DeepSpeed's gradient partitions were cleared)."""
    out = tmp_path / "zero2_nonfinite"
    launch(2, out, common(base, out, f"grpo.batch_size={GLOBAL_BATCH // 2}", "eval.eval_every=0", "max_steps=4"),
           launcher="accelerate", accelerate_config="zero2.yaml",
           worker_args=("--nonfinite-grad-at", "2", "--nonfinite-loss-at", "3"))
    assert_skipped(out, grad_at=2, loss_at=3)


def test_zero3_full_finetuning_with_partitioned_reference_equals_one(base, tmp_path):
    """Full fine-tuning with a KL term under ZeRO-3: the frozen reference is partitioned like the policy
    (its own ZeRO-3 engine: each rank owns half of it; DeepSpeed still keeps parameters below its persistence
    threshold whole, which here is all of them), and weights and metrics (KL included) equal the 1-process run's."""
    extra = ["grpo.beta=0.01", "max_steps=2"]
    ref = tmp_path / "ref"
    launch(1, ref, common(base, ref, f"grpo.batch_size={GLOBAL_BATCH}", *extra))
    out = tmp_path / "zero3"
    launch(2, out, common(base, out, f"grpo.batch_size={GLOBAL_BATCH // 2}", *extra), launcher="accelerate",
           accelerate_config="zero3.yaml")
    one, (r0, r1) = results(ref, 1)[0], results(out, 2)
    assert one["ref_stage"] == 0 and r0["ref_stage"] == r1["ref_stage"] == 3
    (part0, whole), (part1, _) = r0["ref_shard"], r1["ref_shard"]
    assert whole > 0 and part0 == part1 == whole // 2  # each rank owns half of the reference
    assert max_diff(one["full"], r0["full"]) <= TOLERANCE
    assert_same_metrics(metrics(ref), metrics(out))


def test_zero3_killed_rank_then_resume_is_exact(base, tmp_path):
    """ZeRO-3 full fine-tuning with KL: rank 1 dies at step 3; the resume (whole weights loaded from the
    checkpoint before DeepSpeed partitions them, then DeepSpeed's own optimizer shards) ends where the
    uninterrupted run ends."""
    extra = [f"grpo.batch_size={GLOBAL_BATCH // 2}", "grpo.beta=0.01"]
    whole, out = tmp_path / "whole", tmp_path / "crashed"
    launch(2, whole, common(base, whole, *extra), launcher="accelerate", accelerate_config="zero3.yaml")
    proc = launch(2, out, common(base, out, *extra), launcher="accelerate", accelerate_config="zero3.yaml",
                  worker_args=("--crash-at", "3"), check=False)
    assert proc.returncode != 0 and (out / "checkpoints" / "latest").read_text().strip() == "step_000002"
    launch(2, out, common(base, out, *extra), launcher="accelerate", accelerate_config="zero3.yaml",
           worker_args=("--resume",))
    assert max_diff(results(whole, 2)[0]["full"], results(out, 2)[0]["full"]) == 0.0
    assert_same_metrics(metrics(whole), metrics(out), rel=0.0)


@pytest.mark.parametrize("config", ["zero1.yaml", "zero3.yaml"])
def test_zero1_and_zero3_train_and_save_full_weights(config, base, tmp_path):
    out = tmp_path / config.removesuffix(".yaml")
    launch(2, out, common(base, out, f"grpo.batch_size={GLOBAL_BATCH // 2}", "max_steps=2", "model.finetune=lora"),
           launcher="accelerate", accelerate_config=config)
    r0, _ = results(out, 2)
    saved = load_file(out / "checkpoints" / "step_000002" / "weights.safetensors")
    assert saved and max_diff(saved, r0["full"]) == 0.0
