"""Loading a model folder's tokenizer with an error that names the folder and the files it needs.

Without its files, transformers falls back to converting a slow tokenizer and fails with a message about
sentencepiece or tiktoken, or builds a tokenizer of a couple of tokens; a damaged file fails with a bare
JSON error. `load_tokenizer_files` checks the files first and names them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from .errors import ModelFolderError

T = TypeVar("T")


class TokenizerError(ModelFolderError):
    """A model folder's tokenizer files are missing or cannot be read."""


def load_tokenizer_files(folder: str | Path, load: Callable[[Path], T], alternatives: Sequence[Sequence[str]],
                         also: Sequence[str] = ()) -> T:
    """``load(folder)`` once the folder holds one of the file sets ``alternatives`` (e.g. ``tokenizer.json``,
    or ``vocab.json`` + ``merges.txt``) and every file of ``also``; `TokenizerError` naming the folder and
    the expected files when they are missing or ``load`` cannot read them."""
    folder = Path(folder)
    expected = " or ".join(" + ".join(files) for files in alternatives) + "".join(f", with {f}" for f in also)
    present = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    missing = [f for f in also if f not in present]
    if not any(all(f in present for f in files) for files in alternatives):
        missing = [f for f in alternatives[0] if f not in present] + missing
    if missing:
        raise TokenizerError(f"{folder}: no tokenizer: {', '.join(missing)} missing (expected {expected}, as "
                             "tokenizer.save_pretrained writes them)")
    for name in sorted(f for f in present if f.endswith(".json") and f.startswith("tokenizer")):
        try:
            json.loads((folder / name).read_bytes())
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise TokenizerError(f"{folder / name}: not a readable JSON file ({exc}); the tokenizer needs {expected}") \
                from None
    try:
        return load(folder)
    except Exception as exc:  # transformers / tokenizers raise OSError, ValueError, JSON and Rust errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise TokenizerError(f"{folder}: the tokenizer files ({expected}) cannot be read: {type(exc).__name__}: "
                             f"{first}") from None
