"""``blip3o-rl bench step RECIPE [overrides]``: pipelined vs sequential GRPO steps in the same run.

Two trainers are built from the same recipe (the second reuses the first's base model), one with
``rollout.pipeline_rewards`` on (decode chunks of ``--chunk-size`` samples scored while the next one
decodes), one without. Pipelined and sequential steps compute the same thing, so both trainers follow
the same trajectory (same prompts, weights, images and rewards: checked at every step): each step is
a paired measurement of the same work. Steps alternate between the two (ABBA order, so load drift on
a shared machine hits both alike); the first ``--warmup`` steps are not counted.

Printed: per mode the median step time, images/s, the mean of each stage (rollout, decode, reward,
reward wait, update), and the share of reward time hidden behind other work
(``1 - Σ reward_wait / Σ reward``); then the median paired difference. ``--out FILE`` writes it all
as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

STAGES = ("rollout", "hidden_states", "decode", "reward", "reward_wait", "reference", "update", "step")


def _trainer(recipe: str, overrides: list[str]) -> Any:
    from ..rl.config import load_config
    from ..rl.trainer import GRPOTrainer

    trainer = GRPOTrainer(load_config(recipe, overrides))
    trainer.setup()
    return trainer


def run(recipe: str, overrides: list[str], steps: int, warmup: int, chunk_size: int | None, max_pending: int,
        out_dir: str) -> dict[str, Any]:
    from ..rl.config import load_config

    quiet = ["logging.progress_bar=false", "logging.tensorboard=false", "logging.image_every=0"]
    cfg = load_config(recipe, [*quiet, *overrides])
    g = cfg.grpo
    chunk = chunk_size or g.num_generations * max(1, g.batch_size // g.num_generations // 4)  # one process: whole groups
    out = Path(out_dir)
    modes = {
        "pipelined": ["rollout.pipeline_rewards=true", f"rollout.decode_chunk_size={chunk}",
                      f"rollout.max_pending_chunks={max_pending}"],
        "sequential": ["rollout.pipeline_rewards=false"],
    }
    trainers: dict[str, Any] = {}
    for name, extra in modes.items():
        shared = []
        if trainers and cfg.model.name_or_path is None:  # the same base model for both
            shared = [f"model.name_or_path={out / 'pipelined' / 'base_model'}", "model.build={}"]
        trainers[name] = _trainer(recipe, [*quiet, *overrides, f"output_dir={out / name}", *shared, *extra])
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    mismatches = 0
    try:
        for step in range(1, warmup + steps + 1):
            order = list(modes) if step % 2 else list(modes)[::-1]  # ABBA
            got = {m: trainers[m].step(step) for m in order}
            a, b = got["pipelined"], got["sequential"]
            same = a["reward/mean"] == b["reward/mean"] or (math.isnan(a["reward/mean"]) and math.isnan(b["reward/mean"]))
            mismatches += not same
            if step > warmup:
                for m in modes:
                    rows[m].append(got[m])
            print(f"step {step}{' (warm-up)' if step <= warmup else ''}: pipelined {a['time/step']:.3f} s, "
                  f"sequential {b['time/step']:.3f} s, reward/mean {a['reward/mean']:.4f} "
                  f"{'==' if same else '!='} {b['reward/mean']:.4f}", flush=True)
    finally:
        for t in trainers.values():
            t.cleanup()
    images = cfg.grpo.batch_size
    summary: dict[str, Any] = {"recipe": recipe, "overrides": overrides, "steps": steps, "warmup": warmup,
                               "decode_chunk_size": chunk, "max_pending_chunks": max_pending,
                               "images_per_step": images, "reward_mismatches": mismatches, "modes": {}}
    for m, ms in rows.items():
        stage = {s: statistics.fmean(r.get(f"time/{s}", 0.0) for r in ms) for s in STAGES}
        reward, wait = sum(r["time/reward"] for r in ms), sum(r["time/reward_wait"] for r in ms)
        median = statistics.median(r["time/step"] for r in ms)
        summary["modes"][m] = {"median_step_s": median, "images_per_s": images / median,
                               "mean_stage_s": stage, "reward_hidden_fraction": 1 - wait / reward if reward else 0.0}
    diffs = [s["time/step"] - p["time/step"] for p, s in zip(rows["pipelined"], rows["sequential"], strict=True)]
    summary["paired_step_diff_s"] = {"median": statistics.median(diffs), "mean": statistics.fmean(diffs),
                                     "pipelined_faster_in": sum(d > 0 for d in diffs), "of": len(diffs)}
    summary["speedup_median"] = (summary["modes"]["sequential"]["median_step_s"]
                                 / summary["modes"]["pipelined"]["median_step_s"])
    return summary


def report(summary: dict[str, Any]) -> str:
    lines = [f"{summary['recipe']}: {summary['steps']} steps per mode after {summary['warmup']} warm-up, "
             f"{summary['images_per_step']} images/step, decode chunks of {summary['decode_chunk_size']}",
             "| mode | step (median) | images/s | rollout | decode | reward | reward wait | update | reward hidden |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m, r in summary["modes"].items():
        st = r["mean_stage_s"]
        lines.append(f"| {m} | {r['median_step_s']:.3f} s | {r['images_per_s']:.1f} | {st['rollout']:.3f} | "
                     f"{st['decode']:.3f} | {st['reward']:.3f} | {st['reward_wait']:.3f} | {st['update']:.3f} | "
                     f"{100 * r['reward_hidden_fraction']:.1f}% |")
    d = summary["paired_step_diff_s"]
    lines.append(f"sequential - pipelined, paired by step: median {1000 * d['median']:.1f} ms, mean "
                 f"{1000 * d['mean']:.1f} ms; pipelined faster in {d['pipelined_faster_in']} of {d['of']} steps; "
                 f"speed-up (medians) {summary['speedup_median']:.3f}x; reward mismatches: "
                 f"{summary['reward_mismatches']}")
    return "\n".join(lines)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="a YAML path or a packaged recipe name (e.g. demo_ocr)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (engine warm-up)")
    p.add_argument("--chunk-size", type=int, help="samples per decode chunk (default: a quarter of the batch, "
                   "in whole groups)")
    p.add_argument("--max-pending", type=int, default=4, help="decoded chunks waiting for rewards at most")
    p.add_argument("--out-dir", default="runs/bench_step", help="run folders of the two trainers")
    p.add_argument("--out", help="write the summary as JSON here")


def main(args: argparse.Namespace) -> int:
    summary = run(args.recipe, args.overrides, args.steps, args.warmup, args.chunk_size, args.max_pending,
                  args.out_dir)
    print(report(summary))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
    return 0 if summary["reward_mismatches"] == 0 else 1
