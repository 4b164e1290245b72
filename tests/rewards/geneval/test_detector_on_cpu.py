"""Mask2Former post-processing pinned on synthetic logits; class mapping; the mmdet result conversion."""

from __future__ import annotations

import importlib.util
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from blip3o_rl.rewards.geneval import GENEVAL_OBJECTS
from blip3o_rl.rewards.geneval.detector import boxes_from_masks, geneval_class_names, postprocess_instances
from blip3o_rl.rewards.geneval.mmdet_backend import crop_mask_to_box, detections_from_mmdet

DOG, CAT = GENEVAL_OBJECTS.index("dog"), GENEVAL_OBJECTS.index("cat")
C = len(GENEVAL_OBJECTS)


def class_logits(*per_query: dict[int, float]) -> torch.Tensor:
    """``[Q, C + 1]`` logits: 0 everywhere (no-object included) except the given class logits."""
    out = torch.zeros(len(per_query), C + 1)
    for q, logits in enumerate(per_query):
        for index, value in logits.items():
            out[q, index] = value
    return out


def prob(logit: float, others: int = C) -> float:
    """Softmax probability of one class at ``logit`` when the other ``others`` logits (incl. no-object) are 0."""
    return math.exp(logit) / (math.exp(logit) + others)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def block(shape, rows, cols, inside=10.0, outside=-10.0) -> torch.Tensor:
    out = torch.full(shape, outside)
    out[rows[0] : rows[1], cols[0] : cols[1]] = inside
    return out


def run(cls, masks, **kw):
    kw.setdefault("input_size", masks.shape[-2:])
    kw.setdefault("valid_size", masks.shape[-2:])
    kw.setdefault("image_size", masks.shape[-2:])
    return postprocess_instances(cls, masks, class_names=GENEVAL_OBJECTS, **kw)


def test_full_resolution_masks_boxes_and_scores():
    # Mask logits at half the image resolution: a +10 block on -10, rows 2..5 and cols 4..9 (inclusive).
    masks = block((12, 16), (2, 6), (4, 10))[None]
    [dog] = run(class_logits({DOG: 5.0}), masks, image_size=(24, 32))
    # Bilinear 2x upsampling (align_corners=False) puts the zero crossing on the block's edges: rows
    # 4..11, cols 8..19 of the image. Box edges are exclusive, the mask is cut to the box.
    assert dog["class"] == "dog" and dog["color"] is None
    assert dog["box"] == [8.0, 4.0, 20.0, 12.0]
    assert dog["mask"].shape == (8, 12) and dog["mask"].all()
    # Interpolated logits: 10 inside, 5 on the edges (weights 0.75/0.25), 20 * 0.75^2 - 10 at the corners.
    mask_score = (4 * sigmoid(1.25) + 32 * sigmoid(5.0) + 60 * sigmoid(10.0)) / (96 + 1e-6)
    assert dog["score"] == pytest.approx(prob(5.0) * mask_score, rel=1e-5)


def test_padding_is_cut_before_resizing_to_the_image():
    # Padded input 16x24 holding a 12x16 resized image; query 1 only covers padding, so its mask is empty.
    masks = torch.stack([block((16, 24), (1, 5), (2, 6)), block((16, 24), (12, 16), (0, 24))])
    dets = run(class_logits({DOG: 6.0}, {CAT: 6.0}), masks, valid_size=(12, 16), image_size=(12, 16))
    assert [d["class"] for d in dets] == ["dog"]
    assert dets[0]["box"] == [2.0, 1.0, 6.0, 5.0]


def test_keeps_scores_between_floor_and_0_5_and_drops_below_the_floor():
    masks = torch.stack([block((8, 8), (0, 4), (0, 4)), block((8, 8), (4, 8), (4, 8)), block((8, 8), (0, 8), (6, 8))])
    # Class probabilities 0.40, 0.058 (under the floor) and 0.121; mask scores are sigmoid(10) ~ 1.
    cls = class_logits({DOG: math.log(0.4 / 0.6 * C)}, {CAT: 1.6}, {CAT: 2.4})
    dets = run(cls, masks, score_floor=0.1)
    scores = {d["class"]: d["score"] for d in dets}
    assert set(scores) == {"dog", "cat"} and 0.3 < scores["dog"] < 0.5  # transformers' default (0.5) drops it
    assert [d["box"] for d in dets if d["class"] == "cat"] == [[6.0, 0.0, 8.0, 8.0]]
    assert all(d["score"] > 0.1 for d in dets)
    assert [d["class"] for d in run(cls, masks, score_floor=0.5)] == []


