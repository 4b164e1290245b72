"""GenEval metadata: the vocabulary (tags, 80 object names, colours, relations), validation and loading.

A GenEval metadata row is one JSON object::

    {"tag": "position",
     "include": [{"class": "kite", "count": 1},
                 {"class": "wine glass", "count": 1, "position": ["above", 0]}],
     "prompt": "a photo of a wine glass above a kite"}

``include`` clauses are required objects (``count`` at least, optional ``color``, optional
``position: [relation, index of an earlier include clause]``); ``exclude`` clauses (``class`` and
``count`` only) fail the image when the class has ``count`` or more detections. Extra top-level keys
are allowed (datasets carry ids); unknown keys inside a clause are errors, so a typo such as
``"colour"`` cannot be silently ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")

# GenEval's 80 object names, in COCO's category order (detector class index i is GENEVAL_OBJECTS[i]).
# Five differ from the COCO names: computer mouse (mouse), tv remote (remote), computer keyboard
# (keyboard), tv (tv/tvmonitor), hair drier.
GENEVAL_OBJECTS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote", "computer keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS = ("left of", "right of", "above", "below")

_OBJECTS = frozenset(GENEVAL_OBJECTS)
_INCLUDE_KEYS = {"class", "count", "color", "position"}
_EXCLUDE_KEYS = {"class", "count"}


class MetadataError(ValueError):
    """A GenEval metadata row that cannot be used; the message names file, line and field."""


def _where(source: str, line: int | None, field: str) -> str:
    place = f"{source}:{line}" if line is not None else source
    return f"{place}: field {field!r}" if field else place


def _check_count(value: Any, err) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise err(f"must be an integer >= 1, got {value!r}")


def _check_clause(clause: Any, field: str, index: int, kind: str, err_at) -> None:
    if not isinstance(clause, dict):
        raise err_at(field, f"must be an object, got {type(clause).__name__}")
    allowed = _INCLUDE_KEYS if kind == "include" else _EXCLUDE_KEYS
    for key in clause:
        if key not in allowed:
            raise err_at(f"{field}.{key}", f"unknown key in an {kind} clause (allowed: {sorted(allowed)})")
    for key in ("class", "count"):
        if key not in clause:
            raise err_at(f"{field}.{key}", "is missing")
    name = clause["class"]
    if name not in _OBJECTS:
        raise err_at(f"{field}.class", f"unknown class {name!r} (not one of GenEval's 80 object names)")
    _check_count(clause["count"], lambda msg: err_at(f"{field}.count", msg))
    if "color" in clause and clause["color"] not in COLORS:
        raise err_at(f"{field}.color", f"unknown colour {clause['color']!r} (one of {', '.join(COLORS)})")
    if "position" in clause:
        pos = clause["position"]
        if not isinstance(pos, (list, tuple)) or len(pos) != 2:
            raise err_at(f"{field}.position", f"must be [relation, clause index], got {pos!r}")
        relation, target = pos
        if relation not in RELATIONS:
            raise err_at(f"{field}.position[0]", f"unknown relation {relation!r} (one of {', '.join(RELATIONS)})")
        if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < index:
            raise err_at(
                f"{field}.position[1]",
                f"must be the index of an earlier include clause (0..{index - 1}), got {target!r}",
            )


def validate_metadata(row: Any, *, source: str = "<metadata>", line: int | None = None) -> dict[str, Any]:
    """Check one GenEval metadata row and return it; raise `MetadataError` naming source, line and field."""

    def err_at(field: str, msg: str) -> MetadataError:
        return MetadataError(f"{_where(source, line, field)} {msg}")

    if not isinstance(row, dict):
        raise MetadataError(f"{_where(source, line, '')}: a metadata row must be a JSON object, got {type(row).__name__}")
    if row.get("tag") not in TAGS:
        msg = "is missing" if "tag" not in row else f"unknown tag {row['tag']!r}"
        raise err_at("tag", f"{msg} (one of {', '.join(TAGS)})")
    if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
        raise err_at("prompt", "must be a non-empty string")
    include = row.get("include")
    if not isinstance(include, list) or not include:
        raise err_at("include", "must be a non-empty list of clauses")
    for i, clause in enumerate(include):
        _check_clause(clause, f"include[{i}]", i, "include", err_at)
    exclude = row.get("exclude", [])
    if not isinstance(exclude, list):
        raise err_at("exclude", "must be a list of clauses")
    for i, clause in enumerate(exclude):
        _check_clause(clause, f"exclude[{i}]", i, "exclude", err_at)
    return row


def iter_metadata_file(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, row)`` for every non-blank line of a GenEval JSONL file, validated."""
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        for lineno, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise MetadataError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            yield lineno, validate_metadata(row, source=str(path), line=lineno)


def load_metadata(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate a GenEval metadata JSONL file (one row per line, blank lines skipped)."""
    rows = [row for _, row in iter_metadata_file(path)]
    if not rows:
        raise MetadataError(f"{path}: no metadata rows")
    return rows

