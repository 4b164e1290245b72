"""The OCR reward formula of Flow-GRPO (used by BLIP3o-NEXT), as pure functions.

The prompt names the text to render between its first pair of double quotes. The OCR engine returns
text lines with confidences. Lines with confidence > 0 are joined; spaces are removed from both
texts and both are lower-cased. The reward is 1 when the target is a substring of the recognised
text, else ``1 - min(Levenshtein(recognised, target), len(target)) / len(target)``: in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

from rapidfuzz.distance import Levenshtein

OCRLines = Sequence[tuple[str, float]]


class OCRPromptError(ValueError):
    """A prompt has no usable text in double quotes, so the OCR reward cannot score it."""


def extract_target(prompt: str) -> str:
    """Return the text between the first pair of straight double quotes of ``prompt``.

    Raises `OCRPromptError` (naming the prompt) when there is no such pair, or when the quoted text
    is empty once spaces are removed (the formula divides by its length).
    """
    start = prompt.find('"')
    if start < 0:
        raise OCRPromptError(f'OCR prompt has no text in straight double quotes ("..."): {prompt!r}')
    end = prompt.find('"', start + 1)
    if end < 0:
        raise OCRPromptError(
            f"OCR prompt opens a double quote at character {start} but never closes it: {prompt!r}"
        )
    target = prompt[start + 1 : end]
    if not normalize_text(target):
        raise OCRPromptError(f"OCR prompt has an empty quoted text (spaces only count as empty): {prompt!r}")
    return target


def normalize_text(text: str) -> str:
    """What the reference compares: spaces (only U+0020) removed, then lower-cased."""
    return text.replace(" ", "").lower()


def recognized_text(ocr_lines: OCRLines, sep: str = "") -> str:
    """The OCR lines with confidence > 0, in engine order, joined with ``sep``."""
    return sep.join(text for text, confidence in ocr_lines if confidence > 0)


def text_reward(target: str, ocr_lines: OCRLines) -> float:
    """The OCR reward of ``ocr_lines`` for an already extracted ``target`` text."""
    want = normalize_text(target)
    if not want:
        raise OCRPromptError(f"OCR target text {target!r} is empty once spaces are removed")
    got = normalize_text(recognized_text(ocr_lines))
    if want in got:
        return 1.0
    # The cap: reading many unrelated characters costs no more than reading nothing.
    dist = min(Levenshtein.distance(got, want), len(want))
    return 1.0 - dist / len(want)


def ocr_reward(prompt: str, ocr_lines: OCRLines) -> float:
    """The Flow-GRPO OCR reward of ``ocr_lines`` (``(text, confidence)`` pairs) for ``prompt``.

    >>> ocr_reward('a sign that says "Hello World"', [("HELLO", 0.9), ("world!", 0.8)])
    1.0
    """
    return text_reward(extract_target(prompt), ocr_lines)
