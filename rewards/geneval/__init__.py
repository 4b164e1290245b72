"""GenEval: prompt-alignment scoring by object detection (rules, metadata, prompts, reward, benchmark).

Importing this package loads only the pure parts (no torch): the rule engine and metadata tools.
The detector, colour classifier, reward and benchmark live in their own modules.
"""

from .metadata import (
    COLORS,
    GENEVAL_OBJECTS,
    RELATIONS,
    TAGS,
    MetadataError,
    load_metadata,
    validate_metadata,
)
from .rules import evaluate_detections, relative_position

__all__ = [
    "COLORS",
    "GENEVAL_OBJECTS",
    "RELATIONS",
    "TAGS",
    "MetadataError",
    "evaluate_detections",
    "load_metadata",
    "relative_position",
    "validate_metadata",
]
