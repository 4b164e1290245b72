"""Two conflicting rewards on the tiny world: a plain weighted sum against ``normalize_then_sum_per_group``.

    python -m blip3o_rl.scripts.bench_reward_aggregation [--steps 60] [--seed 0] [--out runs/bench_aggregation]

Both runs start from the same warm-started tiny world (the ``demo`` recipe) and train on the same two
prompt-blind rewards (`tiny/colour_reward.py`), equally weighted but in different units:

- ``red``: 10 x the fraction of red pixels (range [0, 10], like a preference score in its own units);
- ``blue``: the fraction of blue pixels (range [0, 1]).

A pixel cannot be both, so the rewards conflict. With ``grpo.reward_aggregation: sum`` the total
``red + blue`` is, within a group, almost only ``red``'s spread: the policy paints red and blue
collapses. With ``normalize_then_sum_per_group`` each reward is standardised within its group before the
weights apply, so both count and both rise. The table (per reward, the mean over each window of 10
steps, as a fraction of the image) goes to stdout and ``<out>/results.json``.
"""

from __future__ import annotations

if not __package__:  # run as a file (python scripts/NAME.py): run it as the module it is
    from blip3o_rl.scripts import run_as_module

    run_as_module(__file__)

import argparse
import json
from pathlib import Path
from typing import Any

from ..rl.config import config_from_dict, config_to_dict, load_config
from ..rl.run.tracking import read_metrics
from ..rl.trainer import train

WINDOW = 10  # steps per row of the table
REWARDS = [
    {"reward": "tiny_colour", "name": "red", "weight": 1.0, "kwargs": {"colour": "red", "scale": 10.0}},
    {"reward": "tiny_colour", "name": "blue", "weight": 1.0, "kwargs": {"colour": "blue", "scale": 1.0}},
]


def run(aggregation: str, out: Path, steps: int, seed: int, base_model: Path | None) -> dict[str, Any]:
    """One tiny-world run with ``grpo.reward_aggregation=aggregation``; first/last-fifth means per reward."""
    data = config_to_dict(load_config("demo", [
        f"output_dir={out}", f"max_steps={steps}", f"seed={seed}", f"model.build.seed={seed}",
        "eval.eval_every=0", "logging.progress_bar=false", "logging.tensorboard=false", "logging.image_every=0",
        "checkpoint.save_final=false", "checkpoint.save_every=0",
    ]))
    data["rewards"] = REWARDS
    data["grpo"]["reward_aggregation"] = aggregation
    if base_model is not None:  # the same warm-started world for both runs
        data["model"]["name_or_path"], data["model"]["build"] = str(base_model), {}
    train(config_from_dict(data, source=f"bench_reward_aggregation ({aggregation})"))
    rows = [m for m in read_metrics(out / "metrics.jsonl") if m["step"] > 0]
    res: dict[str, Any] = {"aggregation": aggregation, "steps": len(rows), "curve": []}
    for start in range(0, len(rows), WINDOW):  # fractions of the image, comparable across the two rewards
        chunk = rows[start : start + WINDOW]
        res["curve"].append({"steps": f"{chunk[0]['step']}-{chunk[-1]['step']}",
                             "red": sum(m["reward/red/mean"] for m in chunk) / len(chunk) / 10.0,
                             "blue": sum(m["reward/blue/mean"] for m in chunk) / len(chunk)})
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench_aggregation"))
    args = p.parse_args(argv)
    results = []
    base = None
    for aggregation in ("sum", "normalize_then_sum_per_group"):
        out = args.out / aggregation
        results.append(run(aggregation, out, args.steps, args.seed, base))
        base = base or out / "base_model"
    print("fraction of red / blue pixels, mean over each window of steps")
    print(f"{'steps':<8}" + "".join(f"{r['aggregation'] + ' red':>24}{'blue':>7}" for r in results))
    for i, row in enumerate(results[0]["curve"]):
        print(f"{row['steps']:<8}" + "".join(f"{r['curve'][i]['red']:>24.3f}{r['curve'][i]['blue']:>7.3f}"
                                            for r in results))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
