"""Image-token policies: `load_policy(kind, path)` builds a registered or user-supplied policy class."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from blip3o_rl.policies.base import ImageTokenPolicy, PromptBatch
from blip3o_rl.policies.model import ImageTokenLayout, ImageTokenLM, SamplingParams

# kind -> "module:Class"; each class has `from_pretrained(path, dtype=...)`. Imported on first use.
POLICIES: dict[str, str] = {
    "tiny": "blip3o_rl.tiny.world:TinyWorldPolicy",
    "blip3o_next": "blip3o_rl.policies.blip3o_next:Blip3oNextPolicy",
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_policy(kind: str, path: str | Path, dtype: str = "float32", **kwargs) -> ImageTokenPolicy:
    """Load the policy ``kind`` ("tiny", "blip3o_next", or "package.module:Class") from a local folder.

    ``kwargs`` go to the class's ``from_pretrained`` (e.g. ``diffusion_path`` for BLIP3o-NEXT).
    """
    target = POLICIES.get(kind, kind)
    module_name, sep, attr = target.partition(":")
    if not sep:
        raise ValueError(f"unknown policy {kind!r}: use one of {sorted(POLICIES)} or 'package.module:Class'")
    cls = getattr(importlib.import_module(module_name), attr)
    return cls.from_pretrained(path, dtype=DTYPES[dtype], **kwargs)


__all__ = ["DTYPES", "POLICIES", "ImageTokenLM", "ImageTokenLayout", "ImageTokenPolicy", "PromptBatch",
           "SamplingParams", "load_policy"]
