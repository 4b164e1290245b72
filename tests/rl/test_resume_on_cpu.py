"""Resume checks the run (issue 12, items 3, 6, 9): changed configs, checksums, torn metrics, nothing to do."""

import errno
import json
import logging

import pytest
import torch

from blip3o_rl.rl.config import load_config
from blip3o_rl.rl.errors import CheckpointError, ResumeError
from blip3o_rl.rl.run import checkpoint as ckpt_mod
from blip3o_rl.rl.run.checkpoint import MANIFEST, load_checkpoint, save_checkpoint
from blip3o_rl.rl.run.resume import check_resume_config
from blip3o_rl.rl.trainer import GRPOTrainer, train

TINY = ["model.build.sft_steps=5", "grpo.batch_size=8", "grpo.num_generations=4", "grpo.micro_batch_size=8",
        "eval.eval_every=0", "logging.progress_bar=false", "logging.tensorboard=false", "logging.image_every=0"]


def _cfg(out, *extra):
    return load_config("demo", [f"output_dir={out}", "max_steps=4", "checkpoint.save_every=2",
                                "checkpoint.keep_last=5", *TINY, *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4 (copy it before changing anything)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(_cfg(out))
    return out


def _copy(run, tmp_path):
    import shutil

    dest = tmp_path / "run"
    shutil.copytree(run, dest)
    return dest


def test_a_changed_config_is_refused_listing_the_keys(finished, tmp_path):
    out = _copy(finished, tmp_path)
    before = (out / "config.yaml").read_text()
    # the reported case: batch size, seed, learning rate... all accepted, config.yaml rewritten
    with pytest.raises(ResumeError, match=r"(?s)grpo\.batch_size: 8 -> 16.*optim\.learning_rate: 0\.001 -> 0\.5.*"
                                          r"seed: 0 -> 3.*--allow-config-change grpo\.batch_size optim\.learning_rate seed"):
        train(_cfg(out, "max_steps=6", "grpo.batch_size=16", "optim.learning_rate=0.5", "seed=3"), resume=True)
    assert (out / "config.yaml").read_text() == before


def test_an_allowed_learning_rate_change_really_applies_and_is_recorded(finished, tmp_path):
    out = _copy(finished, tmp_path)
    trainer = GRPOTrainer(_cfg(out, "max_steps=6", "optim.learning_rate=0.5", "optim.weight_decay=0.1"))
    try:
        trainer.setup(resume=True, allow_config_change=["optim"])
        groups = trainer.optimizer.param_groups
        assert [g["lr"] for g in groups] == [0.5] * len(groups)  # not the checkpoint's 0.001
        assert [g["weight_decay"] for g in groups] == [0.1] * len(groups)
        assert trainer.scheduler.base_lrs == [0.5] * len(groups)
    finally:
        trainer.cleanup()
    [row] = [json.loads(x) for x in (out / "config_changes.jsonl").read_text().splitlines()]
    assert row["resumed_at_step"] == 4 and row["allowed"] == ["optim"]
    assert row["changes"]["optim.learning_rate"] == {"from": 0.001, "to": 0.5}
    assert row["changes"]["max_steps"] == {"from": 4, "to": 6}


def test_max_steps_that_moves_the_lr_horizon_is_a_change():
    saved = {"max_steps": 10, "optim": {"lr_scheduler_type": "cosine", "schedule_steps": None}}
    with pytest.raises(ResumeError, match=r"max_steps \(the LR schedule's horizon; keep it with optim\.schedule_steps=10\)"):
        check_resume_config(saved, {**saved, "max_steps": 20}, [], "saved")
    kept = {"max_steps": 20, "optim": {"lr_scheduler_type": "cosine", "schedule_steps": 10}}
    assert set(check_resume_config(saved, kept, [], "saved")) == {"max_steps", "optim.schedule_steps"}
    constant = {"max_steps": 10, "optim": {"lr_scheduler_type": "constant", "schedule_steps": None}}
    assert check_resume_config(constant, {**constant, "max_steps": 20}, [], "saved") == {"max_steps": (10, 20)}
    with pytest.raises(ResumeError, match="not a config key"):
        check_resume_config(constant, constant, ["optim.learnin_rate"], "saved")


def test_resume_with_nothing_left_to_train_says_so(finished, tmp_path):
    out = _copy(finished, tmp_path)
    with pytest.raises(ResumeError, match=r"is at step 4 and max_steps is 4: nothing to train; raise max_steps"):
        train(_cfg(out), resume=True)


def test_a_bit_flip_is_caught_naming_the_file_and_the_intact_previous_checkpoint(finished, tmp_path):
    out = _copy(finished, tmp_path)
    weights = out / "checkpoints/step_000004/weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x10  # one bit of one weight: loaded silently before (reward 0.82 -> 0.54)
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"step_000004/weights\.safetensors is corrupt"):
        load_checkpoint(weights.parent)
    with pytest.raises(CheckpointError, match=r"is corrupt.*pass --resume .*step_000002"):
        train(_cfg(out, "max_steps=6"), resume=True)
    # the fallback, on request: the intact step 2 (the corrupt step 4 is archived, not deleted)
    train(_cfg(out, "max_steps=6"), resume=str(out / "checkpoints/step_000002"))
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    assert list((out / "archive").glob("*/checkpoints/step_000004/weights.safetensors"))


def test_a_checkpoint_without_manifest_still_loads_with_one_warning(tmp_path, caplog):
    path = save_checkpoint(tmp_path, 1, {"w": torch.ones(2)}, {}, {}, {"step": 1})
    (path / MANIFEST).unlink()  # as written before checksums existed
    with caplog.at_level(logging.WARNING):
        ck = load_checkpoint(path)
    assert torch.equal(ck.weights["w"], torch.ones(2))
    assert "predates checksums" in caplog.text


def test_a_torn_metrics_line_is_repaired_on_resume(finished, tmp_path):
    out = _copy(finished, tmp_path)
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "reward/me')  # killed mid-write
    train(_cfg(out, "max_steps=5"), resume=True)
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]


def test_disk_full_while_saving_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    args = ({"w": torch.ones(2)}, {}, {}, {"step": 1})
    first = save_checkpoint(tmp_path, 1, *args)
    real = torch.save

    def full(obj, f, *a, **k):
        if str(f).endswith("optimizer.pt"):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real(obj, f, *a, **k)

    monkeypatch.setattr(ckpt_mod.torch, "save", full)
    with pytest.raises(CheckpointError, match=rf"no space left writing .*step_000002/optimizer\.pt; the previous "
                                              rf"checkpoint {first} is intact"):
        save_checkpoint(tmp_path, 2, *args)
    assert not list(tmp_path.glob(".step_*"))  # the partial folder is gone
    load_checkpoint(first)
