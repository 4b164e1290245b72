"""Run safety at the command line (issue 12): errors not tracebacks, options checked first, signals, logs."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from blip3o_rl.scripts.cli import main

COMMAND = [sys.executable, "-m", "blip3o_rl.scripts.cli"]

FAST = ["model.build.sft_steps=5", "grpo.batch_size=8", "grpo.num_generations=4", "grpo.micro_batch_size=8",
        "eval.eval_every=0", "logging.tensorboard=false", "logging.image_every=0"]


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_common_mistakes_are_one_error_line(capsys, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a red image\n\xff\xfe latin-1\n")
    assert "not UTF-8 text" in _error(capsys, ["train", "demo", f"data.train_file={bad}", f"output_dir={tmp_path}/a"])
    assert "override 'optim.adam_beta1=2'" in _error(capsys, ["config", "demo", "optim.adam_beta1=2"])
    assert "model.lora_r: must be >= 1" in _error(capsys, ["train", "demo", "model.lora_r=0"])
    assert "unknown policy 'tinyy'" in _error(capsys, ["config", "demo", "model.policy=tinyy"])  # config = train
    dup = tmp_path / "dup.yaml"
    dup.write_text("max_steps: 3\nmax_steps: 4\n")
    assert "line 2: duplicate key 'max_steps'" in _error(capsys, ["config", str(dup)])
    # --resume never takes an override for a checkpoint path
    assert "no checkpoint under" in _error(capsys, ["train", "demo", "--resume", "max_steps=200",
                                                    f"output_dir={tmp_path}/b"])
    with pytest.raises(Exception, match="must be >= 1"):  # --debug: the traceback
        main(["train", "demo", "model.lora_r=0", "--debug"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--temperature", "-1"], "--temperature must be > 0"),  # sampled from the inverted distribution
        (["--top-p", "0"], r"--top-p must be in (0, 1]"),  # silently greedy
        (["--top-k", "-3"], "--top-k must be >= 0"),
    ],
)
def test_generate_checks_sampling_options_before_loading(capsys, tmp_path, options, message):
    err = _error(capsys, ["generate", "--model", str(tmp_path / "not_loaded"), "--policy", "tiny", "--prompt", "x",
                          "--out", str(tmp_path / "o"), *options])
    assert message in err


def test_generate_checks_out_first_and_never_mixes_old_files(capsys, tmp_path, tiny_world_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.png").write_text("from an earlier run")
    argv = ["generate", "--model", str(tiny_world_dir), "--policy", "tiny", "--prompt", "a red image", "--out", str(out)]
    assert "is not empty" in _error(capsys, argv)
    (tmp_path / "file").write_text("")
    assert "is a file" in _error(capsys, [*argv[:-1], str(tmp_path / "file")])
    assert main([*argv, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000_00.png", "images.jsonl"]
    [moved] = tmp_path.glob("out.old-*")
    assert (moved / "stale.png").is_file()


def test_data_geneval_refuses_an_existing_out_unless_overwrite(capsys, tmp_path):
    out = tmp_path / "p.jsonl"
    out.write_text("keep me\n")
    assert "exists" in _error(capsys, ["data", "geneval", "--out", str(out), "--n", "2"])
    assert out.read_text() == "keep me\n"
    assert main(["data", "geneval", "--out", str(out), "--n", "2", "--overwrite"]) == 0
    assert out.read_text() != "keep me\n"


SLOW_REWARD = '''
import time
from blip3o_rl.tiny.layout_reward import TinyLayoutReward
_inner = TinyLayoutReward()
def reward(images, prompts, metadata):
    time.sleep(0.2)  # slow enough to be signalled mid-run
    return _inner(images, prompts, metadata)
'''


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _start(args, cwd):
    return subprocess.Popen([*COMMAND, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)


def _signal_after_rows(proc, out, sig, rows=2):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) >= rows:
            proc.send_signal(sig)
            break
        time.sleep(0.05)
    return proc.communicate(timeout=120)


def test_sigterm_saves_exits_nonzero_and_resume_matches_an_uninterrupted_run(cli, tmp_path):
    f = tmp_path / "slow.py"
    f.write_text(SLOW_REWARD)
    args = ["train", "demo", *FAST, "max_steps=6", "checkpoint.save_every=0", f"rewards=[{{reward: '{f}:reward'}}]"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    proc = _start([*args, f"output_dir={out}"], tmp_path)
    uninterrupted = _start([*args, f"output_dir={ref}"], tmp_path)
    _, err = _signal_after_rows(proc, out, signal.SIGTERM)
    assert uninterrupted.wait(timeout=300) == 0
    assert proc.returncode == 128 + signal.SIGTERM, err
    stopped = len(_rows(out))
    assert stopped < 6 and f"stopped by SIGTERM after step {stopped}; checkpoint saved" in err, err
    assert "Traceback" not in err
    assert (out / f"checkpoints/step_{stopped:06d}/manifest.json").is_file()

    r = cli(*args, f"output_dir={out}", "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    a, b = (load_file(d / "checkpoints/step_000006/weights.safetensors") for d in (ref, out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def comparable(d):
        return [{k: v for k, v in m.items() if not k.startswith("time/")} for m in _rows(d)]

    assert comparable(out) == comparable(ref)


def test_ctrl_c_saves_too_and_logs_are_lines_off_a_terminal(tmp_path):
    f = tmp_path / "slow.py"
    f.write_text(SLOW_REWARD)
    out = tmp_path / "run"
    proc = _start(["train", "demo", *FAST, "max_steps=20", "logging.log_every=1", f"output_dir={out}",
                   f"rewards=[{{reward: '{f}:reward'}}]"], tmp_path)
    stdout, err = _signal_after_rows(proc, out, signal.SIGINT)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "KeyboardInterrupt" not in err and "Traceback" not in err
    assert "received SIGINT: finishing the current step" in err
    stopped = len(_rows(out))
    assert (out / f"checkpoints/step_{stopped:06d}").is_dir()
    # not a terminal: one line per logged step, no bar redraws, no transformers bars
    lines = [x for x in stdout.splitlines() if x.startswith("step ")]
    assert [x.split()[1] for x in lines] == [f"{s}/20" for s in range(1, stopped + 1)]
    assert "reward" in lines[0] and "s/step" in lines[0]
    assert "\r" not in err + stdout and "it/s" not in err and "Writing model shards" not in err


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() == 0, reason="root can write anywhere")
def test_an_unwritable_out_is_refused_before_loading(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        err = _error(capsys, ["generate", "--model", str(tmp_path / "x"), "--prompt", "p", "--out", str(ro / "o")])
        assert "not writable" in err
    finally:
        ro.chmod(0o700)
