"""BLIP3o-NEXT: load the official checkpoint folder offline, prompt, condition and decode.

Public entry points: `Blip3oNextPolicy.from_pretrained(path)` and `load_blip3o_next(path)`; the
reverse, an official-layout folder from a trained model: `Blip3oNextPolicy.save_pretrained(path)`.
"""

from .checkpoint import CheckpointError
from .config import Blip3oConfigError, Blip3oNextConfig
from .decoder import Blip3oNextDecoder, DecodeSettings
from .export import save_blip3o_next
from .loader import Blip3oNextComponents, load_blip3o_next
from .policy import INFERENCE_SAMPLING, Blip3oNextPolicy

__all__ = [
    "INFERENCE_SAMPLING",
    "Blip3oConfigError",
    "Blip3oNextComponents",
    "Blip3oNextConfig",
    "Blip3oNextDecoder",
    "Blip3oNextPolicy",
    "CheckpointError",
    "DecodeSettings",
    "load_blip3o_next",
    "save_blip3o_next",
]
