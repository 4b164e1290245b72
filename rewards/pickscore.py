"""PickScore (Kirstain et al., 2023): a CLIP-H model fine-tuned on human preferences (Pick-a-Pic).

Loaded as PickScore ships: the processor (tokenizer + image processor) from the CLIP-H folder
`DEFAULT_PROCESSOR` and the fine-tuned weights from `DEFAULT_MODEL`, both through transformers
(`CLIPModel`), each overridable with a local folder. ``score = scale x logit_scale.exp() x
cos(image, text)`` as the reference computes it (about 18-24 for real images; Flow-GRPO trains on
``scale = 1/26``).
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

DEFAULT_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
DEFAULT_MODEL = "yuvalkirstain/PickScore_v1"


class PickScoreReward(PretrainedReward):
    """``pickscore``: PickScore of each image against its prompt (``processor`` and ``model``: folders or ids)."""

    name = "pickscore"

    def __init__(self, model: str = DEFAULT_MODEL, processor: str = DEFAULT_PROCESSOR, *, scale: float = 1.0,
                 device: str | None = None, dtype: str | None = None, batch_size: int = 32):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        self.scale = float(scale)
        self.model = load_pretrained(CLIPModel.from_pretrained, model, reward=self.name, field="model",
                                     dtype=self.dtype).to(self.device).eval()
        self.image_processor = load_pretrained(AutoImageProcessor.from_pretrained, processor, reward=self.name,
                                               field="processor")
        self.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, processor, reward=self.name, field="processor")
        self.logit_scale = float(self.model.logit_scale.detach().float().exp())
        self.model_ids = {"model": model, "processor": processor}

    @torch.no_grad()
    def score_images(self, images, prompts) -> tuple[list[float], list[dict[str, Any]]]:
        cos = (clip_image_features(self.model, self.image_processor, images)
               * clip_text_features(self.model, self.tokenizer, prompts)).sum(-1)  # [N]
        return (self.scale * self.logit_scale * cos).tolist(), [{"cosine": c} for c in cos.tolist()]
