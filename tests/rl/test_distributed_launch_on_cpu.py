"""Launch checks that need no second process: a world-size disagreement is refused, naming both."""

import subprocess
import sys

import pytest

from blip3o_rl.rl.parallel.distributed import LaunchError, check_world_size, resolve_strategy


class _OneProcess:  # what Accelerator(cpu=False) reports on each rank of a CPU-only torchrun launch
    num_processes = 1
    distributed_type = None


def test_launcher_and_trainer_world_sizes_must_agree(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(LaunchError, match=r"started 2 processes \(WORLD_SIZE=2\) but this process sees 1"):
        check_world_size(_OneProcess(), "ddp")  # type: ignore[arg-type]


def test_strategy_follows_the_accelerate_config(monkeypatch):
    for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(k, raising=False)
    assert resolve_strategy("auto") == "ddp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert resolve_strategy("auto") == "fsdp2"
    assert resolve_strategy("ddp") == "ddp"


def test_python_dash_m_blip3o_rl():
    out = subprocess.run([sys.executable, "-m", "blip3o_rl", "config", "demo", "distributed.strategy=fsdp2"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "strategy: fsdp2" in out.stdout
