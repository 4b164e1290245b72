"""Training prompts in GenEval's metadata format, for all six tasks, deduplicated against an evaluation set.

Each task has a finite space of distinct requirements over the object names (GenEval's 80 by
default; any subset of them with any subset of the colours, e.g. the tiny world's):

- ``single_object``: one object (80; all of them are in the official evaluation set);
- ``two_object``: an unordered pair of different objects;
- ``counting``: ``k`` objects of one class (``k`` in 2..``max_count``), with ``k + 1`` excluded;
- ``colors``: one object of one of the colours (no coloured "person");
- ``position``: object A in a relation to object B, where "A left of B" and "B right of A" (and
  "above"/"below") are the same requirement;
- ``color_attr``: two different objects with two different colours, as an unordered pair.

Two rows are duplicates when `canonical_key` says so: object order in an "and" and the phrasing of
a relation do not matter. The generator samples distinct keys per task uniformly without
replacement, skipping every key of the exclude rows, and picks a phrasing at random. When a task
has fewer distinct requirements left than asked for, it returns what there is. Plurals follow
English ("three benches", "two sheep"), unlike the evaluation set's automatic "benchs", "sheeps".
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from itertools import combinations
from typing import Any

from .metadata import COLORS, GENEVAL_OBJECTS, RELATIONS, TAGS

_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten"}
_IRREGULAR = {
    "person": "people",
    "sheep": "sheep",
    "knife": "knives",
    "skis": "skis",
    "scissors": "scissors",
    "computer mouse": "computer mice",
}


def with_article(words: str) -> str:
    return f"an {words}" if words[0] in "aeiou" else f"a {words}"


def plural(name: str) -> str:
    if name in _IRREGULAR:
        return _IRREGULAR[name]
    return f"{name}es" if name.endswith(("s", "sh", "ch", "x")) else f"{name}s"


def _clause_key(clause: dict[str, Any]) -> tuple:
    return (clause["class"], clause["count"], clause.get("color"))


def canonical_key(row: dict[str, Any]) -> tuple:
    """What a row requires, independent of object order in an "and" and of how a relation is phrased."""
    include = row["include"]
    exclude = tuple(sorted(_clause_key(c) for c in row.get("exclude", [])))
    positioned = [i for i, c in enumerate(include) if "position" in c]
    if len(include) == 2 and positioned == [1] and include[1]["position"][1] == 0:
        a, b = _clause_key(include[1]), _clause_key(include[0])
        relation = include[1]["position"][0]
        return (row["tag"], "relation", min((a, relation, b), (b, _INVERSE[relation], a)), exclude)
    if positioned:  # any other layout of position references: compare structurally
        structure = tuple((_clause_key(c), tuple(c.get("position", ()))) for c in include)
        return (row["tag"], "structure", structure, exclude)
    return (row["tag"], "set", tuple(sorted(_clause_key(c) for c in include)), exclude)


def _two_object(pair: tuple[str, str], rng: random.Random) -> dict[str, Any]:
    a, b = rng.sample(pair, 2)
    return {
        "tag": "two_object",
        "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
        "prompt": f"a photo of {with_article(a)} and {with_article(b)}",
    }


def _position(a: str, relation: str, b: str, rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.5:  # same requirement, the other phrasing
        a, relation, b = b, _INVERSE[relation], a
    return {
        "tag": "position",
        "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [relation, 0]}],
        "prompt": f"a photo of {with_article(a)} {relation} {with_article(b)}",
    }


def _color_attr(first: tuple[str, str], second: tuple[str, str], rng: random.Random) -> dict[str, Any]:
    (a, ca), (b, cb) = rng.sample([first, second], 2)
    return {
        "tag": "color_attr",
        "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
        "prompt": f"a photo of {with_article(ca)} {a} and {with_article(cb)} {b}",
    }


class TaskSpace:
    """The distinct requirements of one task, addressable by index so huge spaces are never listed."""

    def __init__(
        self, tag: str, max_count: int, objects: Sequence[str] = GENEVAL_OBJECTS, colours: Sequence[str] = COLORS
    ):
        self.tag = tag
        self.objects, self.colours = tuple(objects), tuple(colours)
        self.counts = list(range(2, max_count + 1))
        self.pairs = list(combinations(self.objects, 2))
        # Colour prompts leave out "person", as GenEval does (skin colour is not a colour attribute).
        self.colourable = tuple(name for name in self.objects if name != "person")
        self.colour_pairs = list(combinations(self.colourable, 2))
        self.ordered_colours = [(x, y) for x in self.colours for y in self.colours if x != y]

    def __len__(self) -> int:
        return {
            "single_object": len(self.objects),
            "two_object": len(self.pairs),
            "counting": len(self.objects) * len(self.counts),
            "colors": len(self.colourable) * len(self.colours),
            "position": len(self.pairs) * len(RELATIONS),
            "color_attr": len(self.colour_pairs) * len(self.ordered_colours),
        }[self.tag]

    def row(self, i: int, rng: random.Random) -> dict[str, Any]:
        if self.tag == "single_object":
            name = self.objects[i]
            return {"tag": self.tag, "include": [{"class": name, "count": 1}], "prompt": f"a photo of {with_article(name)}"}
        if self.tag == "two_object":
            return _two_object(self.pairs[i], rng)
        if self.tag == "counting":
            name, k = self.objects[i // len(self.counts)], self.counts[i % len(self.counts)]
            return {
                "tag": self.tag,
                "include": [{"class": name, "count": k}],
                "exclude": [{"class": name, "count": k + 1}],
                "prompt": f"a photo of {_NUMBERS[k]} {plural(name)}",
            }
        if self.tag == "colors":
            name, colour = self.colourable[i // len(self.colours)], self.colours[i % len(self.colours)]
            return {
                "tag": self.tag,
                "include": [{"class": name, "count": 1, "color": colour}],
                "prompt": f"a photo of {with_article(colour)} {name}",
            }
        if self.tag == "position":
            (a, b), relation = self.pairs[i // len(RELATIONS)], RELATIONS[i % len(RELATIONS)]
            return _position(a, relation, b, rng)
        (a, b), (ca, cb) = self.colour_pairs[i // len(self.ordered_colours)], self.ordered_colours[i % len(self.ordered_colours)]
        return _color_attr((a, ca), (b, cb), rng)


def generate_prompts(
    n_per_task: int,
    *,
    seed: int = 0,
    exclude: Iterable[dict[str, Any]] = (),
    tags: Sequence[str] = TAGS,
    max_count: int = 4,
    objects: Sequence[str] = GENEVAL_OBJECTS,
    colours: Sequence[str] = COLORS,
) -> list[dict[str, Any]]:
    """Up to ``n_per_task`` distinct GenEval rows per task in ``tags``, none sharing a `canonical_key` with ``exclude``.

    ``objects`` and ``colours`` restrict the vocabulary (GenEval names only). Deterministic for a
    given seed. Rows come grouped by task, in the order of ``tags``.
    """
    if n_per_task < 0:
        raise ValueError(f"n_per_task must be >= 0, got {n_per_task}")
    if not 2 <= max_count <= max(_NUMBERS):
        raise ValueError(f"max_count must be in 2..{max(_NUMBERS)}, got {max_count}")
    unknown = [t for t in tags if t not in TAGS]
    if unknown:
        raise ValueError(f"unknown tags {unknown} (known: {', '.join(TAGS)})")
    bad = [o for o in objects if o not in GENEVAL_OBJECTS] + [c for c in colours if c not in COLORS]
    if bad:
        raise ValueError(f"{bad}: not GenEval object or colour names")
    if len(set(objects)) != len(objects) or len(set(colours)) != len(colours):
        raise ValueError(f"objects and colours must not repeat, got {list(objects)} and {list(colours)}")
    excluded = {canonical_key(row) for row in exclude}
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for tag in tags:
        space = TaskSpace(tag, max_count, objects, colours)
        n_excluded = sum(key[0] == tag for key in excluded)
        # Sampling n + (number of excluded keys of this task) indices leaves at least n after dropping them.
        picked = rng.sample(range(len(space)), min(len(space), n_per_task + n_excluded))
        taken = 0
        for i in picked:
            if taken == n_per_task:
                break
            row = space.row(i, rng)
            if canonical_key(row) not in excluded:
                rows.append(row)
                taken += 1
    return rows


def split_prompts(
    eval_fraction: float,
    *,
    seed: int = 0,
    tags: Sequence[str] = TAGS,
    max_count: int = 4,
    objects: Sequence[str] = GENEVAL_OBJECTS,
    colours: Sequence[str] = COLORS,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every distinct requirement of a small vocabulary, split into (train, held-out eval) rows.

    Per task, ``eval_fraction`` of its requirements (rounded, at least one) go to the eval rows and
    all the others to the train rows; no train row shares a `canonical_key` with an eval row. Meant
    for small vocabularies (the tiny world): every requirement of every task is written out.
    """
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    train: list[dict[str, Any]] = []
    held_out: list[dict[str, Any]] = []
    for k, tag in enumerate(tags):
        size = len(TaskSpace(tag, max_count, objects, colours))
        if size < 2:
            raise ValueError(f"task {tag} has {size} requirement(s) over this vocabulary: too few to split")
        n_eval = min(size - 1, max(1, round(eval_fraction * size)))
        kwargs: dict[str, Any] = {"tags": [tag], "max_count": max_count, "objects": objects, "colours": colours}
        rows = generate_prompts(n_eval, seed=seed * 1000 + k, **kwargs)
        held_out += rows
        train += generate_prompts(size, seed=seed * 1000 + k, exclude=rows, **kwargs)
    return train, held_out
