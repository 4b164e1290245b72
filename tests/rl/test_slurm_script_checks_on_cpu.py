"""scripts/slurm/train.sbatch before its launch, with stand-ins for scontrol, srun and accelerate: a
20,000-name node list under ``pipefail`` (no SIGPIPE-able pipeline), and every failure before the launch
names what failed. Only bash runs (the launch itself is recorded, not run: test_slurm_script_on_cpu.py
runs a real 2-node launch)."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

from .distributed_helpers import REPO

NODES = 20_000
FAKE_SCONTROL = f"""#!/bin/bash
# scontrol show hostnames NODELIST: {NODES} names, written in full even if the reader stops early
[[ "$1 $2" == "show hostnames" ]] || exit 3
[[ -n "${{FAIL_SCONTROL:-}}" ]] && {{ echo "scontrol: error: Invalid node name" >&2; exit 1; }}
for ((i = 0; i < {NODES}; i++)); do printf 'node%05d\\n' "$i"; done
"""
FAKE_SRUN = """#!/bin/bash
# srun [--options] CMD...: records the command instead of running it
printf '%s\\n' "$@" > "$SRUN_RECORD"
"""
FAKE_ACCELERATE = """#!/bin/bash
echo "accelerate must not run in this test" >&2; exit 9
"""


def _run(tmp_path: Path, *args: str, **env_over: str) -> subprocess.CompletedProcess:
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN), ("accelerate", FAKE_ACCELERATE)):
        (fake / name).write_text(text)
        (fake / name).chmod((fake / name).stat().st_mode | stat.S_IXUSR)
    env = {"PATH": f"{fake}{os.pathsep}/usr/bin{os.pathsep}/bin", "SLURM_JOB_NODELIST": f"node[00000-{NODES - 1}]",
           "SLURM_NNODES": str(NODES), "SRUN_RECORD": str(tmp_path / "srun.txt"), "HOME": str(tmp_path)}
    env.update(env_over)
    env = {k: v for k, v in env.items() if v != "<unset>"}
    return subprocess.run(["bash", "scripts/slurm/train.sbatch", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_20000_node_list_launches_under_pipefail(tmp_path):
    for attempt in range(3):  # SIGPIPE was a race: repeat so a regression is likely to show
        proc = _run(tmp_path, "demo", "max_steps=2", "output_dir=/shared/runs/a b")
        assert proc.returncode == 0, (attempt, proc.returncode, proc.stderr[-2000:])
    assert f"nodes={NODES} main=node00000:29500 processes={NODES * 8}" in proc.stdout
    launched = (tmp_path / "srun.txt").read_text().splitlines()
    assert launched[0] == "--kill-on-bad-exit=1" and launched[1:3] == ["bash", "-c"]
    command = shlex.split(launched[3])
    assert command[:2] == ["accelerate", "launch"]
    assert command[command.index("--main_process_ip") + 1] == "node00000"
    assert command[command.index("--num_machines") + 1] == str(NODES)
    assert command[command.index("--machine_rank") + 1] == "$SLURM_NODEID"  # expanded on each node
    assert command[-6:] == ["-m", "blip3o_rl", "train", "demo", "max_steps=2", "output_dir=/shared/runs/a b"]


def test_every_failure_before_the_launch_says_what_failed(tmp_path):
    cases = {
        "no node list": ({"SLURM_JOB_NODELIST": "<unset>"}, ("demo",), "SLURM_JOB_NODELIST is not set"),
        "bad node count": ({"SLURM_NNODES": "two"}, ("demo",), "SLURM_NNODES is 'two', not a node count"),
        "no recipe": ({}, (), "no recipe given"),
        "missing config": ({"ACCELERATE_CONFIG": "configs/accelerate/nope.yaml"}, ("demo",),
                           "ACCELERATE_CONFIG configs/accelerate/nope.yaml: no such file"),
        "scontrol fails": ({"FAIL_SCONTROL": "1"}, ("demo",), "scontrol show hostnames 'node[00000-19999]' failed"),
        "bad GPU count": ({"GPUS_PER_NODE": "0"}, ("demo",), "GPUS_PER_NODE is '0', not a count"),
    }
    for name, (env, args, message) in cases.items():
        proc = _run(tmp_path, *args, **env)
        assert proc.returncode == 1, (name, proc.returncode, proc.stderr)
        assert message in proc.stderr, (name, proc.stderr)
        assert not (tmp_path / "srun.txt").exists(), name  # nothing launched
