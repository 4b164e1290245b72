"""The tiny world's GenEval task: prompts over the objects world, and images that satisfy them.

Prompts are GenEval metadata rows over the objects world's classes and colours (all six tasks);
`write_geneval_prompts` writes the train / held-out files shipped in ``configs/data``.
`geneval_target_codes` draws an image the official GenEval verdict accepts, for the supervised warm
start (``model.tiny_world.sft_targets: geneval``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from blip3o_rl.policies.tiny.objects import DEFAULT_CLASSES, DEFAULT_COLOURS, object_code
from blip3o_rl.rewards.geneval.rules import relative_position


def geneval_prompts(seed: int = 0, eval_fraction: float = 0.25) -> tuple[list[dict], list[dict]]:
    """GenEval rows over the objects world's default classes and colours: (train, held-out eval).

    Every distinct requirement of each task is written out; ``eval_fraction`` of each task's
    requirements are held out (no train row shares one with an eval row).
    """
    from blip3o_rl.rewards.geneval.prompts import split_prompts

    return split_prompts(eval_fraction, seed=seed, objects=list(DEFAULT_CLASSES), colours=DEFAULT_COLOURS)


def prompt_words(rows: list[dict]) -> list[str]:
    """The distinct words of the rows' prompts (for ``model.tiny_world.extra_words``)."""
    return sorted({w for r in rows for w in r["prompt"].lower().split()})


def write_geneval_prompts(out_dir: str | Path, seed: int = 0) -> None:
    """Write ``tiny_geneval_train.jsonl`` and ``tiny_geneval_eval.jsonl`` (the files in configs/data)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, held_out = geneval_prompts(seed)
    for name, rows in (("tiny_geneval_train.jsonl", train), ("tiny_geneval_eval.jsonl", held_out)):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _box(tile: int, grid: int) -> list[int]:
    row, col = divmod(tile, grid)
    return [col, row, col + 1, row + 1]


def geneval_target_codes(metadata: dict, grid: int) -> torch.Tensor:
    """Codes ``[grid * grid]`` (row-major) of an objects-world image that GenEval scores correct.

    Include clauses are drawn in order, exactly ``count`` objects each, in the clause's colour (a
    class's own default colour when none is asked): unpositioned objects take free tiles from the
    centre outwards; a positioned object takes the first free tile (row-major) in the relation to
    every object of its target clause. Uses the default objects world (`DEFAULT_CLASSES`,
    `DEFAULT_COLOURS`); ValueError when the row needs anything else or cannot fit.
    """
    centre = (grid // 2) * grid + grid // 2
    order = [centre, *(t for t in range(grid * grid) if t != centre)]
    codes = [0] * (grid * grid)
    placed: list[list[int]] = []
    for clause in metadata["include"]:
        name, classes = clause["class"], list(DEFAULT_CLASSES)
        own_colour = DEFAULT_COLOURS[classes.index(name) % len(DEFAULT_COLOURS)] if name in classes else ""
        code = object_code(classes, list(DEFAULT_COLOURS), name, clause.get("color") or own_colour)
        tiles: list[int] = []
        for _ in range(clause["count"]):
            free = [t for t in order if codes[t] == 0]
            if "position" in clause:
                relation, target = clause["position"]
                free = [t for t in sorted(free)
                        if all(relation in relative_position(_box(t, grid), _box(u, grid)) for u in placed[target])]
            if not free:
                raise ValueError(f"no room on a {grid}x{grid} grid for {metadata.get('prompt', metadata)!r}")
            codes[free[0]] = code
            tiles.append(free[0])
        placed.append(tiles)
    return torch.tensor(codes, dtype=torch.long)
