"""The built-in tiny world (tiny Qwen3 image-token model + palette decoder) for CPU demos and tests."""

from .world import PALETTE, TinyWorldPolicy, build_tokenizer, make_tiny_world

__all__ = ["PALETTE", "TinyWorldPolicy", "build_tokenizer", "make_tiny_world"]
