"""Launching real multi-process runs of the tiny world on CPU (gloo) from the tests.

Every run trains the same random tiny world (`base_model`) for a few steps; a 1-process run with the
global batch is the reference. Each launch is bounded by ``TIMEOUT`` seconds.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("dist_worker.py")
BIN = Path(sys.executable).parent
TIMEOUT = 420  # seconds per launch (a DeepSpeed launch compiles its shared-memory op once: ~80-200 s)
GLOBAL_BATCH = 16  # 4 prompts x G=4 per step; 2 processes hold 8 samples (2 whole groups) each

# one step moves parameters by ~1e-3..1e-2 here; 1 vs 2 processes agree to float reduction order
TOLERANCE = 1e-5


def common(base: Path, out: Path, *extra: str) -> list[str]:
    return [f"output_dir={out}", f"model.name_or_path={base}", "model.build={}", "max_steps=3",
            "grpo.num_generations=4", "grpo.micro_batch_size=8", "eval.eval_every=2", "eval.num_prompts=4",
            "logging.image_every=0", "logging.tensorboard=false", "logging.progress_bar=false",
            "checkpoint.save_every=1", "checkpoint.keep_last=0", "optim.learning_rate=3e-3", *extra]


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE", "RANK", "LOCAL_"))}
    e.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    return e


def launch(nproc: int, out: Path, overrides: list[str], *, launcher: str = "torchrun",
           accelerate_config: str | None = None, worker_args: tuple[str, ...] = (),
           module: bool = False, check: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --standalone`` (or ``accelerate launch --config_file``) of the worker (or, with ``module``,
    of ``-m blip3o_rl train demo``) on ``nproc`` CPU processes; the output goes to ``out.log``."""
    out.mkdir(parents=True, exist_ok=True)
    target = ["-m", "blip3o_rl", "train", "demo"] if module else [str(WORKER), str(out), *worker_args]
    if launcher == "torchrun":
        cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(nproc), *target]
    else:
        cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(REPO / "configs" / "accelerate" / accelerate_config),
               "--num_processes", str(nproc), "--main_process_port", "0", *target]
    if module and launcher != "torchrun":
        cmd[cmd.index("-m"):cmd.index("-m") + 2] = ["-m", "blip3o_rl"]
    proc = subprocess.run([*cmd, *overrides], env=env(), cwd=out.parent, capture_output=True, text=True, timeout=TIMEOUT)
    Path(f"{out}.log").write_text(proc.stdout + proc.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"launch failed ({proc.returncode}); log {out}.log:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return proc


def results(out: Path, nproc: int) -> list[dict]:
    rs = [torch.load(out / f"result_rank{r}.pt", weights_only=True) for r in range(nproc)]
    for r, res in enumerate(rs):  # asserted inside every process: launcher, accelerate and the process group agree
        assert (res["rank"], res["world"], res["env_world"], res["pg_world"]) == (r, nproc, nproc, nproc)
    return rs


def assert_skipped(out: Path, grad_at: int, loss_at: int | None = None) -> None:
    """A run of the worker with ``--nonfinite-grad-at`` (and ``--nonfinite-loss-at``), a checkpoint per step:
    each such step's update was skipped on every rank (its weights are the step before's exactly, its
    metrics say why, each rank's guard counted it), the step after trained, and every weight is finite."""
    from safetensors.torch import load_file

    bad = [grad_at] if loss_at is None else [grad_at, loss_at]
    ranks = results(out, 2)
    assert [r["skipped"] for r in ranks] == [len(bad), len(bad)]
    rows = {m["step"]: m for m in metrics(out)}
    assert rows[grad_at]["update/skipped_nonfinite"] == 1.0 and not math.isfinite(rows[grad_at]["grad_norm"])
    assert math.isfinite(rows[grad_at]["loss"])  # only the gradient norm could tell
    if loss_at is not None:
        assert rows[loss_at]["update/skipped_nonfinite"] == 1.0 and math.isfinite(rows[loss_at]["grad_norm"])
        assert math.isnan(rows[loss_at]["loss"])
    last = max(bad) + 1
    assert rows[last]["update/skipped_nonfinite"] == 0.0
    w = {s: load_file(out / "checkpoints" / f"step_{s:06d}" / "weights.safetensors") for s in range(min(bad) - 1, last + 1)}
    for s in bad:
        assert max_diff(w[s - 1], w[s]) == 0.0, s  # nothing reached the weights
    assert max_diff(w[last - 1], w[last]) > 0.0  # the next update trained
    for state in (*w.values(), ranks[0]["full"], ranks[0]["own"], ranks[1]["own"]):
        assert all(torch.isfinite(v.float()).all() for v in state.values())


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def comparable(rows: list[dict]) -> list[dict]:
    """Metric rows without wall-clock times."""
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def assert_same_metrics(a: list[dict], b: list[dict], rel: float = 1e-4) -> None:
    a, b = comparable(a), comparable(b)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys(), (ra.keys() ^ rb.keys())
        for k in ra:
            x, y = ra[k], rb[k]
            if isinstance(x, float) and x != x:
                assert y != y, k
            else:
                assert abs(x - y) <= rel * max(1.0, abs(x)), (ra["step"], k, x, y)
