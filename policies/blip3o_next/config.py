"""The BLIP3o-NEXT ``config.json``: special-token ids, image layout and the Qwen3 backbone config.

An official checkpoint folder carries one ``config.json`` in the Qwen3 layout plus the keys the
BLIP3o training code adds when it extends the vocabulary (``image_start_tag_id`` for ``<im_start>``,
``scale_start_token_id`` for ``<S0>``, ``image_start_token_id`` for ``<I0>`` ...) and
``diffusion_name_or_path``, the SANA diffusers folder whose configs describe the refiner. Every id
is read from there, never assumed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from transformers import AutoConfig, Qwen3Config

CONFIG_FILE = "config.json"

#: ``model_type`` values written by the BLIP3o code (its classes reset the type to "blip3o_qwen" on
#: init; the inference/GRPO variants register their own names) and plain Qwen3 exports.
KNOWN_MODEL_TYPES = ("blip3o_qwen", "blip3o_qwen_inference", "blip3o_qwen_grpo", "qwen3")

#: Image tokens per image when the config does not say: TA-Tok at scale ``<S0>`` gives 27 x 27 = 729.
#: Official configs have no key for it; ``tokens_per_image`` (a blip3o-rl extension) overrides it.
DEFAULT_TOKENS_PER_IMAGE = 729

# Keys the BLIP3o training code adds to the Qwen3 config; not part of the backbone.
_TOKEN_ID_KEYS = ("image_start_tag_id", "image_end_tag_id", "scale_start_token_id", "image_start_token_id")


class Blip3oConfigError(ValueError):
    """A BLIP3o-NEXT ``config.json`` that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Blip3oNextConfig:
    """What blip3o-rl needs from an official ``config.json`` (read with `from_folder`)."""

    source: Path  # the config.json this was read from
    image_start_tag_id: int  # <im_start>
    image_end_tag_id: int  # <im_end>
    scale_start_token_id: int  # <S0>: the last prompt token, first conditioning position
    image_start_token_id: int  # <I0>: code k has id image_start_token_id + k
    num_image_tokens: int  # codebook size (65,536 for TA-Tok)
    tokens_per_image: int  # 729 = 27 x 27
    hidden_size: int
    vocab_size: int
    tie_word_embeddings: bool
    diffusion_name_or_path: str
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_folder(cls, folder: str | Path) -> Blip3oNextConfig:
        path = Path(folder) / CONFIG_FILE
        if not path.is_file():
            raise Blip3oConfigError(f"{path} does not exist: not a BLIP3o-NEXT checkpoint folder")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise Blip3oConfigError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        return cls.from_dict(raw, path)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: Path) -> Blip3oNextConfig:
        model_type = raw.get("model_type")
        if model_type not in KNOWN_MODEL_TYPES:
            raise Blip3oConfigError(
                f"{source}: model_type is {model_type!r}; a BLIP3o-NEXT checkpoint has one of {KNOWN_MODEL_TYPES}"
            )

        def integer(key: str, why: str) -> int:
            if key not in raw or raw[key] is None:
                raise Blip3oConfigError(f"{source}: missing key {key!r} ({why})")
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise Blip3oConfigError(f"{source}: {key!r} must be a non-negative integer, got {value!r}")
            return value

        vocab_size = integer("vocab_size", "size of the extended vocabulary")
        hidden_size = integer("hidden_size", "width of the Qwen3 backbone")
        ids = {
            key: integer(key, "special-token id written by the BLIP3o training code")
            for key in _TOKEN_ID_KEYS
        }
        if "num_image_tokens" in raw:
            num_codes = integer("num_image_tokens", "image codebook size")
        elif "image_end_token_id" in raw:  # older configs: the range <I0> ... <I{K-1}> only
            num_codes = (
                integer("image_end_token_id", "id of the last image token") - ids["image_start_token_id"] + 1
            )
        else:
            raise Blip3oConfigError(
                f"{source}: missing key 'num_image_tokens' (and 'image_end_token_id'): cannot tell the codebook size"
            )
        tokens_per_image = (
            integer("tokens_per_image", "image tokens per image")
            if "tokens_per_image" in raw
            else DEFAULT_TOKENS_PER_IMAGE
        )
        diffusion = raw.get("diffusion_name_or_path")
        if not isinstance(diffusion, str) or not diffusion:
            raise Blip3oConfigError(
                f"{source}: missing key 'diffusion_name_or_path' (the SANA diffusers folder or hub id)"
            )
        config = cls(
            source=source,
            num_image_tokens=num_codes,
            tokens_per_image=tokens_per_image,
            hidden_size=hidden_size,
            vocab_size=vocab_size,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            diffusion_name_or_path=diffusion,
            raw=MappingProxyType(dict(raw)),
            **ids,
        )
        config._check_ranges()
        return config

    def _check_ranges(self) -> None:
        for key in _TOKEN_ID_KEYS:
            if getattr(self, key) >= self.vocab_size:
                raise Blip3oConfigError(
                    f"{self.source}: {key}={getattr(self, key)} is outside the vocabulary (vocab_size={self.vocab_size})"
                )
        if self.num_image_tokens < 1 or self.image_start_token_id + self.num_image_tokens > self.vocab_size:
            raise Blip3oConfigError(
                f"{self.source}: image tokens {self.image_start_token_id} .. "
                f"{self.image_start_token_id + self.num_image_tokens - 1} do not fit in vocab_size={self.vocab_size}"
            )
        if self.tokens_per_image < 1:
            raise Blip3oConfigError(
                f"{self.source}: tokens_per_image must be positive, got {self.tokens_per_image}"
            )

    def qwen3_config(self) -> Qwen3Config:
        """The backbone config: a plain ``Qwen3Config`` (model_type "qwen3") with the BLIP3o keys kept as
        attributes, so ``Qwen3ForCausalLM``, peft and vLLM see a stock Qwen3 model."""
        values = {k: v for k, v in self.raw.items() if k not in ("model_type", "architectures", "auto_map")}
        values["architectures"] = ["Qwen3ForCausalLM"]
        return Qwen3Config(**values)


class Blip3oQwenConfig(Qwen3Config):
    """Lets ``AutoConfig.from_pretrained`` read an official folder (``model_type: "blip3o_qwen"``)."""

    model_type = "blip3o_qwen"


AutoConfig.register("blip3o_qwen", Blip3oQwenConfig, exist_ok=True)
