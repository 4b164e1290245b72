"""GenEval's rules on detector output: the official verdict and two partial-credit rewards.

`evaluate_detections(metadata, detections)` is pure: it takes raw detector output (pixel boxes, any
score) and applies everything GenEval applies after the detector:

1. **Keep** (`keep_detections`): per class, detections scoring *strictly* above 0.3 (0.9 when the
   tag is ``counting``), highest score first (stable for ties), at most 16 per class. No NMS.
2. **Official verdict** (``correct``), include clauses in order: fewer than ``count`` kept objects
   fails; otherwise only the top ``count`` are looked at; a required colour must hold for all of
   them; a required position (checked only when the clause has not failed yet) fails when the
   referenced clause failed, or when any (object, target object) pair lacks the relation. A passing
   clause records its objects for later references; a failing one records nothing. An exclude
   clause fails when its class has ``count`` or more kept objects.
3. **Reference partial credit** (``partial``): the training reward exactly as the reference GenEval
   reward server (used by Flow-GRPO and BLIP3o-NEXT) computes it, quirks included:

   - it counts *all* kept objects of a class (up to 16), not the top ``count``, and requires
     exactly ``count`` of them (``strict_correct`` below);
   - the count term ``1 - |count - n| / count`` goes negative when ``n > 2 * count`` (down to -14
     for count 1 and 16 detections);
   - a clause with the wrong number of objects adds a single 0 even when it needs both a colour
     and a position;
   - a clause whose colour check failed adds no position term at all;
   - after the position pairs are checked a 1.0 is always added, also when a pair failed (which
     already added a 0), so a failed relation still earns 0.5 for that step;
   - exclude clauses are ignored.

   The reward is the mean of the terms, so it lies in [-14, 1].
4. **Bounded partial credit** (``bounded``): the same idea without the quirks, built on the
   official rules so that ``bounded == 1`` exactly when ``correct`` is true; every term is in
   [0, 1]. Per include clause: ``min(n, count) / count`` over the top ``count``; if a colour is
   required, the fraction of those objects with the colour (0 when too few objects); if a position
   is required, the fraction of (object, target) pairs in the relation (0 when the clause or its
   target already failed). Per exclude clause: 1 if satisfied, else 0.

``strict_correct`` is the verdict the reference reward server reports next to ``partial`` (exact
counts, exclude ignored). Colours come with the detections (``"color"``); only the detections
`colour_targets` names need one, a missing one there is an error.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from .metadata import COLORS, GENEVAL_OBJECTS, validate_metadata

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
POSITION_THRESHOLD = 0.1

Detection = dict[str, Any]
_OBJECTS = frozenset(GENEVAL_OBJECTS)


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value)


def check_detections(detections: Sequence[Detection]) -> None:
    """Raise ValueError naming the detection index and field of the first malformed detection."""
    for i, det in enumerate(detections):
        if not isinstance(det, dict):
            raise ValueError(f"detection {i}: must be a dict, got {type(det).__name__}")
        if det.get("class") not in _OBJECTS:
            raise ValueError(f"detection {i}: field 'class' {det.get('class')!r} is not one of GenEval's 80 names")
        if not _is_number(det.get("score")):
            raise ValueError(f"detection {i}: field 'score' must be a finite number, got {det.get('score')!r}")
        box = det.get("box")
        if not isinstance(box, (list, tuple, np.ndarray)) or len(box) != 4 or not all(_is_number(v) for v in box):
            raise ValueError(f"detection {i}: field 'box' must be 4 finite numbers [x0, y0, x1, y1], got {box!r}")
        if box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"detection {i}: field 'box' has x1 < x0 or y1 < y0: {list(box)}")
        if det.get("color") is not None and det["color"] not in COLORS:
            raise ValueError(f"detection {i}: field 'color' {det['color']!r} is not one of {', '.join(COLORS)}")


def keep_detections(
    metadata: dict[str, Any],
    detections: Sequence[Detection],
    *,
    threshold: float = THRESHOLD,
    counting_threshold: float = COUNTING_THRESHOLD,
    max_objects: int = MAX_OBJECTS,
) -> dict[str, list[Detection]]:
    """Class name -> kept detections: score strictly above the tag's threshold, best first, at most 16.

    Ties keep their input order (the reference's argsort leaves tie order unspecified).
    """
    cut = counting_threshold if metadata["tag"] == "counting" else threshold
    by_class: dict[str, list[Detection]] = defaultdict(list)
    for det in detections:
        if det["score"] > cut:
            by_class[det["class"]].append(det)
    return {name: sorted(dets, key=lambda d: -d["score"])[:max_objects] for name, dets in by_class.items()}


def colour_targets(metadata: dict[str, Any], kept: dict[str, list[Detection]]) -> list[Detection]:
    """The kept detections whose colour the verdict and rewards need: the top ``count`` of each colour clause.

    Clauses with fewer than ``count`` objects need none (they fail before the colour check).
    """
    targets: dict[int, Detection] = {}
    for clause in metadata["include"]:
        objects = kept.get(clause["class"], [])
        if "color" in clause and len(objects) >= clause["count"]:
            for det in objects[: clause["count"]]:
                targets[id(det)] = det
    return list(targets.values())


def relative_position(box_a: Sequence[float], box_b: Sequence[float]) -> set[str]:
    """Relations of box A to box B ("left of", "right of", "above", "below"; several can hold, or none).

    The centre offset is shrunk per axis by 0.1 x (size A + size B) (floored at 0, sign kept); no
    relation when every shrunk component is below 1e-3; otherwise the shrunk offset divided by the
    length of the *unshrunk* offset must pass +-0.5. Computed in float32 like the reference, whose
    boxes are float32 arrays, so edge cases round the same way.
    """
    a = np.asarray(box_a[:4], dtype=np.float32)
    b = np.asarray(box_b[:4], dtype=np.float32)
    offset = (a[:2] + a[2:]) / np.float32(2) - (b[:2] + b[2:]) / np.float32(2)
    margin = np.float32(POSITION_THRESHOLD) * (np.abs(a[2:] - a[:2]) + np.abs(b[2:] - b[:2]))
    revised = np.maximum(np.abs(offset) - margin, np.float32(0)) * np.sign(offset)
    if np.all(np.abs(revised) < np.float32(1e-3)):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def _colours(objects: Sequence[Detection], clause: dict[str, Any]) -> list[str]:
    colours = []
    for det in objects:
        if det.get("color") is None:
            raise ValueError(
                f"detection of {det['class']!r} (score {det['score']:.3f}) needs a colour for the clause "
                f"{clause}: classify colour_targets(...) first"
            )
        colours.append(det["color"])
    return colours


def _pair_relations(objects: Sequence[Detection], targets: Sequence[Detection]) -> list[set[str]]:
    """Relations of every (object, target) pair, objects outer, targets inner."""
    return [relative_position(obj["box"], tgt["box"]) for obj in objects for tgt in targets]


def _colour_reason(clause: dict[str, Any], colours: list[str]) -> str:
    want, name, count = clause["color"], clause["class"], clause["count"]
    seen = ", ".join(f"{colours.count(c)} {c}" for c in COLORS if c in colours)
    return f"expected {want} {name}>={count}, found {colours.count(want)} {want}; and {seen}"


def _position_reason(name: str, relation: str, found: set[str]) -> str:
    found_text = " and ".join(sorted(found)) if found else "no relation to"
    return f"expected {name} {relation} target, found {found_text} target"


def official_verdict(metadata: dict[str, Any], kept: dict[str, list[Detection]]) -> tuple[bool, list[str]]:
    """GenEval's verdict on kept detections: (correct, reasons why not)."""
    reasons: list[str] = []
    groups: list[list[Detection] | None] = []
    for clause in metadata["include"]:
        name, count = clause["class"], clause["count"]
        objects = kept.get(name, [])[:count]
        ok = True
        if len(objects) < count:
            ok = False
            reasons.append(f"expected {name}>={count}, found {len(objects)}")
        else:
            if "color" in clause:
                colours = _colours(objects, clause)
                if colours.count(clause["color"]) < count:
                    ok = False
                    reasons.append(_colour_reason(clause, colours))
            if "position" in clause and ok:
                relation, target = clause["position"]
                if groups[target] is None:
                    ok = False
                    reasons.append(f"no target for {name} to be {relation}")
                else:
                    failed = next((r for r in _pair_relations(objects, groups[target]) if relation not in r), None)
                    if failed is not None:
                        ok = False
                        reasons.append(_position_reason(name, relation, failed))
        groups.append(objects if ok else None)
    for clause in metadata.get("exclude", []):
        n = len(kept.get(clause["class"], []))
        if n >= clause["count"]:
            reasons.append(f"expected {clause['class']}<{clause['count']}, found {n}")
    return not reasons, reasons


def reference_partial(metadata: dict[str, Any], kept: dict[str, list[Detection]]) -> tuple[float, bool]:
    """The reference reward server's partial credit and its strict verdict (see the module docstring)."""
    terms: list[float] = []
    groups: list[list[Detection] | None] = []
    strict = True
    for clause in metadata["include"]:
        name, count = clause["class"], clause["count"]
        objects = kept.get(name, [])  # all kept objects, not the top `count`
        ok = True
        terms.append(1 - abs(count - len(objects)) / count)  # negative when len(objects) > 2 * count
        if len(objects) != count:
            ok = False
            if "color" in clause or "position" in clause:
                terms.append(0.0)  # one 0, even when both are required
        else:
            if "color" in clause:
                n_colour = _colours(objects, clause).count(clause["color"])
                terms.append(1 - abs(count - n_colour) / count)
                ok = n_colour == count
            if "position" in clause and ok:  # a failed colour adds no position term
                relation, target = clause["position"]
                if groups[target] is None:
                    ok = False
                    terms.append(0.0)
                else:
                    if any(relation not in r for r in _pair_relations(objects, groups[target])):
                        ok = False
                        terms.append(0.0)
                    terms.append(1.0)  # added whether or not a pair failed
        groups.append(objects if ok else None)
        strict = strict and ok
    # Exclude clauses are ignored by the reference reward.
    return (sum(terms) / len(terms) if terms else 0.0), strict


def bounded_partial(metadata: dict[str, Any], kept: dict[str, list[Detection]]) -> float:
    """Partial credit in [0, 1] on the official rules, equal to 1 exactly when the official verdict passes."""
    terms: list[float] = []
    groups: list[list[Detection] | None] = []
    for clause in metadata["include"]:
        name, count = clause["class"], clause["count"]
        objects = kept.get(name, [])[:count]
        ok = len(objects) >= count
        terms.append(len(objects) / count)
        if "color" in clause:
            share = _colours(objects, clause).count(clause["color"]) / count if ok else 0.0
            terms.append(share)
            ok = ok and share == 1.0
        if "position" in clause:
            relation, target = clause["position"]
            share = 0.0
            if ok and groups[target] is not None:
                pairs = _pair_relations(objects, groups[target])
                share = sum(relation in r for r in pairs) / len(pairs)
            terms.append(share)
            ok = ok and share == 1.0
        groups.append(objects if ok else None)
    for clause in metadata.get("exclude", []):
        terms.append(1.0 if len(kept.get(clause["class"], [])) < clause["count"] else 0.0)
    return sum(terms) / len(terms)


def evaluate_detections(
    metadata: dict[str, Any],
    detections: list[Detection],
    *,
    threshold: float = THRESHOLD,
    counting_threshold: float = COUNTING_THRESHOLD,
    max_objects: int = MAX_OBJECTS,
) -> dict[str, Any]:
    """Score raw detections of one image against one GenEval metadata row.

    ``detections``: ``{"class": str, "score": float, "box": [x0, y0, x1, y1], "color": str | None}``
    in pixels, any score (other keys, e.g. a mask, are ignored). Thresholds, ordering and the
    16-per-class cap are applied here. The detections in `colour_targets` must carry a colour.

    Returns ``correct`` (official GenEval verdict), ``partial`` (reference training reward, quirks
    included, in [-14, 1]), ``bounded`` (quirk-free partial credit in [0, 1], 1 iff ``correct``),
    ``strict_correct`` (the reference reward server's exact-count verdict), ``reason`` (why the
    official verdict failed; empty when correct) and ``kept`` (kept detections per class).
    Raises `MetadataError` for a bad row and ValueError for malformed detections.
    """
    validate_metadata(metadata)
    check_detections(detections)
    kept = keep_detections(
        metadata, detections, threshold=threshold, counting_threshold=counting_threshold, max_objects=max_objects
    )
    correct, reasons = official_verdict(metadata, kept)
    partial, strict = reference_partial(metadata, kept)
    return {
        "correct": correct,
        "partial": partial,
        "bounded": bounded_partial(metadata, kept),
        "strict_correct": strict,
        "reason": "\n".join(reasons),
        "kept": {name: len(dets) for name, dets in kept.items()},
    }
