"""scripts/slurm/train.sbatch, run for real on CPU: a fake 2-node SLURM (``scontrol`` naming the nodes,
``srun`` starting the script's command once per node with its ``SLURM_NODEID``) and 1 process per node
make one 2-process run (gloo, accelerate's static rendezvous), not two independent ones."""

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from blip3o_rl.tiny import make_tiny_world

from .distributed_helpers import REPO, TIMEOUT, common, env, metrics

pytestmark = pytest.mark.slow

FAKE_SCONTROL = """#!/bin/bash
# scontrol show hostnames NODELIST: every fake node is this machine
for _ in $(seq "$SLURM_NNODES"); do echo 127.0.0.1; done
"""
FAKE_SRUN = """#!/bin/bash
# srun [--options] CMD...: CMD once per node, in parallel, with SLURM_NODEID set; fails if any node fails
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_NODEID=$i "$@" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_sbatch_script_launches_one_run_over_the_nodes(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN)):
        (fake / name).write_text(text)
        (fake / name).chmod((fake / name).stat().st_mode | stat.S_IXUSR)
    base = make_tiny_world(tmp_path / "base_model", seed=0)
    out = tmp_path / "run"
    e = env()
    e.update(PATH=f"{fake}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{e['PATH']}",
             SLURM_JOB_NODELIST="node[1-2]", SLURM_NNODES="2", GPUS_PER_NODE="1", OMP_NUM_THREADS="1",
             ACCELERATE_CONFIG="configs/accelerate/ddp.yaml", MAIN_PORT=str(_free_port()))
    proc = subprocess.run(["bash", "scripts/slurm/train.sbatch", "demo", *common(base, out, "grpo.batch_size=8",
                                                                                 "max_steps=2")],
                          cwd=REPO, env=e, capture_output=True, text=True, timeout=TIMEOUT)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "nodes=2 main=127.0.0.1:" in log and "processes=2" in log
    state = json.loads((out / "checkpoints" / "step_000002" / "trainer_state.json").read_text())
    assert state["world_size"] == 2  # one run of 2 processes (two 1-process runs would each say 1)
    assert [m["step"] for m in metrics(out) if "loss" in m] == [1, 2]
