"""Colour crops and the CLIP zero-shot colour classifier (tiny random CLIP saved to disk)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from blip3o_rl.rewards.geneval import COLORS
from blip3o_rl.rewards.geneval.color import BACKGROUND, TEMPLATES, ColourClassifier, masked_crop


def test_masked_crop_pastes_the_mask_on_grey_and_cuts_to_the_box():
    image = Image.new("RGB", (10, 8), (200, 0, 0))
    mask = np.zeros((4, 5), dtype=bool)
    mask[1:3, 1:4] = True
    crop = masked_crop(image, {"box": [2.4, 1.6, 7.4, 5.5], "mask": mask})  # rounds to (2, 2, 7, 6)
    pixels = np.asarray(crop)
    assert crop.size == (5, 4)
    assert (pixels[mask] == (200, 0, 0)).all() and (pixels[~mask] == BACKGROUND).all()
    assert masked_crop(image, {"box": [0, 0, 3, 3], "mask": None}).size == (3, 3)
    with pytest.raises(ValueError, match="does not match"):
        masked_crop(image, {"box": [0, 0, 3, 3], "mask": np.ones((2, 2), dtype=bool)})


@pytest.fixture(scope="module")
def classifier(tiny_clip_dir):
    return ColourClassifier(str(tiny_clip_dir), device="cpu", batch_size=2)


def test_templates_combine_like_clip_benchmark(classifier):
    weights = classifier.class_weights(["fire hydrant"])["fire hydrant"]
    assert weights.shape[0] == len(COLORS)
    model, tok = classifier.model, classifier.tokenizer
    for i, colour in enumerate(COLORS):
        # Each prompt encoded alone (no padding), unit-normalised, averaged, renormalised.
        embs = []
        for template in TEMPLATES:
            enc = tok([template.format(c=colour, obj="fire hydrant")], return_tensors="pt")
            out = model.get_text_features(**enc)
            embs.append(F.normalize((out if isinstance(out, torch.Tensor) else out.pooler_output)[0], dim=-1))
        expected = F.normalize(torch.stack(embs).mean(0), dim=-1)
        torch.testing.assert_close(weights[i], expected, atol=1e-5, rtol=1e-5)


def test_classification_is_independent_of_batching(classifier, tiny_clip_dir):
    crops = []
    for i, colour in enumerate(["red", "green", "blue", "white", "black"]):
        im = Image.new("RGB", (20 + 3 * i, 16), colour)
        ImageDraw.Draw(im).ellipse([2, 2, 12, 12], fill="yellow")
        crops.append(im)
    names = ["car", "car", "dog", "bus", "car"]
    batched = classifier.classify(crops, names)
    one_batch = ColourClassifier(str(tiny_clip_dir), device="cpu", batch_size=64).classify(crops, names)
    assert batched == one_batch and all(c in COLORS for c in batched)
    # Same decision as scoring each crop alone against its class's colour embeddings.
    for crop, name, colour in zip(crops, names, batched, strict=True):
        image = classifier.image_embeddings([crop])[0]
        assert COLORS[int(torch.argmax(classifier.class_weights([name])[name] @ image))] == colour
    assert classifier.classify([], []) == []
