"""`Blip3oNextPolicy`: BLIP3o-NEXT as an `ImageTokenPolicy` (trainable Qwen3 + frozen SANA refiner)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import PreTrainedTokenizerBase, Qwen3ForCausalLM

from ..base import ImageTokenLayout, ImageTokenPolicy, PromptBatch, SamplingParams
from .config import Blip3oNextConfig
from .decoder import Blip3oNextDecoder, DecodeSettings, Generators, to_pil
from .export import save_blip3o_next
from .loader import load_blip3o_next
from .prompt import chat_text, encode_prompts
from .sampling import INFERENCE, SamplingValues, checkpoint_sampling

#: AR sampling of the official inference script (``generate``, ``eval.sampling: inference``).
INFERENCE_SAMPLING = SamplingParams(INFERENCE.temperature, INFERENCE.top_k, INFERENCE.top_p)


def _decode_settings(value: DecodeSettings | Mapping[str, Any] | None) -> DecodeSettings | None:
    if value is None or isinstance(value, DecodeSettings):
        return value
    known = {f.name for f in fields(DecodeSettings)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"decode_settings: unknown keys {unknown} (known: {sorted(known)})")
    return DecodeSettings(**value)


def _dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"decoder_dtype: {value!r} is not a floating-point torch dtype (e.g. 'bfloat16')")
    return dtype


class Blip3oNextPolicy(ImageTokenPolicy):
    """BLIP3o-NEXT: ``model`` is a plain ``Qwen3ForCausalLM`` (the only trained part), ``decoder`` the
    frozen connector + SANA + DC-AE refiner conditioned on the AR hidden states.

    The N + 1 conditioning positions are ``<S0>`` (the last prompt token) and the N image tokens; the
    first N of them are also the positions whose logits score the N codes.
    """

    needs_hidden_states = True
    inference_sampling = INFERENCE_SAMPLING

    def __init__(
        self,
        model: Qwen3ForCausalLM,
        tokenizer: PreTrainedTokenizerBase | None,
        config: Blip3oNextConfig,
        decoder: Blip3oNextDecoder,
    ):
        self.layout = ImageTokenLayout(
            image_token_start=config.image_start_token_id,
            num_codes=config.num_image_tokens,
            tokens_per_image=config.tokens_per_image,
        )
        self.model = model
        self.tokenizer = tokenizer  # None only for benchmarks that feed token ids directly
        self.config = config
        self.decoder = decoder

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        diffusion_path: str | Path | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        decode_settings: DecodeSettings | Mapping[str, Any] | None = None,
        decoder_dtype: torch.dtype | str | None = None,
    ) -> Blip3oNextPolicy:
        """Load an official checkpoint folder offline (see `load_blip3o_next`).

        ``decode_settings`` and ``decoder_dtype`` may also be given as in a recipe's
        ``model.policy_kwargs``: a mapping of `DecodeSettings` fields and a dtype name ("bfloat16").
        """
        parts = load_blip3o_next(
            path,
            diffusion_path,
            dtype=dtype,
            device=device,
            decode_settings=_decode_settings(decode_settings),
            decoder_dtype=_dtype(decoder_dtype),
        )
        return cls(parts.model, parts.tokenizer, parts.config, parts.decoder)

    @property
    def checkpoint_sampling(self) -> SamplingValues:
        """What the official rollout's ``generate(do_sample=True)`` sampled with for this checkpoint: its
        ``generation_config.json`` values, transformers' defaults (top-k 50) where it has none."""
        return checkpoint_sampling(Path(self.config.source).parent)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the AR model (in its current dtype) with the source checkpoint's refiner, tokenizer and
        config as a new official-layout folder (see `save_blip3o_next`); merge LoRA adapters first."""
        return save_blip3o_next(self.model, self.config, path)

    # -- prompts -------------------------------------------------------------------------------------

    @property
    def prompt_suffix_ids(self) -> list[int]:
        """``<im_start><S0>``, appended after the opened assistant turn."""
        return [self.config.image_start_tag_id, self.config.scale_start_token_id]

    @property
    def pad_token_id(self) -> int:
        tok = self._require_tokenizer()
        for candidate in (tok.pad_token_id, tok.eos_token_id):
            if candidate is not None:
                return candidate
        return 0  # any id works: padding is masked out

    def prompt_text(self, caption: str) -> str:
        """The full prompt as text, as the model was trained on it."""
        tok = self._require_tokenizer()
        return chat_text(tok, caption) + "".join(tok.convert_ids_to_tokens(self.prompt_suffix_ids))

    def tokenize_prompts(self, captions: Sequence[str]) -> PromptBatch:
        return encode_prompts(self._require_tokenizer(), captions, self.prompt_suffix_ids, self.pad_token_id)

    def _require_tokenizer(self) -> PreTrainedTokenizerBase:
        if self.tokenizer is None:
            raise RuntimeError("this Blip3oNextPolicy was built without a tokenizer; use from_pretrained")
        return self.tokenizer

    # -- conditioning ----------------------------------------------------------------------------------

    def image_hidden_states(self, prompt: PromptBatch, codes: torch.Tensor) -> torch.Tensor:
        """One forward over prompt + image tokens → hidden states ``[B, N + 1, H]`` (post-final-norm) at
        ``<S0>`` and the N image tokens. Runs with grad unless the caller disables it: ``[:, :N]`` are
        the rows that score the codes (``lm.image_logits``), the whole tensor conditions `decode`."""
        prompt = prompt.to(self.device)
        out = self.lm(prompt.input_ids, prompt.attention_mask, codes=codes.to(self.device), return_hidden=True)
        return out.hidden_states  # [B, N + 1, H]

    # -- images ----------------------------------------------------------------------------------------

    def decode(
        self,
        codes: torch.Tensor,
        hidden_states: torch.Tensor | None = None,
        *,
        generators: Sequence[torch.Generator] | None = None,
        settings: DecodeSettings | None = None,
    ) -> list[Image.Image]:
        """Codes ``[B, N]`` and their conditioning hidden states ``[B, N + 1, H]`` → RGB images.

        The refiner reads only the hidden states; the codes are checked for consistency. Its initial
        noise comes from ``generators`` (one per image) when given.
        """
        if hidden_states is None:
            raise ValueError(
                "BLIP3o-NEXT decodes from the AR hidden states: pass hidden_states [B, N + 1, H] "
                "(e.g. from image_hidden_states(prompt, codes))"
            )
        b, n = codes.shape
        if n != self.layout.tokens_per_image:
            raise ValueError(
                f"got {n} image codes per image, the model writes {self.layout.tokens_per_image}"
            )
        if hidden_states.shape[:2] != (b, n + 1):
            raise ValueError(
                f"hidden_states has shape {list(hidden_states.shape)}; expected [{b}, {n + 1}, H] for codes {list(codes.shape)}"
            )
        generator: Generators = list(generators) if generators is not None else None
        return to_pil(self.decoder(hidden_states.detach(), generator=generator, settings=settings))

    # -- parameters ------------------------------------------------------------------------------------

    def frozen_parameters(self) -> list[nn.Parameter]:
        """Connector, SANA and DC-AE parameters: must never reach an optimizer."""
        return list(self.decoder.parameters())
