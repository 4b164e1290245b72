"""The tiny world's sign task: write the quoted word of ``a sign that says "CAT"`` as glyph tiles.

The image is a row of `GlyphRenderer` tiles; the OCR reward reads it with a real engine. Prompt files
(``configs/data/tiny_ocr_{train,eval}.txt``, written by `write_sign_prompts`) hold one prompt per line
in the Flow-GRPO OCR format, so the same files drive training, the trainer's held-out evaluation and
``blip3o-rl eval ocr``.

Prompt words are spelled one character per token by the tiny tokenizer (its WordPiece falls back to
characters for unknown words) once ``sign``, ``that`` and ``says`` are known words (`PROMPT_WORDS`, the
recipe's ``model.build.extra_words``); words that would start with a known word (``ant`` → ``an`` +
``##t``) are left out, so that every letter reaches the model as a token of its own.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from ..rewards.ocr.metric import extract_target
from .glyphs import GLYPH_ALPHABET

SIGN_PROMPT = 'a sign that says "{word}"'
PROMPT_WORDS = ("sign", "that", "says")


def glyph_target_codes(row: dict, grid: tuple[int, int]) -> torch.Tensor:
    """The codes ``[rows * cols]`` of the sign for ``row["prompt"]``: its quoted text, upper-cased, as
    the last characters of the last row, blanks before it.

    Right alignment puts each letter's tile at a fixed distance from the prompt's closing quote, so
    every tile copies the prompt token at the same relative position: the simplest rule for a tiny
    model to learn.
    """
    rows, cols = grid
    text = extract_target(row["prompt"]).upper()
    if len(text) > cols:
        raise ValueError(f"prompt {row['prompt']!r}: {text!r} is longer than a row of {cols} tiles")
    unknown = sorted(set(text) - set(GLYPH_ALPHABET))
    if unknown:
        raise ValueError(f"prompt {row['prompt']!r}: no glyph for {unknown}; glyphs are {GLYPH_ALPHABET!r}")
    return torch.tensor([GLYPH_ALPHABET.index(c) for c in text.rjust(rows * cols)], dtype=torch.long)


def spelled_by_character(word: str, tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when ``tokenizer`` splits ``word`` into one token per character."""
    return len(tokenizer.tokenize(word)) == len(word)


def write_sign_prompts(
    words: list[str], out_dir: str | Path, tokenizer: PreTrainedTokenizerBase, num_eval: int = 64, seed: int = 0
) -> tuple[Path, Path]:
    """Write ``tiny_ocr_train.txt`` and ``tiny_ocr_eval.txt`` (``num_eval`` held-out words) to ``out_dir``.

    Keeps the distinct words of 3-5 letters A-Z that ``tokenizer`` spells by character, upper-cased.
    """
    keep = [w.upper() for w in dict.fromkeys(words)
            if 3 <= len(w) <= 5 and w.isascii() and w.isalpha() and spelled_by_character(w, tokenizer)]
    random.Random(seed).shuffle(keep)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "tiny_ocr_train.txt", out / "tiny_ocr_eval.txt"
    for path, part in zip(paths, (keep[num_eval:], keep[:num_eval]), strict=True):
        path.write_text("".join(SIGN_PROMPT.format(word=w) + "\n" for w in part))
    return paths
