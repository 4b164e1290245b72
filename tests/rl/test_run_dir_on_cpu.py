"""A run folder owns its run (issue 12, items 1-2): never silently replaced, one owner, safe pruning."""

import json
import os
import subprocess
import sys

import pytest

from blip3o_rl.rl.config import load_config
from blip3o_rl.rl.errors import RunDirError
from blip3o_rl.rl.run.checkpoint import checkpoints, latest_checkpoint, save_checkpoint
from blip3o_rl.rl.run.run_dir import RunLock, claim_output_folder, claim_run_dir
from blip3o_rl.rl.trainer import train

TINY = ["model.build.sft_steps=5", "grpo.batch_size=8", "grpo.num_generations=4", "grpo.micro_batch_size=8",
        "eval.eval_every=0", "logging.progress_bar=false", "logging.tensorboard=false", "logging.image_every=0"]


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_new_run_refuses_a_folder_holding_a_run_and_overwrite_moves_it_aside(tmp_path):
    out = tmp_path / "run"
    train(load_config("demo", [f"output_dir={out}", "max_steps=4", "checkpoint.save_every=2", *TINY]))
    before = (out / "metrics.jsonl").read_text()
    # the reported case: a second run without --resume replaced metrics.jsonl and pruned its own checkpoints
    with pytest.raises(RunDirError, match=r"already holds a run .*pass --resume to continue it, --overwrite"):
        train(load_config("demo", [f"output_dir={out}", "max_steps=2", *TINY]))
    assert (out / "metrics.jsonl").read_text() == before  # nothing touched
    assert [p.name for p in checkpoints(out / "checkpoints")] == ["step_000002", "step_000004"]

    train(load_config("demo", [f"output_dir={out}", "max_steps=2", *TINY]), overwrite=True)
    archived = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(archived) == 1
    assert (archived[0] / "metrics.jsonl").read_text() == before  # the old run, whole
    assert [p.name for p in checkpoints(archived[0] / "checkpoints")] == ["step_000002", "step_000004"]
    assert [m["step"] for m in _rows(out)] == [1, 2]
    assert latest_checkpoint(out / "checkpoints").name == "step_000002"
    assert not (out / ".lock").exists()  # released at the end


def test_pruning_never_removes_the_newest_whatever_the_names(tmp_path):
    root = tmp_path / "checkpoints"
    args = ({}, {}, {}, {"step": 0})
    for step in (100, 200):
        save_checkpoint(root, step, *args, keep_last=5)
    save_checkpoint(root, 120, *args, keep_last=1)  # a rollback: only steps older than 120 may go
    assert [p.name for p in checkpoints(root)] == ["step_000120", "step_000200"]
    assert latest_checkpoint(root).name == "step_000120"


def test_rolling_back_keeps_the_newer_checkpoints_in_an_archive(tmp_path):
    out = tmp_path / "run"
    train(load_config("demo", [f"output_dir={out}", "max_steps=6", "checkpoint.save_every=2",
                               "checkpoint.keep_last=5", *TINY]))
    # the reported case: --resume step_000002 checkpoint.keep_last=1 deleted steps 4 and 6
    train(load_config("demo", [f"output_dir={out}", "max_steps=6", "checkpoint.save_every=2",
                               "checkpoint.keep_last=1", *TINY]), resume="step_000002")
    [archive] = list((out / "archive").iterdir())
    assert [p.name for p in checkpoints(archive / "checkpoints")] == ["step_000004", "step_000006"]
    assert [m["step"] for m in (json.loads(x) for x in (archive / "metrics.jsonl").read_text().splitlines())] == [
        1, 2, 3, 4, 5, 6]
    assert [p.name for p in checkpoints(out / "checkpoints")] == ["step_000006"]
    assert [m["step"] for m in _rows(out)] == [1, 2, 3, 4, 5, 6]


def test_a_second_run_in_the_same_folder_is_refused_while_the_first_lives(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".lock").write_text(json.dumps({"pid": owner.pid, "host": os.uname().nodename,
                                                     "start": None, "since": "now"}))
        with pytest.raises(RunDirError, match=rf"in use by another run \(PID {owner.pid}"):
            claim_run_dir(tmp_path, resume=True, overwrite=False)
        with pytest.raises(RunDirError, match="in use"):  # --overwrite never moves a live run away
            train(load_config("demo", [f"output_dir={tmp_path}", "max_steps=1", *TINY]), overwrite=True)
    finally:
        owner.kill()
        owner.wait()
    # the owner is gone (kill -9): its lock is stale and taken over
    lock, _ = claim_run_dir(tmp_path, resume=True, overwrite=False)
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / ".lock").exists()


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "now"}))
    with pytest.raises(RunDirError, match=r"PID 1 on host elsewhere .* delete .*\.lock"):
        RunLock(tmp_path).acquire()


def test_output_folders_must_be_empty_or_overwritten(tmp_path):
    out = tmp_path / "gen"
    out.mkdir()
    (out / "stale.png").write_text("x")
    with pytest.raises(RunDirError, match=r"--out .* is not empty"):
        claim_output_folder(out, overwrite=False)
    moved = claim_output_folder(out, overwrite=True)
    assert (moved / "stale.png").is_file() and not out.exists()  # created when written
    (tmp_path / "file").write_text("")
    with pytest.raises(RunDirError, match="is a file"):
        claim_output_folder(tmp_path / "file", overwrite=False)
