"""The AR sampling values a BLIP3o-NEXT checkpoint implies: its ``generation_config.json``, and inference.

The official GRPO rollout calls ``generate(do_sample=True, temperature=1.0)`` with no ``top_k`` /
``top_p``, so whatever the checkpoint's ``generation_config.json`` holds applies, and transformers'
defaults where it holds nothing: **top-k 50, top-p 1.0** (e.g. Qwen3's own file would give top-k 20,
top-p 0.95). `checkpoint_sampling` reproduces that resolution from the folder, offline, and says which
applied. The official inference script samples with `INFERENCE` (top-k 1200, top-p 0.95): the values
published GenEval / OCR numbers were measured with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GENERATION_CONFIG = "generation_config.json"

#: transformers' ``GenerationConfig`` defaults, which apply to keys a checkpoint's file does not set.
TRANSFORMERS_DEFAULT_TOP_K = 50
TRANSFORMERS_DEFAULT_TOP_P = 1.0


@dataclass(frozen=True)
class SamplingValues:
    """AR sampling settings and where they came from (``top_k`` 0 / ``top_p`` 1.0: no truncation)."""

    temperature: float
    top_k: int
    top_p: float
    source: str  # human-readable: which file / default applied


#: The official inference script's AR sampling (temperature 1.0, top-k 1200, top-p 0.95).
INFERENCE = SamplingValues(1.0, 1200, 0.95, "BLIP3o-NEXT's inference script (top-k 1200, top-p 0.95)")


def checkpoint_sampling(folder: str | Path) -> SamplingValues:
    """What ``generate(do_sample=True)`` samples with for the checkpoint in ``folder`` (see the module doc).

    A key absent from ``generation_config.json`` (or no file at all) takes transformers' default; a key
    set to null or 0 (``top_k``) disables that truncation, as in transformers.
    """
    path = Path(folder) / GENERATION_CONFIG
    raw = {}
    if path.is_file():
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    top_k = raw.get("top_k", TRANSFORMERS_DEFAULT_TOP_K)
    top_p = raw.get("top_p", TRANSFORMERS_DEFAULT_TOP_P)
    temperature = raw.get("temperature", 1.0)
    given = [k for k in ("top_k", "top_p", "temperature") if k in raw]
    if not path.is_file():
        source = f"no {GENERATION_CONFIG} in {folder}: transformers' defaults (top-k {TRANSFORMERS_DEFAULT_TOP_K})"
    elif given:
        source = f"{path} ({', '.join(f'{k} {raw[k]}' for k in given)}; others: transformers' defaults)"
    else:
        source = f"{path} has no sampling keys: transformers' defaults (top-k {TRANSFORMERS_DEFAULT_TOP_K})"
    return SamplingValues(
        temperature=1.0 if temperature is None else float(temperature),
        top_k=0 if top_k is None else int(top_k),
        top_p=1.0 if top_p is None else float(top_p),
        source=source,
    )
