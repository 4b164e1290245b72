"""What any autoregressive image-token policy provides to the trainer.

A policy wraps a Hugging Face causal LM whose vocabulary contains a contiguous range of image
tokens (BLIP3o-NEXT: ``<I0>`` … ``<I65535>``). The trainer and the rollout engines only ever see:

- `lm`: the `ImageTokenLM` module (the one thing a distributed wrapper wraps and LoRA adapts), which
  computes hidden states, image-row log-probs and decode steps (`policies/model.py`);
- `prompt_batch(captions)`: left-padded prompt ids ending where the first image token is predicted;
- `decode(codes, hidden, generators=...)`: image codes (0-based, ``[B, N]``) → RGB images.

**Device contract**: every tensor a policy returns (prompt batches included) is on `device`, the
device of its model's parameters.

Image *codes* are 0-based indices into the codebook; token ids are ``image_token_start + code``.

**Failed decodes**: an image `decode` could not make (e.g. non-finite pixels) is returned as a
placeholder marked with `mark_decode_error`: ``image.info["decode_error"]`` holds the reason. Rewards
(`blip3o_rl.rewards.base.run_reward`) fail such a sample with that reason, never scoring it, and
``generate`` / ``eval`` report it instead of saving it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import nn

from .model import ImageTokenLayout, ImageTokenLM, SamplingParams

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["DECODE_ERROR", "ImageTokenLM", "ImageTokenLayout", "ImageTokenPolicy", "PromptBatch", "SamplingParams", "decode_error",
           "mark_decode_error"]


#: ``PIL.Image.info`` key of a failed decode's reason (read by the rewards, which cannot import this package).
DECODE_ERROR = "decode_error"


def mark_decode_error(image: Image.Image, why: str) -> Image.Image:
    """Mark ``image`` as a failed decode's placeholder (see the module docstring)."""
    image.info[DECODE_ERROR] = why
    return image


def decode_error(image: Image.Image) -> str | None:
    """Why ``image`` is a failed decode's placeholder, or None for a real image."""
    why = getattr(image, "info", {}).get(DECODE_ERROR)
    return str(why) if why is not None else None


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

    Subclasses provide a classmethod ``from_pretrained(path, dtype=..., **policy_kwargs)`` loading a local
    folder, set ``layout`` first, then ``model`` (the ``*ForCausalLM``; assigning it builds `lm`),
    ``tokenizer``, and implement `tokenize_prompts` and `decode`.
    """

    layout: ImageTokenLayout
    lm: ImageTokenLM
    #: True when `decode` reads the hidden states at the N + 1 conditioning positions (BLIP3o-NEXT).
    needs_hidden_states: bool = False
    #: Inference sampling (``blip3o-rl generate`` and ``eval`` defaults); RL samples as the recipe says.
    inference_sampling: SamplingParams = SamplingParams()

    @property
    def model(self) -> PreTrainedModel:
        """The Hugging Face causal LM inside `lm`."""
        return self.lm.causal_lm

    @model.setter
    def model(self, causal_lm: PreTrainedModel) -> None:
        self.lm = ImageTokenLM(causal_lm, self.layout)

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def prompt_batch(self, captions: Sequence[str]) -> PromptBatch:
        """Left-padded prompts for ``captions``, on `device`, ending right before the first image token."""
        return self.tokenize_prompts(captions).to(self.device)

    @abstractmethod
    def tokenize_prompts(self, captions: Sequence[str]) -> PromptBatch:
        """Tokenise captions into left-padded prompts (any device; `prompt_batch` moves them)."""

    @abstractmethod
    def decode(
        self,
        codes: torch.Tensor,
        hidden_states: torch.Tensor | None = None,
        *,
        generators: Sequence[torch.Generator] | None = None,
    ) -> list[Image.Image]:
        """Turn image codes ``[B, N]`` (and, if `needs_hidden_states`, hidden ``[B, N + 1, H]``) into images.

        A decoder that draws noise takes it from ``generators`` (one per image), never the global RNG.
        """

    def frozen_parameters(self) -> list[nn.Parameter]:
        """Parameters outside `lm` that must never reach an optimizer (e.g. a diffusion refiner)."""
        return []

    @classmethod
    def build(cls, path: str | Path, prompts: Sequence[Any], progress: bool = True, **kwargs: Any) -> Path:
        """Optional: write a new model folder at ``path`` to train from (when ``model.name_or_path`` is null).

        ``prompts`` are the training rows (``.prompt``, ``.metadata``); ``kwargs`` are the recipe's
        ``model.build``. The tiny world implements it; a policy that loads checkpoints need not.
        """
        raise NotImplementedError(f"{cls.__name__} cannot build a model folder: set model.name_or_path")
