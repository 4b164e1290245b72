"""Detector + colour classifier + rules: GenEval results for a batch of images.

Shared by the training reward and the benchmark. One result per image: the fields of
`evaluate_detections` plus ``tag``, ``detector`` (the backend label) and ``detections`` (the kept
detections per class as ``[x0, y0, x1, y1, score, colour]``), or ``{"error": ..., "detector": ...}``
when that image could not be scored (invalid metadata, a detector or classifier exception).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from PIL import Image

from ... import registry
from .color import DEFAULT_CLIP, ColourClassifier, masked_crop
from .detector import DEFAULT_DETECTOR, SCORE_FLOOR, Mask2FormerDetector
from .metadata import MetadataError, validate_metadata
from .rules import colour_targets, evaluate_detections, keep_detections

logger = logging.getLogger(__name__)


class Detector(Protocol):
    backend: str

    def detect(self, images: Sequence[Image.Image]) -> list[list[dict[str, Any]]]: ...


class GenEvalScorer:
    """Scores images against GenEval metadata rows with a detector and a colour classifier.

    ``colours=None`` keeps the colours the detector itself gives (the tiny-world detector reads them
    from the pixels); otherwise the classifier colours the objects the rules look at.
    """

    def __init__(self, detector: Detector, colours: ColourClassifier | None):
        self.detector = detector
        self.colours = colours

    def score(self, images: Sequence[Image.Image], rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(images) != len(rows):
            raise ValueError(f"{len(images)} images but {len(rows)} metadata rows")
        results: list[dict[str, Any]] = [{} for _ in images]
        valid = []
        for i, row in enumerate(rows):
            try:
                validate_metadata(row, source=f"metadata of sample {i}")
                valid.append(i)
            except MetadataError as exc:
                results[i] = {"error": str(exc)}
        scored = self._score_isolating_failures([images[i] for i in valid], [rows[i] for i in valid])
        for i, result in zip(valid, scored, strict=True):
            results[i] = result
        return [{**r, "detector": self.detector.backend} for r in results]

    def _score_isolating_failures(self, images, rows) -> list[dict[str, Any]]:
        """Score the batch; if it raises, score each image alone so one bad image fails only itself."""
        if not images:
            return []
        try:
            return self._score(images, rows)
        except Exception as exc:  # a failing model call must not take the whole batch down silently
            if len(images) == 1:
                logger.warning("GenEval scoring failed for one image: %s: %s", type(exc).__name__, exc)
                return [{"error": f"{type(exc).__name__}: {exc}"}]
            logger.warning("GenEval scoring failed on a batch of %d (%s); retrying image by image", len(images), exc)
            return [r for i in range(len(images)) for r in self._score_isolating_failures(images[i : i + 1], rows[i : i + 1])]

    def _score(self, images, rows) -> list[dict[str, Any]]:
        detections = self.detector.detect(images)
        colour_of = {} if self.colours is None else self._classify_colours(images, rows, detections)
        results = []
        for row, dets in zip(rows, detections, strict=True):
            coloured = [{**d, "color": colour_of.get(id(d), d.get("color"))} for d in dets]
            result = evaluate_detections(row, coloured)
            kept = keep_detections(row, coloured)
            result["detections"] = {
                name: [[*d["box"], round(d["score"], 4), d["color"]] for d in ds] for name, ds in kept.items()
            }
            results.append({"tag": row["tag"], **result})
        return results

    def _classify_colours(self, images, rows, detections) -> dict[int, str]:
        """Colour only the objects the rules look at, all images in one classifier batch."""
        assert self.colours is not None
        crops, names, owners = [], [], []
        for image, row, dets in zip(images, rows, detections, strict=True):
            for det in colour_targets(row, keep_detections(row, dets)):
                crops.append(masked_crop(image, det))
                names.append(det["class"])
                owners.append(det)
        return {id(det): c for det, c in zip(owners, self.colours.classify(crops, names), strict=True)}


def build_scorer(detector_backend: str = "transformers", **options: Any) -> GenEvalScorer:
    """A `GenEvalScorer` from a detector backend and that backend's options.

    ``detector_backend``: a registered ``blip3o_rl.detector`` builder, "transformers" (Mask2Former + CLIP,
    default: `transformers_scorer`), "mmdet" (GenEval's own detector: `mmdet_scorer`) or "tiny_world"
    (the tiny objects world read from pixels, no models: `blip3o_rl.tiny.detector.tiny_world_scorer`),
    or "package.module:function" / "path/to/file.py:function". An option the backend does not take fails.
    """
    return registry.build("detector", detector_backend, **options)


def transformers_scorer(
    *,
    detector: str = DEFAULT_DETECTOR,
    clip: str = DEFAULT_CLIP,
    device: str | None = None,
    dtype: str | None = None,
    detector_batch_size: int = 8,
    clip_batch_size: int = 64,
    score_floor: float = SCORE_FLOOR,
    detector_shortest_edge: int | None = 800,
) -> GenEvalScorer:
    """Mask2Former (``detector``) and CLIP (``clip``; hub ids or local folders) as a `GenEvalScorer`."""
    det = Mask2FormerDetector(
        detector,
        device=device,
        dtype=dtype,
        batch_size=detector_batch_size,
        score_floor=score_floor,
        shortest_edge=detector_shortest_edge,
    )
    return GenEvalScorer(det, ColourClassifier(clip, device=device, dtype=dtype, batch_size=clip_batch_size))


def mmdet_scorer(
    *,
    mmdet_config: str | None = None,
    mmdet_checkpoint: str | None = None,
    clip: str = DEFAULT_CLIP,
    device: str | None = None,
    dtype: str | None = None,
    clip_batch_size: int = 64,
    score_floor: float = SCORE_FLOOR,
    mmdet_reference_channel_order: bool = False,
) -> GenEvalScorer:
    """GenEval's own mmdet detector (needs an environment with mmdet, see `mmdet_backend`) and CLIP.

    ``mmdet_reference_channel_order`` reproduces the reference reward server's RGB-as-BGR input.
    """
    if not mmdet_config or not mmdet_checkpoint:
        raise ValueError("detector_backend='mmdet' needs mmdet_config and mmdet_checkpoint")
    from .mmdet_backend import MMDetDetector

    det = MMDetDetector(
        mmdet_config,
        mmdet_checkpoint,
        device=device or "cuda",
        score_floor=score_floor,
        reference_channel_order=mmdet_reference_channel_order,
    )
    return GenEvalScorer(det, ColourClassifier(clip, device=device, dtype=dtype, batch_size=clip_batch_size))
