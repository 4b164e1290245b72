"""Atomic training checkpoints.

Layout of ``<output_dir>/checkpoints/step_000010/``:

- ``weights.safetensors``: the LoRA adapter, or all policy weights (full fine-tuning);
- ``optimizer.pt``, ``scheduler.pt``, ``trainer_state.pt``: tensors and plain containers only,
  loaded with ``weights_only=True`` (step, data position, RNG states);
- ``trainer_state.json``: the same step and data position, for people and scripts.

A checkpoint is written into a temporary folder and renamed into place, then ``latest`` (a text
file naming the folder) is replaced atomically: a crash mid-save never leaves a corrupt latest
checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

LATEST = "latest"


@dataclass
class Checkpoint:
    path: Path
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    state: dict[str, Any]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(
    root: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    state: dict[str, Any],
    keep_last: int = 2,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically and prune all but the ``keep_last`` newest."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".step_{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    # safetensors refuses tensors that share storage (tied embeddings): store contiguous copies.
    save_file({k: v.detach().contiguous().clone() for k, v in weights.items()}, tmp / "weights.safetensors")
    torch.save(optimizer, tmp / "optimizer.pt")
    torch.save(scheduler, tmp / "scheduler.pt")
    torch.save(state, tmp / "trainer_state.pt")
    summary = {k: v for k, v in state.items() if isinstance(v, (int, float, str)) or k == "data"}
    (tmp / "trainer_state.json").write_text(json.dumps(summary, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_write_text(root / LATEST, final.name)
    if keep_last > 0:
        done = sorted(p for p in root.glob("step_*") if p.is_dir())
        for old in done[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if path.is_dir() else None


def load_checkpoint(path: Path) -> Checkpoint:
    """Load a checkpoint folder (never unpickles arbitrary objects: ``weights_only=True``)."""
    missing = [n for n in ("weights.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.pt")
               if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    return Checkpoint(
        path=path,
        weights=load_file(path / "weights.safetensors"),
        optimizer=torch.load(path / "optimizer.pt", weights_only=True),
        scheduler=torch.load(path / "scheduler.pt", weights_only=True),
        state=torch.load(path / "trainer_state.pt", weights_only=True),
    )
