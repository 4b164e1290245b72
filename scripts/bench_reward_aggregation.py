"""Two conflicting rewards on the tiny world: a plain weighted sum against ``normalize_then_sum``.

    python -m blip3o_rl.scripts.bench_reward_aggregation [--steps 60] [--seed 0] [--out runs/bench_aggregation]

Both runs start from the same warm-started tiny world (the ``demo`` recipe) and train on the same two
prompt-blind rewards (`tiny/colour_reward.py`), equally weighted but in different units:

- ``red``: 10 x the fraction of red pixels (range [0, 10], like a preference score in its own units);
- ``blue``: the fraction of blue pixels (range [0, 1]).

A pixel cannot be both, so the rewards conflict. With ``grpo.reward_aggregation: sum`` the total
``red + blue`` is, within a group, almost only ``red``'s spread: the policy paints red and blue
collapses. With ``normalize_then_sum`` each reward is standardised within its group before the
weights apply, so both count and both rise. The table (per reward: mean of the first and last fifth
of the steps) goes to stdout and ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from blip3o_rl.rl.config import config_from_dict, config_to_dict, load_config
from blip3o_rl.rl.tracking import read_metrics
from blip3o_rl.rl.trainer import train

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
    fifth = max(1, len(rows) // 5)
    res: dict[str, Any] = {"aggregation": aggregation, "steps": len(rows)}
    for name in ("red", "blue"):
        vals = [m[f"reward/{name}/mean"] for m in rows]
        scale = 10.0 if name == "red" else 1.0  # report fractions of the image, comparable across rewards
        res[name] = {"first": sum(vals[:fifth]) / fifth / scale, "last": sum(vals[-fifth:]) / fifth / scale}
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench_aggregation"))
    args = p.parse_args(argv)
    results = []
    base = None
    for aggregation in ("sum", "normalize_then_sum"):
        out = args.out / aggregation
        results.append(run(aggregation, out, args.steps, args.seed, base))
        base = base or out / "base_model"
    print(f"{'aggregation':<20} {'red first':>10} {'red last':>10} {'blue first':>11} {'blue last':>10}"
          "   (fraction of pixels; mean of the first / last fifth of the steps)")
    for r in results:
        print(f"{r['aggregation']:<20} {r['red']['first']:>10.3f} {r['red']['last']:>10.3f} "
              f"{r['blue']['first']:>11.3f} {r['blue']['last']:>10.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
