"""Checkpoints of a 2-process run: a rank killed at step 3 and a resume give the uninterrupted run's
weights and metrics; another world size is refused; launches that would train copies are refused."""

import json
import shutil

import pytest
from safetensors.torch import load_file

from blip3o_rl.rl.config import load_config
from blip3o_rl.rl.errors import ResumeError
from blip3o_rl.rl.run.checkpoint import verify_checkpoint
from blip3o_rl.rl.trainer import train
from blip3o_rl.tiny import make_tiny_world

from .distributed_helpers import assert_same_metrics, common, launch, max_diff, metrics, results

pytestmark = pytest.mark.slow
BATCH = ["grpo.batch_size=8", "grpo.beta=0.01"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_world(tmp_path_factory.mktemp("dist") / "base_model", seed=0)


@pytest.fixture(scope="module")
def uninterrupted(base, tmp_path_factory):
    """``torchrun --standalone --nproc_per_node 2 -m blip3o_rl train demo ...``: the command line itself."""
    out = tmp_path_factory.mktemp("run") / "whole"
    launch(2, out, common(base, out, *BATCH), module=True)
    return out


def test_killed_rank_then_resume_is_exact(base, uninterrupted, tmp_path):
    out = tmp_path / "crashed"
    proc = launch(2, out, common(base, out, *BATCH), worker_args=("--crash-at", "3"), check=False)
    assert proc.returncode != 0  # rank 1 died at step 3; torchrun stopped rank 0
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000002"
    ckpt = out / "checkpoints" / "step_000002"
    assert verify_checkpoint(ckpt)  # per-rank files are in the manifest too
    assert {p.name for p in ckpt.glob("rank_*.pt")} == {"rank_00000.pt", "rank_00001.pt"}
    assert json.loads((ckpt / "trainer_state.json").read_text())["world_size"] == 2

    launch(2, out, common(base, out, *BATCH), worker_args=("--resume",))
    r0, r1 = results(out, 2)
    final = load_file(uninterrupted / "checkpoints" / "step_000003" / "weights.safetensors")
    assert max_diff(final, r0["full"]) == 0.0 and max_diff(r0["own"], r1["own"]) == 0.0
    assert_same_metrics(metrics(uninterrupted), metrics(out), rel=0.0)


def test_resume_with_another_world_size_is_refused(uninterrupted, base, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(uninterrupted, out)
    cfg = load_config("demo", common(base, out, *BATCH, "max_steps=5"))
    with pytest.raises(ResumeError, match=r"written by 2 process\(es\) and this run has 1: resume with 2"):
        train(cfg, resume=True)
