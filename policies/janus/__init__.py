"""Janus / Janus-Pro: load the official transformers folder offline, prompt, guide (CFG) and decode.

Public entry points: `JanusPolicy.from_pretrained(path)` (registered as policy ``janus``) and, for tests,
`testing.write_tiny_janus(out_dir)`.
"""

from .model import JanusImageTokenLM
from .policy import DEFAULT_GUIDANCE_SCALE, JanusConfigError, JanusPolicy

__all__ = ["DEFAULT_GUIDANCE_SCALE", "JanusConfigError", "JanusImageTokenLM", "JanusPolicy"]
