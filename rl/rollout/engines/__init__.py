"""Rollout engines behind one interface (`base.RolloutEngine`); chosen by ``rollout.engine`` in a recipe.

Registered (``blip3o_rl.engine`` entry points): ``kv_cache`` (alias ``hf``: eager, Hugging Face's dynamic
cache; the oracle), ``static`` (static KV cache, compilable step), ``vllm`` (in-process vLLM) and
``vllm_server`` (a vLLM server process). The vLLM engines import vLLM only when set up.
"""

from typing import Any

from .... import registry
from .base import Rollout, RolloutEngine, SamplingParams, stream_seed
from .kv_cache import KVCacheEngine
from .static import StaticCacheEngine

__all__ = ["KVCacheEngine", "Rollout", "RolloutEngine", "SamplingParams", "StaticCacheEngine", "build_engine",
           "stream_seed"]


def build_engine(name: str, **kwargs: Any) -> RolloutEngine:
    """The rollout engine ``name`` (``rollout.engine``): a registered ``blip3o_rl.engine`` name ("kv_cache",
    "hf", "static", "vllm", "vllm_server"), or "package.module:Class" / "path/to/file.py:Class", built with
    ``kwargs`` (``rollout.engine_kwargs``)."""
    return registry.build("engine", name, **kwargs)
