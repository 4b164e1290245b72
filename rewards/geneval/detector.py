"""Object detection for GenEval with Mask2Former through transformers (installs from PyPI, any torch).

GenEval's reference detector is mmdet's Mask2Former Swin-S COCO model; the Hugging Face checkpoints
(default `DEFAULT_DETECTOR`) are the detectron2-trained Mask2Former weights, so scores are close to
but not identical with the reference. Every result therefore carries the detector's `backend` label.

transformers' ``post_process_instance_segmentation`` is not used: it drops detections scoring
below 0.5 (GenEval keeps > 0.3), resizes masks through a fixed 384x384 grid and returns no boxes.
`postprocess_instances` follows the mmdet Mask2Former head instead: top-100 (query, class) pairs
by class probability; mask logits upsampled to the padded input, cropped to the resized image and
resized to the original image; binary mask = logit > 0; score = class probability x mean mask
probability over the mask; box = the mask's extent (exclusive right/bottom edges). Detections at or
below a low floor (default 0.1) and empty masks are dropped.

A detection is ``{"class", "score", "box": [x0, y0, x1, y1], "mask", "color": None}`` where
``mask`` is the full-resolution boolean mask cut to the box (shape ``(y1 - y0, x1 - x0)``), which
is all the colour crop needs and keeps memory small.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..hub import revision_kwargs
from .metadata import GENEVAL_OBJECTS

DEFAULT_DETECTOR = "facebook/mask2former-swin-small-coco-instance"
SCORE_FLOOR = 0.1
MAX_PER_IMAGE = 100  # (query, class) candidates per image, as mmdet's Mask2Former test config

# COCO spellings a checkpoint's id2label may use where GenEval's names differ.
_ALIASES = {
    "mouse": "computer mouse",
    "remote": "tv remote",
    "keyboard": "computer keyboard",
    "tvmonitor": "tv",
    "tv monitor": "tv",
    "hair dryer": "hair drier",
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "sofa": "couch",
    "pottedplant": "potted plant",
    "diningtable": "dining table",
}


def geneval_class_names(id2label: Mapping[int, str]) -> list[str]:
    """Map a COCO-instance checkpoint's label indices onto GenEval's 80 names (by index, names checked).

    Accepts COCO spellings ("mouse", "remote", ...) and placeholder names ("LABEL_3"); anything else
    means the checkpoint is not a COCO-80 instance model and raises ValueError.
    """
    labels = {int(k): str(v) for k, v in id2label.items()}
    if sorted(labels) != list(range(len(GENEVAL_OBJECTS))):
        raise ValueError(
            f"the detector has {len(labels)} labels; GenEval needs a COCO instance model with the 80 thing "
            "classes in COCO order (e.g. facebook/mask2former-swin-small-coco-instance)"
        )
    for i, expected in enumerate(GENEVAL_OBJECTS):
        name = labels[i].strip().lower().replace("_", " ").replace("-", " ")
        if name not in (expected, f"label {i}") and _ALIASES.get(name) != expected:
            raise ValueError(f"detector label {i} is {labels[i]!r}, expected GenEval's {expected!r} (COCO order)")
    return list(GENEVAL_OBJECTS)


def boxes_from_masks(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, H, W]`` bool masks -> (``[N, 4]`` long boxes x0, y0, x1, y1 with exclusive x1/y1, ``[N]`` non-empty)."""
    rows, cols = masks.any(dim=2), masks.any(dim=1)  # [N, H], [N, W]
    height, width = rows.shape[1], cols.shape[1]
    y0 = rows.int().argmax(dim=1)
    y1 = height - rows.flip(1).int().argmax(dim=1)
    x0 = cols.int().argmax(dim=1)
    x1 = width - cols.flip(1).int().argmax(dim=1)
    return torch.stack([x0, y0, x1, y1], dim=1), rows.any(dim=1)


