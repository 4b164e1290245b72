"""The tiny world's GenEval task: prompts over the objects world, and images that satisfy them.

Prompts are GenEval metadata rows over the objects world's classes and colours (all six tasks);
`write_geneval_prompts` writes the train / held-out files shipped in ``configs/data``.
`geneval_target_codes` draws an image the official GenEval verdict accepts, for the supervised warm
start (``model.build.sft_targets: geneval``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..rewards.geneval.rules import relative_position
from ..rl.data import write_prompt_splits
from .objects import DEFAULT_CLASSES, DEFAULT_COLOURS, object_code


def geneval_prompts(seed: int = 0, eval_fraction: float = 0.25) -> tuple[list[dict], list[dict]]:
    """GenEval rows over the objects world's default classes and colours: (train, held-out eval).

    Every distinct requirement of each task is written out; ``eval_fraction`` of each task's
    requirements are held out (no train row shares one with an eval row).
    """
    from ..rewards.geneval.prompts import split_prompts

    return split_prompts(eval_fraction, seed=seed, objects=[n for n, _ in DEFAULT_CLASSES], colours=DEFAULT_COLOURS)


def prompt_words(rows: list[dict]) -> list[str]:
    """The distinct words of the rows' prompts (for ``model.build.extra_words``)."""
    return sorted({w for r in rows for w in r["prompt"].lower().split()})


def write_geneval_prompts(out_dir: str | Path, seed: int = 0) -> None:
    """Write ``tiny_geneval_train.jsonl`` and ``tiny_geneval_eval.jsonl`` (the files in configs/data)."""
    write_prompt_splits(out_dir, "tiny_geneval", *geneval_prompts(seed))


def _box(tile: int, grid: int) -> list[int]:
    row, col = divmod(tile, grid)
    return [col, row, col + 1, row + 1]


def _place(clauses: list[dict], grid: int, taken: dict[int, int], placed: list[list[int]]) -> bool:
    """Depth-first: give each remaining clause ``count`` free tiles, earliest (row-major) first."""
    if len(placed) == len(clauses):
        return True
    clause = clauses[len(placed)]

    def fits(tile: int) -> bool:
        if tile in taken:
            return False
        if "position" not in clause:
            return True
        relation, target = clause["position"]
        return all(relation in relative_position(_box(tile, grid), _box(t, grid)) for t in placed[target])

    def fill(start: int, tiles: list[int]) -> bool:
        if len(tiles) == clause["count"]:
            placed.append(tiles)
            if _place(clauses, grid, taken, placed):
                return True
            placed.pop()
            return False
        for tile in range(start, grid * grid):
            if fits(tile):
                taken[tile] = len(placed)
                if fill(tile + 1, [*tiles, tile]):
                    return True
                del taken[tile]
        return False

    return fill(0, [])


def geneval_target_codes(metadata: dict, shape: tuple[int, int]) -> torch.Tensor:
    """Codes ``[rows * cols]`` (row-major) of an objects-world image that GenEval scores correct.

    ``metadata`` is the prompt file's GenEval row; ``shape`` the (square) grid ``(rows, cols)``.

    Exactly ``count`` objects per include clause, in the clause's colour (a class's own default
    colour when none is asked), packed as early as possible in row-major order (the order the
    policy writes tiles) subject to every position relation; the other tiles are empty. Uses the
    default objects world (`DEFAULT_CLASSES`, `DEFAULT_COLOURS`); ValueError when the row needs
    anything else or cannot fit on the grid.
    """
    if shape[0] != shape[1]:
        raise ValueError(f"the objects world is square; got a {shape[0]}x{shape[1]} grid")
    grid = shape[0]
    classes, colours = [n for n, _ in DEFAULT_CLASSES], list(DEFAULT_COLOURS)
    codes = []
    for clause in metadata["include"]:
        name = clause["class"]
        own_colour = colours[classes.index(name) % len(colours)] if name in classes else ""
        codes.append(object_code(classes, colours, name, clause.get("color") or own_colour))
    placed: list[list[int]] = []
    if not _place(metadata["include"], grid, {}, placed):
        raise ValueError(f"no room on a {grid}x{grid} grid for {metadata.get('prompt', metadata)!r}")
    image = [0] * (grid * grid)
    for code, tiles in zip(codes, placed, strict=True):
        for tile in tiles:
            image[tile] = code
    return torch.tensor(image, dtype=torch.long)