def test_one_query_can_yield_several_classes_best_first():
    masks = block((8, 8), (2, 6), (2, 6))[None]
    dets = run(class_logits({DOG: 6.0, CAT: 5.0}), masks)
    assert [d["class"] for d in dets] == ["dog", "cat"]
    assert dets[0]["box"] == dets[1]["box"] == [2.0, 2.0, 6.0, 6.0]
    assert dets[0]["score"] / dets[1]["score"] == pytest.approx(math.exp(1.0), rel=1e-5)


def test_top_k_candidates_and_no_object():
    masks = torch.stack([block((8, 8), (0, 4), (0, 4))] * 3)
    cls = class_logits({DOG: 6.0}, {CAT: 7.0}, {DOG: 5.0})
    assert [d["class"] for d in run(cls, masks, max_per_image=2)] == ["cat", "dog"]
    nothing = class_logits({DOG: 6.0, C: 20.0})  # the no-object logit dominates
    assert run(nothing, masks[:1]) == []


def test_boxes_from_masks():
    masks = torch.zeros(2, 5, 7, dtype=torch.bool)
    masks[0, 1:3, 2:6] = True
    boxes, nonempty = boxes_from_masks(masks)
    assert boxes[0].tolist() == [2, 1, 6, 3] and nonempty.tolist() == [True, False]


def test_class_names_map_by_index_with_coco_spellings():
    coco = dict(enumerate(GENEVAL_OBJECTS))
    coco[64], coco[65], coco[66] = "mouse", "remote", "keyboard"
    assert geneval_class_names(coco) == list(GENEVAL_OBJECTS)
    assert geneval_class_names({i: f"LABEL_{i}" for i in range(C)})[64] == "computer mouse"
    with pytest.raises(ValueError, match="label 16 is 'horse'"):
        geneval_class_names({**coco, 16: "horse"})
    with pytest.raises(ValueError, match="133 labels"):
        geneval_class_names({i: f"LABEL_{i}" for i in range(133)})


def test_mmdet2_results_convert_to_detections():
    bboxes = [np.zeros((0, 5), dtype=np.float32) for _ in range(C)]
    masks = [[] for _ in range(C)]
    bboxes[DOG] = np.array([[2, 1, 6, 4, 0.8], [0, 0, 3, 3, 0.05]], dtype=np.float32)
    full = np.zeros((8, 10), dtype=bool)
    full[1:4, 2:6] = True
    masks[DOG] = [full, full]
    [dog] = detections_from_mmdet((bboxes, masks))  # the 0.05 one is under the floor
    assert dog["class"] == "dog" and dog["score"] == pytest.approx(0.8) and dog["box"] == [2.0, 1.0, 6.0, 4.0]
    assert dog["mask"].shape == (3, 4) and dog["mask"].all()
    assert detections_from_mmdet(bboxes)[0]["mask"] is None  # bbox-only output


def test_mmdet3_results_convert_to_detections():
    full = np.zeros((8, 10), dtype=bool)
    full[0:2, 0:3] = True
    inst = SimpleNamespace(
        bboxes=torch.tensor([[0.0, 0.0, 3.0, 2.0]]), scores=torch.tensor([0.9]), labels=torch.tensor([CAT]), masks=torch.tensor(full[None])
    )
    [cat] = detections_from_mmdet(SimpleNamespace(pred_instances=inst))
    assert cat["class"] == "cat" and cat["mask"].shape == (2, 3)


def test_crop_mask_to_box_rounds_like_pil_and_pads_outside():
    mask = np.ones((4, 4), dtype=bool)
    assert crop_mask_to_box(mask, [0.4, 0.6, 2.5, 3.5]).shape == (3, 2)  # round(0.6)=1, round(2.5)=2, round(3.5)=4
    out = crop_mask_to_box(mask, [2, 2, 6, 6])
    assert out.shape == (4, 4) and out.sum() == 4


@pytest.mark.skipif(importlib.util.find_spec("mmdet") is not None, reason="mmdet is installed here")
def test_mmdet_backend_without_mmdet_says_what_to_do():
    from blip3o_rl.rewards.geneval.mmdet_backend import MMDetDetector

    with pytest.raises(ImportError, match="separate environment"):
        MMDetDetector("config.py", "weights.pth")


def test_build_scorer_rejects_bad_backend_options():
    from blip3o_rl.rewards.geneval.scorer import build_scorer

    with pytest.raises(ValueError, match=r"unknown detector 'yolo'.*mmdet, tiny_world, transformers"):
        build_scorer(detector_backend="yolo")
    with pytest.raises(ValueError, match="needs mmdet_config and mmdet_checkpoint"):
        build_scorer(detector_backend="mmdet")
    with pytest.raises(ValueError, match="detector 'tiny_world' takes no argument 'detector'"):
        build_scorer(detector_backend="tiny_world", detector="facebook/mask2former")
