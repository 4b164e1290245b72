"""Object colour for GenEval: CLIP ViT-L/14 zero-shot over 10 colours on a masked crop.

As GenEval does: the object's mask is pasted on a #999999 grey background and cut to its box; the
crop is classified among `COLORS` with the templates "a photo of a {c} {object}", "a photo of a
{c}-colored {object}" and "a photo of a {c} object". Templates combine as in clip_benchmark: each
text embedding is L2-normalised, the three are averaged and the mean renormalised; the predicted
colour maximises the cosine similarity with the normalised image embedding. The reference runs
open_clip's OpenAI ViT-L-14; here it is the same weights through transformers (`DEFAULT_CLIP`), with
the same resize (shortest side 224, bicubic), centre crop and normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..hub import revision_kwargs
from .metadata import COLORS

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
TEMPLATES = ("a photo of a {c} {obj}", "a photo of a {c}-colored {obj}", "a photo of a {c} object")
BACKGROUND = (153, 153, 153)  # "#999"


def masked_crop(image: Image.Image, detection: dict[str, Any]) -> Image.Image:
    """The detection's pixels on a grey background, cut to its box (rounded like PIL's crop).

    ``detection["mask"]`` is the boolean mask cut to that box (as the detectors return it), or None to
    use the plain box crop.
    """
    image = image.convert("RGB")
    x0, y0, x1, y1 = (round(float(v)) for v in detection["box"][:4])
    box = (x0, y0, x1, y1)
    crop = image.crop(box)
    mask = detection.get("mask")
    if mask is None:
        return crop
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (crop.height, crop.width):
        raise ValueError(f"mask of shape {mask.shape} does not match the {crop.height}x{crop.width} box {box}")
    grey = Image.new("RGB", crop.size, BACKGROUND)
    return Image.composite(crop, grey, Image.fromarray(mask.astype(np.uint8) * 255, mode="L"))


def _features(output: Any) -> torch.Tensor:
    # transformers 4.x returns the projected features; 5.x an output object carrying them as pooler_output.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ColourClassifier:
    """Zero-shot colour of object crops with CLIP (any transformers CLIP folder or hub id)."""

    def __init__(
        self,
        model: str = DEFAULT_CLIP,
        *,
        device: str | None = None,
        dtype: torch.dtype | str | None = None,
        batch_size: int = 64,
    ):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        pin = revision_kwargs(model)  # the default hub id at its pinned commit
        self.model = CLIPModel.from_pretrained(model, dtype=dtype or torch.float32, **pin).to(self.device).eval()
        self.processor = AutoImageProcessor.from_pretrained(model, **pin)
        self.tokenizer = AutoTokenizer.from_pretrained(model, **pin)
        self.batch_size = batch_size
        self._weights: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def class_weights(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Per object name, the ``[10, D]`` unit colour embeddings (cached; new names in one text batch)."""
        missing = sorted({n for n in names if n not in self._weights})
        if missing:
            texts = [t.format(c=c, obj=n) for n in missing for c in COLORS for t in TEMPLATES]
            enc = self.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
            emb = F.normalize(_features(self.model.get_text_features(**enc)).float(), dim=-1)
            emb = emb.view(len(missing), len(COLORS), len(TEMPLATES), -1).mean(dim=2)  # [N, 10, D]
            emb = F.normalize(emb, dim=-1)
            for n, w in zip(missing, emb, strict=True):
                self._weights[n] = w
        return {n: self._weights[n] for n in names}

    @torch.no_grad()
    def image_embeddings(self, crops: Sequence[Image.Image]) -> torch.Tensor:
        """``[N, D]`` unit image embeddings, in batches of ``batch_size``."""
        chunks = []
        for start in range(0, len(crops), self.batch_size):
            batch = [c.convert("RGB") for c in crops[start : start + self.batch_size]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
            feats = _features(self.model.get_image_features(pixel_values=pixels.to(self.device, self.model.dtype)))
            chunks.append(F.normalize(feats.float(), dim=-1))
        return torch.cat(chunks)

    def classify(self, crops: Sequence[Image.Image], object_names: Sequence[str]) -> list[str]:
        """The colour of each crop; ``object_names[i]`` is the class the detector gave crop ``i``."""
        if len(crops) != len(object_names):
            raise ValueError(f"{len(crops)} crops but {len(object_names)} object names")
        if not crops:
            return []
        weights = self.class_weights(object_names)
        images = self.image_embeddings(crops)  # [N, D]
        stacked = torch.stack([weights[n] for n in object_names])  # [N, 10, D]
        best = torch.einsum("nd,ncd->nc", images, stacked).argmax(dim=1)
        return [COLORS[i] for i in best.tolist()]