def postprocess_instances(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    *,
    input_size: tuple[int, int],
    valid_size: tuple[int, int],
    image_size: tuple[int, int],
    class_names: Sequence[str],
    score_floor: float = SCORE_FLOOR,
    max_per_image: int = MAX_PER_IMAGE,
    chunk: int = 16,
) -> list[dict[str, Any]]:
    """Instance detections of one image from Mask2Former outputs, best first.

    ``class_logits`` ``[Q, C + 1]`` (last = no object); ``mask_logits`` ``[Q, h, w]`` over the padded
    input of size ``input_size`` (H, W), whose top-left ``valid_size`` is the resized image;
    ``image_size`` (H, W) is the original image. See the module docstring for the rules.
    """
    probs = class_logits.float().softmax(dim=-1)[:, :-1]  # [Q, C]
    num_classes = probs.shape[1]
    if num_classes != len(class_names):
        raise ValueError(f"the detector predicts {num_classes} classes but {len(class_names)} names were given")
    top_probs, top_index = probs.flatten().topk(min(max_per_image, probs.numel()))  # sorted, best first
    # A mask score is at most 1, so a pair whose class probability is at or below the floor cannot pass it.
    keep = top_probs > score_floor
    top_probs, top_index = top_probs[keep], top_index[keep]
    queries = top_index // num_classes
    labels = top_index % num_classes
    unique_queries = queries.unique().tolist()

    per_query: dict[int, tuple[float, list[float], np.ndarray]] = {}
    valid_h, valid_w = valid_size
    for start in range(0, len(unique_queries), chunk):
        ids = unique_queries[start : start + chunk]
        logits = mask_logits[ids].float()[None]  # [1, q, h, w]
        logits = F.interpolate(logits, size=input_size, mode="bilinear", align_corners=False)
        logits = logits[..., :valid_h, :valid_w]
        logits = F.interpolate(logits, size=image_size, mode="bilinear", align_corners=False)[0]  # [q, H, W]
        binary = logits > 0
        mask_scores = (logits.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
        boxes, nonempty = boxes_from_masks(binary)
        # One host transfer per chunk for the small per-query values.
        boxes_l, nonempty_l, scores_l = boxes.tolist(), nonempty.tolist(), mask_scores.tolist()
        for j, q in enumerate(ids):
            if nonempty_l[j]:
                x0, y0, x1, y1 = boxes_l[j]
                mask = binary[j, y0:y1, x0:x1].cpu().numpy()
                per_query[q] = (scores_l[j], [float(x0), float(y0), float(x1), float(y1)], mask)

    detections = []
    for prob, q, label in zip(top_probs.tolist(), queries.tolist(), labels.tolist(), strict=True):
        if q not in per_query:
            continue
        mask_score, box, mask = per_query[q]
        score = prob * mask_score
        if score > score_floor:
            detections.append({"class": class_names[label], "score": score, "box": box, "mask": mask, "color": None})
    detections.sort(key=lambda d: -d["score"])
    return detections


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class Mask2FormerDetector:
    """Mask2Former instance segmentation (transformers) returning GenEval detections.

    ``model``: a hub id or a local folder with ``config.json``, weights and ``preprocessor_config.json``.
    Images are resized to ``shortest_edge``/``longest_edge`` (800/1333: GenEval's mmdet test-time
    resize); ``shortest_edge=None`` keeps the checkpoint's processor settings.
    """

    def __init__(
        self,
        model: str = DEFAULT_DETECTOR,
        *,
        device: str | None = None,
        dtype: torch.dtype | str | None = None,
        batch_size: int = 8,
        score_floor: float = SCORE_FLOOR,
        shortest_edge: int | None = 800,
        longest_edge: int = 1333,
    ):
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        self.device = torch.device(device or _default_device())
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        pin = revision_kwargs(model)  # a pinned hub id at its commit (rewards/hub.py)
        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(model, dtype=dtype or torch.float32, **pin)
        self.model.to(self.device).eval()
        self.processor = AutoImageProcessor.from_pretrained(model, **pin)
        self.class_names = geneval_class_names(self.model.config.id2label)
        self.batch_size = batch_size
        self.score_floor = score_floor
        self.size = None if shortest_edge is None else {"shortest_edge": shortest_edge, "longest_edge": longest_edge}
        self.backend = f"transformers-mask2former:{model}"

    @torch.no_grad()
    def detect(self, images: Sequence[Image.Image]) -> list[list[dict[str, Any]]]:
        """Detections for each image (all above the score floor, best first)."""
        results: list[list[dict[str, Any]]] = []
        for start in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[start : start + self.batch_size]]
            kwargs = {"size": self.size} if self.size else {}
            inputs = self.processor(images=batch, return_tensors="pt", **kwargs)
            pixel_values = inputs["pixel_values"].to(self.device, self.model.dtype)
            pixel_mask = inputs["pixel_mask"].to(self.device)
            out = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask)
            for i, image in enumerate(batch):
                valid = pixel_mask[i].bool()
                valid_size = (int(valid.any(dim=1).sum()), int(valid.any(dim=0).sum()))  # host sync, once per image
                results.append(
                    postprocess_instances(
                        out.class_queries_logits[i],
                        out.masks_queries_logits[i],
                        input_size=tuple(pixel_values.shape[-2:]),
                        valid_size=valid_size,
                        image_size=(image.height, image.width),
                        class_names=self.class_names,
                        score_floor=self.score_floor,
                    )
                )
        return results
