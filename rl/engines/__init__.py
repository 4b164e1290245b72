"""Rollout engines behind one interface (`base.RolloutEngine`); chosen by ``rollout.engine`` in a recipe."""

from typing import Any

from blip3o_rl import registry
from blip3o_rl.rl.engines.base import Rollout, RolloutEngine, SamplingParams, stream_seed
from blip3o_rl.rl.engines.kv_cache import KVCacheEngine

__all__ = ["KVCacheEngine", "Rollout", "RolloutEngine", "SamplingParams", "build_engine", "stream_seed"]


def build_engine(name: str, **kwargs: Any) -> RolloutEngine:
    """The rollout engine ``name`` (``rollout.engine``): a registered ``blip3o_rl.engine`` name ("kv_cache"),
    or "package.module:Class" / "path/to/file.py:Class", built with ``kwargs`` (``rollout.engine_kwargs``)."""
    if name == "vllm":
        raise NotImplementedError(
            "the vLLM rollout engine is not implemented yet; use rollout.engine=kv_cache (see README)"
        )
    return registry.build("engine", name, **kwargs)
