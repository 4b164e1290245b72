"""What the preference rewards (`clip_score`, `pickscore`, `aesthetic`) share: loading, devices, batches.

- `model_source`: a model given as a local folder must exist (error at load, naming the reward and the
  keyword); anything else is a Hugging Face hub id. `load_pretrained` wraps ``from_pretrained`` so a
  folder that is not a model, or a hub id that cannot be fetched (offline), fails with the same clarity.
- `PretrainedReward`: the per-sample contract. Each image is checked first (a PIL image that decodes to
  RGB, non-empty); a bad one fails alone (``None``, reason in its details) while the others are scored
  in batches of ``batch_size`` on ``device`` (CUDA when there is one). Every result records the model ids.
- `clip_image_features` / `clip_text_features`: unit-norm CLIP embeddings through transformers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from .base import RewardOutput
from .hub import revision_kwargs


def model_source(spec: str, *, reward: str, field: str) -> str:
    """``spec`` as a local folder, or as a hub id ("org/name"); a path that does not exist raises now."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"{reward}: {field} must be a model folder or a hub id, got {spec!r}")
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"{reward}: {field}={spec!r} is a file; a model folder is needed")
        return str(path)
    if path.is_absolute() or spec.startswith((".", "~")) or spec.count("/") != 1:
        raise FileNotFoundError(f"{reward}: {field}={spec!r}: no such model folder")
    return spec  # "org/name": a hub id


def load_pretrained(loader: Callable[..., Any], spec: str, *, reward: str, field: str, **kwargs: Any) -> Any:
    """``loader(model_source(spec), **kwargs)``; a folder or hub id it cannot load raises naming the keyword.

    A default hub id loads at its pinned commit (`blip3o_rl.rewards.hub`)."""
    source = model_source(spec, reward=reward, field=field)
    try:
        return loader(source, **revision_kwargs(source), **kwargs)  # a default hub id at its pinned commit
    except (OSError, ValueError) as exc:
        where = "the folder" if Path(source).is_dir() else "the hub id (no local folder of that name)"
        raise FileNotFoundError(f"{reward}: {field}={spec!r}: {where} could not be loaded: {exc}") from exc


def resolve_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r} (float32, bfloat16, float16)")
    return value


def check_image(image: Any) -> tuple[Image.Image | None, str | None]:
    """(the RGB image, None), or (None, why it cannot be scored)."""
    if not isinstance(image, Image.Image):
        return None, f"not a PIL image: {type(image).__name__}"
    if image.width == 0 or image.height == 0:
        return None, f"empty image ({image.width}x{image.height})"
    try:
        return image.convert("RGB"), None
    except Exception as exc:  # a truncated or corrupt image fails to decode here
        return None, f"image cannot be decoded: {type(exc).__name__}: {exc}"


def _features(output: Any) -> torch.Tensor:
    # transformers 4.x returns the projected features; 5.x an output object carrying them as pooler_output.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def clip_image_features(model: Any, image_processor: Any, images: Sequence[Image.Image]) -> torch.Tensor:
    """``[N, D]`` unit-norm CLIP image embeddings (float32) of RGB images."""
    pixels = image_processor(images=list(images), return_tensors="pt")["pixel_values"]
    param = next(model.parameters())
    return F.normalize(_features(model.get_image_features(pixel_values=pixels.to(param.device, param.dtype))).float(), dim=-1)


@torch.no_grad()
def clip_text_features(model: Any, tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """``[N, D]`` unit-norm CLIP text embeddings (float32), truncated to the model's context (77 for CLIP)."""
    max_length = int(getattr(model.config.text_config, "max_position_embeddings", 77))
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    device = next(model.parameters()).device
    return F.normalize(_features(model.get_text_features(**enc.to(device))).float(), dim=-1)


class PretrainedReward:
    """Base of the preference rewards: per-image checks, batching, model ids in every result.

    Subclasses set ``self.model_ids`` (recorded in each sample's details) and implement `score_images`.
    """

    name = "pretrained"

    def __init__(self, *, device: str | None = None, dtype: torch.dtype | str | None = None, batch_size: int = 32):
        if batch_size < 1:
            raise ValueError(f"{self.name}: batch_size must be >= 1, got {batch_size}")
        self.device, self.dtype, self.batch_size = resolve_device(device), resolve_dtype(dtype), batch_size
        self.model_ids: dict[str, str] = {}

    def score_images(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> tuple[list[float], list[dict[str, Any]]]:
        """Scores (and extra details) of at most ``batch_size`` valid RGB images."""
        raise NotImplementedError

    def __call__(self, images, prompts, metadata) -> RewardOutput:
        scores: list[float | None] = [None] * len(images)
        details: list[dict[str, Any]] = [dict(self.model_ids) for _ in images]
        ok: list[tuple[int, Image.Image]] = []
        for i, image in enumerate(images):
            rgb, why = check_image(image)
            if rgb is None:
                details[i]["error"] = why
            else:
                ok.append((i, rgb))
        for start in range(0, len(ok), self.batch_size):
            chunk = ok[start : start + self.batch_size]
            values, extra = self.score_images([im for _, im in chunk], [prompts[i] for i, _ in chunk])
            for (i, _), value, more in zip(chunk, values, extra, strict=True):
                scores[i] = float(value)
                details[i].update(more)
        return RewardOutput(scores, details)
