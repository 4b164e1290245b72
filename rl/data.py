"""Prompt data: loading and a resumable, shuffled, rank-aware sampler.

Two formats:

- ``.jsonl``: one JSON object per line with a string ``prompt``; every other field is metadata handed
  to the rewards (GenEval metadata rows are such files);
- anything else: one prompt per line (blank lines skipped), metadata ``{}``.

A bad line fails with the file, the line number and the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


class PromptFileError(ValueError):
    pass


@dataclass(frozen=True)
class PromptRow:
    prompt: str
    metadata: dict[str, Any]
    line: int = field(default=0, compare=False)  # line in its file (0: not from a file)


def load_prompts(path: str | Path) -> list[PromptRow]:
    """Read a prompt file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    rows: list[PromptRow] = []
    jsonl = path.suffix == ".jsonl"
    try:
        lines = path.read_bytes().decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise PromptFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not jsonl:
            rows.append(PromptRow(line.removesuffix("\r"), {}, lineno))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptFileError(f"{path}:{lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise PromptFileError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptFileError(f"{path}:{lineno}: field 'prompt' must be a non-empty string, got {prompt!r}")
        rows.append(PromptRow(prompt, {k: v for k, v in obj.items() if k != "prompt"}, lineno))
    if not rows:
        raise PromptFileError(f"{path}: no prompts")
    return rows


def check_prompt_lengths(rows: Sequence[PromptRow], path: str | Path, count: Callable[[list[str]], list[int]],
                         image_tokens: int, context: int | None, batch: int = 64) -> None:
    """Refuse prompts that leave no room for the image: ``count(prompts)`` tokens + ``image_tokens`` must fit
    the model's ``context`` (positions); the error names the file and line of the first that does not."""
    if not context:
        return
    room = context - image_tokens
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        for row, n in zip(chunk, count([r.prompt for r in chunk]), strict=True):
            if n > room:
                raise PromptFileError(
                    f"{path}:{row.line}: the prompt is {n} tokens; with the {image_tokens} image tokens it exceeds "
                    f"the model's {context} positions (at most {room} prompt tokens): shorten or remove it")


def check_policy_prompts(policy: Any, rows: Sequence[PromptRow], path: str | Path) -> None:
    """`check_prompt_lengths` for ``policy`` (an `ImageTokenPolicy`): its tokenizer counts the prompt tokens,
    its layout gives the image tokens, its model config's ``max_position_embeddings`` the positions (none: no
    check). Used by ``train`` (train and eval prompts), ``generate`` and ``eval``."""
    context = getattr(getattr(policy.model, "config", None), "max_position_embeddings", None)
    check_prompt_lengths(rows, path, lambda texts: policy.tokenize_prompts(texts).attention_mask.sum(1).tolist(),
                         policy.layout.tokens_per_image, context if isinstance(context, int) else None)


def write_prompt_splits(out_dir: str | Path, stem: str, train: list[dict], held_out: list[dict]) -> None:
    """Write ``<stem>_train.jsonl`` and ``<stem>_eval.jsonl`` (rows with ``prompt`` + metadata) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("eval", held_out)):
        (out / f"{stem}_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


class PromptSampler:
    """Yields the step's ``prompts_per_step`` rows (over all ranks) epoch after epoch, and keeps ``mine``.

    Every rank draws the same global permutation from ``seed`` and the epoch and the same
    ``prompts_per_step`` prompts each step, and keeps the indices ``mine`` among them
    (`BatchLayout.prompts`, rl/batch_layout.py: disjoint between ranks holding whole groups, shared by the
    ranks of a split group; None: all). State is ``(epoch, position)``, the same on every rank.
    """

    def __init__(self, rows: list[PromptRow], prompts_per_step: int, seed: int, shuffle: bool = True,
                 mine: range | None = None):
        self.rows, self.per_step, self.seed, self.shuffle = rows, prompts_per_step, seed, shuffle
        self.mine = range(prompts_per_step) if mine is None else mine
        if self.mine.step != 1 or self.mine.start < 0 or self.mine.stop > prompts_per_step:
            raise ValueError(f"prompts {self.mine} are not among the step's {prompts_per_step}")
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.rows)))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(len(self.rows), generator=g).tolist()

    def next_batch(self) -> list[PromptRow]:
        """The next step's rows for this rank (wrapping into a new epoch when the data runs out)."""
        picked: list[int] = []
        while len(picked) < self.per_step:
            if self.position >= len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            take = min(self.per_step - len(picked), len(self._order) - self.position)
            picked += self._order[self.position : self.position + take]
            self.position += take
        return [self.rows[i] for i in picked[self.mine.start : self.mine.stop]]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()
