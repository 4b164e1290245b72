"""Prompt sets of the tiny world (the files shipped in configs/data are made by `write_layout_prompts`)."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

NAMED_COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "cyan", "pink")


def layout_prompts(seed: int = 0, num_eval: int = 8) -> tuple[list[dict], list[dict]]:
    """All 56 "a X top and a Y bottom" prompts (X != Y), split into train and held-out eval rows."""
    rows = [
        {"prompt": f"a {top} top and a {bottom} bottom", "regions": {"top": top, "bottom": bottom}}
        for top, bottom in itertools.permutations(NAMED_COLOURS, 2)
    ]
    random.Random(seed).shuffle(rows)
    return rows[num_eval:], rows[:num_eval]


def write_layout_prompts(out_dir: str | Path, seed: int = 0) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, held_out = layout_prompts(seed)
    for name, rows in (("tiny_layout_train.jsonl", train), ("tiny_layout_eval.jsonl", held_out)):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def geneval_prompts(seed: int = 0, eval_fraction: float = 0.25) -> tuple[list[dict], list[dict]]:
    """GenEval metadata rows over the objects world's default classes and colours: (train, held-out eval)."""
    from blip3o_rl.policies.tiny.objects import DEFAULT_CLASSES, DEFAULT_COLOURS
    from blip3o_rl.rewards.geneval.prompts import split_prompts

    return split_prompts(eval_fraction, seed=seed, objects=list(DEFAULT_CLASSES), colours=DEFAULT_COLOURS)


def prompt_words(rows: list[dict]) -> list[str]:
    """The distinct words of the rows' prompts (give them to `make_tiny_world(extra_words=...)`)."""
    return sorted({w for r in rows for w in r["prompt"].lower().split()})


def write_geneval_prompts(out_dir: str | Path, seed: int = 0) -> None:
    """Write ``tiny_geneval_train.jsonl`` and ``tiny_geneval_eval.jsonl`` (the files in configs/data)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, held_out = geneval_prompts(seed)
    for name, rows in (("tiny_geneval_train.jsonl", train), ("tiny_geneval_eval.jsonl", held_out)):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
