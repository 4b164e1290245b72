"""The finite-update guard over 2 real processes (gloo): one rank's backward gives an infinite gradient
while every loss stays finite (only the gradient norm can tell), under DDP and FSDP2. The update is
skipped on every rank (weights exactly those of the step before, on both ranks), counted once, and the next
step trains with finite weights. The DeepSpeed ZeRO-2 case is in test_distributed_deepspeed_on_cpu.py.
"""

import pytest

from blip3o_rl.tiny import make_tiny_world

from .distributed_helpers import GLOBAL_BATCH, assert_skipped, common, launch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_world(tmp_path_factory.mktemp("nonfinite") / "base_model", seed=0)


@pytest.mark.parametrize("config", ["ddp.yaml", "fsdp2.yaml"])
def test_an_infinite_gradient_on_one_rank_skips_the_update_on_every_rank(config, base, tmp_path):
    out = tmp_path / config.removesuffix(".yaml")
    launch(2, out, common(base, out, f"grpo.batch_size={GLOBAL_BATCH // 2}", "eval.eval_every=0"),
           launcher="accelerate", accelerate_config=config, worker_args=("--nonfinite-grad-at", "2"))
    assert_skipped(out, grad_at=2)
