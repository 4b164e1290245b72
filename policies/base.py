"""What any autoregressive image-token policy provides to the trainer.

A policy wraps a Hugging Face causal LM whose vocabulary contains a contiguous range of image
tokens (BLIP3o-NEXT: ``<I0>`` … ``<I65535>``). The trainer only ever sees:

- `prompt_batch(captions)`: left-padded prompt ids ending where the first image token is predicted;
- `hidden_states(input_ids, attention_mask)`: last-layer hidden states after the final norm;
- `image_logits(hidden)`: logits over the image codes only, from those rows of ``lm_head``;
- `decode(codes, hidden)`: image codes (0-based, ``[B, N]``) → RGB images.

Image *codes* are 0-based indices into the codebook; token ids are ``image_token_start + code``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn


@dataclass(frozen=True)
class ImageTokenLayout:
    """Where the image tokens live in the vocabulary and how many make one image."""

    image_token_start: int  # token id of code 0 (<I0>)
    num_codes: int  # codebook size
    tokens_per_image: int  # e.g. 729 = 27 x 27 for BLIP3o-NEXT

    def to_token_ids(self, codes: torch.Tensor) -> torch.Tensor:
        return codes + self.image_token_start


@dataclass
class PromptBatch:
    """Left-padded prompts: the last column is the token that predicts the first image token."""

    input_ids: torch.Tensor  # [B, P] long
    attention_mask: torch.Tensor  # [B, P] long, 0 on left padding

    def to(self, device: torch.device | str) -> PromptBatch:
        return PromptBatch(self.input_ids.to(device), self.attention_mask.to(device))

    def slice(self, rows: slice) -> PromptBatch:
        return PromptBatch(self.input_ids[rows], self.attention_mask[rows])

    def repeat_interleave(self, n: int) -> PromptBatch:
        return PromptBatch(
            self.input_ids.repeat_interleave(n, 0), self.attention_mask.repeat_interleave(n, 0)
        )


class ImageTokenPolicy(ABC):
    """Adapter around a causal LM that writes images as image tokens.

    ``self.model`` is the trainable ``*ForCausalLM`` (LoRA, when used, is injected into it in place).
    Subclasses set ``model``, ``tokenizer`` and ``layout`` and implement `prompt_batch` and `decode`.
    """

    model: nn.Module
    layout: ImageTokenLayout
    #: True when `decode` reads the hidden states at the N + 1 conditioning positions (BLIP3o-NEXT).
    needs_hidden_states: bool = False

    @abstractmethod
    def prompt_batch(self, captions: list[str]) -> PromptBatch:
        """Tokenise captions into left-padded prompts that end right before the first image token."""

    @abstractmethod
    def decode(self, codes: torch.Tensor, hidden_states: torch.Tensor | None = None) -> list[Image.Image]:
        """Turn image codes ``[B, N]`` (and, if `needs_hidden_states`, hidden ``[B, N + 1, H]``) into images."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def backbone(self) -> nn.Module:
        """The transformer body (embeddings → layers → final norm) of the causal LM."""
        return self.model.get_decoder()

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        past_key_values=None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool = False,
    ):
        """Run the body; returns the HF output (``last_hidden_state`` is post-final-norm)."""
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return self.backbone()(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
        )

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the image codes only: ``hidden [..., H] → [..., num_codes]``.

        Uses just the image-token rows of ``lm_head``: the masked softmax over the allowed ids, and
        no ``[*, vocab]`` tensor is ever built.
        """
        head = self.model.get_output_embeddings()
        start, k = self.layout.image_token_start, self.layout.num_codes
        weight = head.weight[start : start + k]
        bias = head.bias[start : start + k] if getattr(head, "bias", None) is not None else None
        return nn.functional.linear(hidden.to(weight.dtype), weight, bias)

    @classmethod
    def build(cls, path: str | Path, prompts: Sequence[Any], progress: bool = True, **kwargs: Any) -> Path:
        """Optional: write a new model folder at ``path`` to train from (when ``model.name_or_path`` is null).

        ``prompts`` are the training rows (``.prompt``, ``.metadata``); ``kwargs`` are the recipe's
        ``model.build``. The tiny world implements it; a policy that loads checkpoints need not.
        """
        raise NotImplementedError(f"{cls.__name__} cannot build a model folder: set model.name_or_path")
