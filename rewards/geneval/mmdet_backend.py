"""GenEval's exact reference detector through mmdet (optional backend, imported lazily).

mmdet 2.x and mmcv-full 1.x no longer build against current torch, so this backend is meant for a
separate environment (GenEval's: torch 1.x/2.0, mmcv-full 1.x, mmdet 2.x) that serves the GenEval
reward over HTTP with the project's reward server; the training process then talks to that server.
Only `detections_from_mmdet` (the conversion of mmdet results) is tested here: mmdet itself cannot be
installed in this project's test environment.

Reference quirk: GenEval's benchmark script hands mmdet *file paths* (read as BGR, as mmdet expects),
while the reference reward server hands it ``np.array(pil_image)``, i.e. RGB data read as BGR.
``reference_channel_order=True`` reproduces the reward server; the default feeds BGR correctly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .detector import SCORE_FLOOR
from .metadata import GENEVAL_OBJECTS

_INSTALL_HINT = (
    "the 'mmdet' GenEval detector backend needs mmdet 2.x and mmcv-full 1.x (GenEval's environment), which "
    "do not build on current torch. Install them in a separate environment, run the GenEval reward there "
    "behind the reward server, or use the default detector_backend='transformers'"
)


def crop_mask_to_box(mask: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """Cut a full-image mask to ``box`` rounded the way PIL's ``Image.crop`` rounds (outside = False)."""
    x0, y0, x1, y1 = (round(float(v)) for v in box[:4])
    out = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=bool)
    h, w = mask.shape
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = mask[sy0:sy1, sx0:sx1]
    return out


def _as_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def detections_from_mmdet(
    result: Any, class_names: Sequence[str] = GENEVAL_OBJECTS, score_floor: float = SCORE_FLOOR
) -> list[dict[str, Any]]:
    """Convert one mmdet result to GenEval detections, best first.

    Accepts mmdet 2.x output (``(bbox_results, segm_results)`` or ``bbox_results`` alone: per class an
    ``[N, 5]`` array x0, y0, x1, y1, score and a list of N full-image masks) and mmdet 3.x output (an
    object with ``pred_instances.bboxes/scores/labels/masks``).
    """
    detections: list[dict[str, Any]] = []
    if hasattr(result, "pred_instances"):
        inst = result.pred_instances
        boxes, scores, labels = _as_numpy(inst.bboxes), _as_numpy(inst.scores), _as_numpy(inst.labels)
        masks = _as_numpy(inst.masks) if hasattr(inst, "masks") else None
        per_object = (
            (int(labels[i]), boxes[i], float(scores[i]), None if masks is None else masks[i]) for i in range(len(scores))
        )
    else:
        bbox_results = result[0] if isinstance(result, tuple) else result
        segm_results = result[1] if isinstance(result, tuple) and len(result) > 1 else None
        if len(bbox_results) != len(class_names):
            raise ValueError(f"mmdet returned {len(bbox_results)} classes, expected {len(class_names)}")
        per_object = (
            (label, row[:4], float(row[4]), None if segm_results is None else segm_results[label][j])
            for label, rows in enumerate(bbox_results)
            for j, row in enumerate(np.asarray(rows).reshape(-1, 5))
        )
    for label, box, score, mask in per_object:
        if score <= score_floor:
            continue
        box = [float(v) for v in box]
        detections.append(
            {
                "class": class_names[label],
                "score": score,
                "box": box,
                "mask": None if mask is None else crop_mask_to_box(np.asarray(mask, dtype=bool), box),
                "color": None,
            }
        )
    detections.sort(key=lambda d: -d["score"])
    return detections


class MMDetDetector:
    """GenEval's mmdet Mask2Former (config + ``.pth`` checkpoint), same `detect` interface as the transformers one."""

    def __init__(
        self,
        config: str,
        checkpoint: str,
        *,
        device: str = "cuda",
        score_floor: float = SCORE_FLOOR,
        reference_channel_order: bool = False,
    ):
        try:
            from mmdet.apis import inference_detector, init_detector
        except ImportError as exc:
            raise ImportError(_INSTALL_HINT) from exc
        self._inference = inference_detector
        self.model = init_detector(config, checkpoint, device=device)
        self.score_floor = score_floor
        self.reference_channel_order = reference_channel_order
        self.backend = f"mmdet-mask2former:{Path(checkpoint).name}"

    def detect(self, images: Sequence[Image.Image]) -> list[list[dict[str, Any]]]:
        arrays = [np.asarray(im.convert("RGB")) for im in images]
        if not self.reference_channel_order:
            arrays = [np.ascontiguousarray(a[:, :, ::-1]) for a in arrays]  # mmdet expects BGR arrays
        results = self._inference(self.model, arrays)
        return [detections_from_mmdet(r, score_floor=self.score_floor) for r in results]
