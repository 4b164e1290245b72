"""Image-token policies: `load_policy(kind, path)` builds a registered or user-supplied policy class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import registry
from .base import ImageTokenPolicy, PromptBatch
from .model import ImageTokenLayout, ImageTokenLM, SamplingParams

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def policy_class(kind: str) -> type[ImageTokenPolicy]:
    """The policy class ``kind`` names: a registered name (entry points ``blip3o_rl.policy``: "tiny",
    "blip3o_next", "janus"), "package.module:Class" or "path/to/file.py:Class"."""
    return registry.resolve("policy", kind)


def can_build(cls: type) -> bool:
    """Whether ``cls`` overrides `ImageTokenPolicy.build` (can write a new model folder)."""
    return any("build" in vars(k) for k in cls.__mro__ if k not in (ImageTokenPolicy, object))


def load_policy(kind: str, path: str | Path, dtype: str = "float32", **kwargs) -> ImageTokenPolicy:
    """Load the policy ``kind`` (see `policy_class`) from a local folder.

    ``kwargs`` go to the class's ``from_pretrained`` (e.g. ``diffusion_path`` for BLIP3o-NEXT).
    """
    cls: Any = policy_class(kind)  # subclasses define from_pretrained with their own keywords
    registry.check_kwargs("policy", kind, cls.from_pretrained, {"dtype": None, **kwargs})
    return cls.from_pretrained(path, dtype=DTYPES[dtype], **kwargs)


__all__ = ["DTYPES", "ImageTokenLM", "ImageTokenLayout", "ImageTokenPolicy", "PromptBatch", "SamplingParams",
           "can_build", "load_policy", "policy_class"]
