"""`JanusPolicy`: Janus / Janus-Pro text-to-image through transformers' official classes.

Loads an official folder (``deepseek-community/Janus-Pro-7B`` layout: ``model_type: "janus"``) offline with
``JanusForConditionalGeneration`` and ``JanusProcessor``, and generates as ``generate(generation_mode=
"image")`` does: the folder's chat template + ``<begin_of_image>`` (`prompt.py`), the Llama body over
prompt embeddings then the generation aligner's code embeddings, the generation head's logits over the VQ
codebook, classifier-free guidance with the unconditional row's prompt masked to pad except BOS and
``<begin_of_image>`` (`policies/guidance.py`), scale from ``generation_config.json`` (5 when unset, the
official default), and images from the official VQ decoder (``decode_image_tokens``) and the processor's
``postprocess``.

Trained: the Llama body, the generation embeddings / aligner / head (and the token embeddings).
Frozen: the VQ-VAE, the SigLIP understanding encoder and its aligner, and an untied text ``lm_head``
(none of them takes part in image generation).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import GenerationConfig, JanusForConditionalGeneration, JanusProcessor

from ..base import ImageTokenLayout, ImageTokenPolicy, PromptBatch, SamplingParams, mark_decode_error
from ..errors import ModelFolderError
from ..guidance import Guidance
from ..weights import require_finite_module
from .model import JanusImageTokenLM
from .prompt import chat_text, encode_prompts

#: What ``generate`` uses when ``generation_config.json`` sets no ``guidance_scale``.
DEFAULT_GUIDANCE_SCALE = 5.0
#: transformers' defaults for sampling keys a ``generation_config.json`` does not set (``do_sample=True``).
TRANSFORMERS_DEFAULT_TOP_K, TRANSFORMERS_DEFAULT_TOP_P = 50, 1.0


class JanusConfigError(ModelFolderError):
    """A folder that is not a usable Janus checkpoint (message names the file and the field)."""


def _read_config(path: Path) -> dict:
    file = path / "config.json"
    if not file.is_file():
        raise JanusConfigError(f"{file}: not found (expected a Janus / Janus-Pro checkpoint folder)")
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise JanusConfigError(f"{file}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if raw.get("model_type") != "janus":
        raise JanusConfigError(f"{file}: model_type is {raw.get('model_type')!r}, expected 'janus' (a transformers "
                               "Janus folder such as deepseek-community/Janus-Pro-7B)")
    return raw


def _sampling(gen: GenerationConfig) -> SamplingParams:
    """What ``generate(do_sample=True)`` samples with after CFG: the file's values, transformers' defaults
    (top-k 50) for keys it does not set; top-k 0 / top-p 1 disable truncation."""
    top_k = gen.top_k if gen.top_k is not None else TRANSFORMERS_DEFAULT_TOP_K
    top_p = gen.top_p if gen.top_p is not None else TRANSFORMERS_DEFAULT_TOP_P
    return SamplingParams(float(gen.temperature if gen.temperature is not None else 1.0), int(top_k), float(top_p))


class JanusPolicy(ImageTokenPolicy):
    """Janus-Pro as an `ImageTokenPolicy`; ``lm`` is a `JanusImageTokenLM` (AR-level CFG inside it)."""

    needs_hidden_states = False
    lora_exclude_modules = r"(.*\.)?(vision_model|aligner|vqmodel)(\..*)?"

    def __init__(self, model: JanusForConditionalGeneration, processor: Any, guidance: Guidance | None,
                 source: Path | None = None):
        cfg = model.config
        grid = cfg.vision_config.image_size // cfg.vision_config.patch_size
        n = cfg.vision_config.num_image_tokens
        if n != grid * grid:
            raise JanusConfigError(f"config.json: vision_config.num_image_tokens is {n}, but the VQ grid is "
                                   f"{grid} x {grid} (image_size / patch_size)")
        self.layout = ImageTokenLayout(image_token_start=0, num_codes=cfg.vq_config.num_embeddings, tokens_per_image=n)
        self.guidance = guidance
        self.model = model  # builds `lm` (build_lm)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.source = source
        self.inference_sampling = _sampling(model.generation_config)

    def build_lm(self, causal_lm) -> JanusImageTokenLM:
        return JanusImageTokenLM(causal_lm, self.layout, self.guidance)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                        guidance_scale: float | None = None, detach_uncond: bool = False) -> JanusPolicy:
        """Load a local Janus folder offline.

        ``guidance_scale``: CFG scale (default: the folder's ``generation_config.json``, else 5, as
        ``generate``); 1 turns guidance off. ``detach_uncond``: no gradient through the unconditional rows
        (ReasonGen-R1); the default trains through both (`policies/guidance.py`).
        """
        path = Path(path)
        _read_config(path)
        model = JanusForConditionalGeneration.from_pretrained(path, dtype=dtype or torch.float32, local_files_only=True)
        model.eval()
        require_finite_module(model, path)  # a NaN weight would otherwise load silently
        if device is not None:
            model.to(device)
        processor = JanusProcessor.from_pretrained(path, local_files_only=True)
        gen = model.generation_config
        scale = float(guidance_scale if guidance_scale is not None else gen.guidance_scale or DEFAULT_GUIDANCE_SCALE)
        if scale < 1:
            raise JanusConfigError(f"guidance_scale must be >= 1 (1: no guidance), got {scale}")
        guidance = None
        if scale > 1:
            tok = processor.tokenizer
            boi = (gen.generation_kwargs or {}).get("boi_token_id", tok.convert_tokens_to_ids(tok.boi_token))
            bos = gen.bos_token_id if gen.bos_token_id is not None else tok.bos_token_id
            pad = gen.pad_token_id if gen.pad_token_id is not None else tok.pad_token_id
            if bos is None or pad is None or boi is None:
                raise JanusConfigError(f"{path / 'generation_config.json'}: CFG needs bos_token_id, pad_token_id and "
                                       "generation_kwargs.boi_token_id (or the tokenizer's bos / pad / boi tokens)")
            guidance = Guidance(scale, keep_ids=(int(bos), int(boi)), pad_id=int(pad), detach_uncond=detach_uncond)
        return cls(model, processor, guidance, source=path)

    @classmethod
    def build(cls, path: str | Path, prompts: Sequence[Any], progress: bool = True, **kwargs: Any) -> Path:
        """Write a tiny random Janus-Pro folder at ``path`` (``model.build`` keys: ``seed``; the demo's model,
        `testing.write_tiny_janus`); the prompts are not needed (no warm start)."""
        from .testing import write_tiny_janus

        unknown = sorted(set(kwargs) - {"seed"})
        if unknown:
            raise ValueError(f"model.build: unknown keys {unknown} for the tiny Janus (known: ['seed'])")
        return write_tiny_janus(path, seed=int(kwargs.get("seed", 0)))

    # -- prompts -------------------------------------------------------------------------------------

    def prompt_text(self, caption: str) -> str:
        """The prompt as text, up to and including ``<begin_of_image>`` (the tokenizer adds BOS)."""
        return chat_text(self.processor, caption) + self.processor.image_start_token

    def tokenize_prompts(self, captions: Sequence[str]) -> PromptBatch:
        return encode_prompts(self.processor, captions)

    # -- images ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, hidden_states: torch.Tensor | None = None, *,
               generators: Sequence[torch.Generator] | None = None) -> list[Image.Image]:
        """Codes ``[B, N]`` → RGB images through the official VQ decoder and the processor's postprocess
        (deterministic: no noise, ``hidden_states`` and ``generators`` unused)."""
        if codes.ndim != 2 or codes.shape[1] != self.layout.tokens_per_image:
            raise ValueError(f"got codes of shape {list(codes.shape)}; expected [B, {self.layout.tokens_per_image}]")
        pixels = self.model.decode_image_tokens(codes.to(self.device)).float()  # [B, H, W, 3], about [-1, 1]
        finite = torch.isfinite(pixels).flatten(1).all(1).tolist()  # [B] (host sync: once per decode)
        chw = list(pixels.nan_to_num(0.0).permute(0, 3, 1, 2).cpu())  # channels first: unambiguous when small
        images = list(self.processor.postprocess(chw, return_tensors="PIL.Image.Image")["pixel_values"])
        for image, ok in zip(images, finite, strict=True):
            if not ok:  # the sample is failed (never scored), not decoded from garbage
                mark_decode_error(image, "the VQ decoder produced non-finite pixels")
        return images

    # -- parameters and export -----------------------------------------------------------------------

    def frozen_parameters(self) -> list[nn.Parameter]:
        """VQ-VAE, understanding encoder and aligner, and an untied ``lm_head``: never trained."""
        inner = self.model.model
        params = [*inner.vqmodel.parameters(), *inner.vision_model.parameters(), *inner.aligner.parameters()]
        head = self.model.lm_head.weight
        if head is not self.model.get_input_embeddings().weight:
            params.append(head)
        return params

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the model (in its current dtype), generation config and processor as a folder that
        ``JanusForConditionalGeneration.from_pretrained`` loads; merge LoRA adapters first."""
        out = Path(path)
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"export folder {out} is not empty: choose a new folder or remove it")
        adapter = [k for k in self.model.state_dict() if "lora_" in k or ".base_layer." in k]
        if adapter:
            raise ValueError(f"the model still holds a LoRA adapter ({adapter[0]}): merge it into the weights first")
        self.model.save_pretrained(out)
        self.processor.save_pretrained(out)
        return out
