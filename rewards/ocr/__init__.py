"""The OCR text-rendering reward (Flow-GRPO's metric, used by BLIP3o-NEXT's text RL run).

- `ocr_reward(prompt, ocr_lines)`: the formula, a pure function.
- `OCRReward` (``load_reward("ocr", engine=...)``): the batch reward over an OCR engine.
- `load_ocr_prompts(path)`: one-prompt-per-line files with the target text in double quotes.
- `evaluate`: benchmark scoring (mean OCR reward, exact-match rate, per-image jsonl, image dump).

Importing this package does not import an OCR engine; building `OCRReward` does.
"""

from .engines import OCREngine, get_ocr_engine
from .metric import (
    OCRPromptError,
    extract_target,
    normalize_text,
    ocr_reward,
    recognized_text,
    text_reward,
)
from .prompts import load_ocr_prompts
from .reward import OCRReward

__all__ = [
    "OCREngine",
    "OCRPromptError",
    "OCRReward",
    "extract_target",
    "get_ocr_engine",
    "load_ocr_prompts",
    "normalize_text",
    "ocr_reward",
    "recognized_text",
    "text_reward",
]
