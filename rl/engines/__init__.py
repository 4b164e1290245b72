"""Rollout engines behind one interface (`base.RolloutEngine`); chosen by ``rollout.engine`` in a recipe."""

from blip3o_rl.rl.engines.base import Rollout, RolloutEngine, SamplingParams, stream_seed
from blip3o_rl.rl.engines.kv_cache import KVCacheEngine

__all__ = ["KVCacheEngine", "Rollout", "RolloutEngine", "SamplingParams", "build_engine", "stream_seed"]


def build_engine(name: str, **kwargs) -> RolloutEngine:
    """The engine ``name`` (``rollout.engine``) built with ``kwargs`` (``rollout.engine_kwargs``)."""
    engines = {"kv_cache": KVCacheEngine}
    if name == "vllm":
        raise NotImplementedError(
            "the vLLM rollout engine is not implemented yet; use rollout.engine=kv_cache (see README)"
        )
    if name not in engines:
        raise ValueError(f"unknown rollout engine {name!r}; choose from {sorted(engines)}")
    return engines[name](**kwargs)
