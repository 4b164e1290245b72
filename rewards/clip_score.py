"""CLIP score: how well an image matches its prompt, by a CLIP model's cosine similarity.

``score = scale x cos(image embedding, text embedding)`` with transformers' `CLIPModel` (default
`DEFAULT_MODEL`, OpenAI's ViT-L/14, or any CLIP folder). ``scale=2.5`` with ``clip_negative=True`` is
CLIP-S of Hessel et al. (2021), ``2.5 x max(cos, 0)``; the default is the raw cosine, in [-1, 1].
"""

from __future__ import annotations

from typing import Any

import torch

from .pretrained import (
    PretrainedReward,
    clip_image_features,
    clip_text_features,
    load_pretrained,
)

DEFAULT_MODEL = "openai/clip-vit-large-patch14"


class CLIPScoreReward(PretrainedReward):
    """``clip_score``: ``scale x cos`` of CLIP image and prompt embeddings (``model``: folder or hub id)."""

    name = "clip_score"

    def __init__(self, model: str = DEFAULT_MODEL, *, scale: float = 1.0, clip_negative: bool = False,
                 device: str | None = None, dtype: str | None = None, batch_size: int = 32):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        self.scale, self.clip_negative = float(scale), clip_negative
        self.model = load_pretrained(CLIPModel.from_pretrained, model, reward=self.name, field="model",
                                     dtype=self.dtype).to(self.device).eval()
        self.image_processor = load_pretrained(AutoImageProcessor.from_pretrained, model, reward=self.name, field="model")
        self.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, model, reward=self.name, field="model")
        self.model_ids = {"model": model}

    @torch.no_grad()
    def score_images(self, images, prompts) -> tuple[list[float], list[dict[str, Any]]]:
        cos = (clip_image_features(self.model, self.image_processor, images)
               * clip_text_features(self.model, self.tokenizer, prompts)).sum(-1)  # [N]
        value = cos.clamp(min=0) if self.clip_negative else cos
        return (self.scale * value).tolist(), [{"cosine": c} for c in cos.tolist()]
