"""Atomic, checksummed training checkpoints.

Layout of ``<output_dir>/checkpoints/step_000010/``:

- ``weights.safetensors``: the LoRA adapter, or all policy weights (full fine-tuning);
- ``optimizer.pt``, ``scheduler.pt``, ``trainer_state.pt``: tensors and plain containers only,
  loaded with ``weights_only=True`` (step, data position, RNG states);
- ``trainer_state.json``: the same step and data position, for people and scripts;
- ``config.yaml``: the resolved configuration that wrote the checkpoint (what ``--resume`` compares);
- ``rank_00000.pt`` ...: one per process (its RNG states), written by every rank (rl/parallel/checkpoint_shards.py);
- ``deepspeed/``: DeepSpeed's own sharded model / optimizer files, under DeepSpeed only;
- ``manifest.json``, written last: the sha256 and size of every other file, checked on load.

Several processes stage their files into the same temporary folder (`staging_dir`, on a filesystem
every node shares); rank 0 then writes its files and the manifest and renames the folder into place.

A checkpoint is written into a temporary folder and renamed into place, then ``latest`` (a text
file naming the folder) is replaced atomically: a crash mid-save never leaves a corrupt latest
checkpoint. A file whose checksum does not match fails to load with an error naming it.
Checkpoints written before manifests existed (no ``manifest.json``) still load, unverified, with
one warning saying so.

Pruning (``keep_last``) only removes checkpoints *older* than the one just saved, never a newer one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError

LATEST = "latest"
MANIFEST = "manifest.json"
CONFIG = "config.yaml"
FILES = ("weights.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.pt")
_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))

logger = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    path: Path
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    state: dict[str, Any]
    config_text: str | None = None  # the config.yaml saved with it (None: an older checkpoint)


def step_of(path: Path) -> int | None:
    """The step of a ``step_000010`` folder name, else None."""
    digits = path.name.removeprefix("step_")
    return int(digits) if path.name.startswith("step_") and digits.isdigit() else None


def checkpoints(root: Path) -> list[Path]:
    """Finished checkpoint folders under ``root``, oldest step first."""
    found = [p for p in root.glob("step_*") if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=lambda p: step_of(p) or 0)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def staging_dir(root: Path, step: int) -> Path:
    """The temporary folder checkpoint ``step`` is written into before it is renamed into place."""
    return root / f".step_{step:06d}.tmp"


def save_checkpoint(
    root: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    state: dict[str, Any],
    keep_last: int = 2,
    config_text: str | None = None,
    staged: bool = False,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically and prune older ones down to ``keep_last``.

    ``staged``: other processes already wrote their files into `staging_dir` (kept, and listed in the
    manifest with the rest). A failed write (disk full, ...) removes the partial folder and raises
    `CheckpointError` naming the file and the previous checkpoint, which is untouched.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = staging_dir(root, step)
    if not staged:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {k: v for k, v in state.items() if isinstance(v, (int, float, str)) or k == "data"}
    writers: list[tuple[str, Callable[[Path], object]]] = [
        # safetensors refuses tensors that share storage (tied embeddings): store contiguous copies.
        ("weights.safetensors", lambda p: save_file({k: v.detach().contiguous().clone() for k, v in weights.items()}, p)),
        ("optimizer.pt", lambda p: torch.save(optimizer, p)),
        ("scheduler.pt", lambda p: torch.save(scheduler, p)),
        ("trainer_state.pt", lambda p: torch.save(state, p)),
        ("trainer_state.json", lambda p: p.write_text(json.dumps(summary, indent=2))),
    ]
    if config_text is not None:
        writers.append((CONFIG, lambda p: p.write_text(config_text)))
    current = tmp
    try:
        tmp.mkdir(exist_ok=staged)
        for name, write in writers:
            current = tmp / name
            write(current)
        current = tmp
        files = {}
        for f in sorted(p for p in tmp.rglob("*") if p.is_file()):  # rank 0's files and those staged by others
            current = f
            files[f.relative_to(tmp).as_posix()] = {"sha256": sha256(f), "bytes": f.stat().st_size}
        current = tmp / MANIFEST
        current.write_text(json.dumps({"format": 1, "step": step, "files": files}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _atomic_write_text(root / LATEST, final.name)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(root)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        where = final / current.name if current != tmp else final
        no_space = (isinstance(exc, OSError) and exc.errno in _NO_SPACE) or "No space left" in str(exc) or (
            "enforce fail" in str(exc) and "inline_container" in str(exc))
        why = "no space left" if no_space else f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"{why} writing {where}; {kept}") from exc
    prune_checkpoints(root, step, keep_last)
    return final


def prune_checkpoints(root: Path, newest: int, keep_last: int) -> list[Path]:
    """Delete checkpoints older than step ``newest`` beyond the ``keep_last`` newest (0 keeps all).

    Never deletes ``newest`` itself or anything after it, whatever the folder names sort as.
    """
    if keep_last <= 0:
        return []
    older = [p for p in checkpoints(root) if (step_of(p) or 0) < newest]
    doomed = older[: max(0, len(older) - (keep_last - 1))]
    for old in doomed:
        shutil.rmtree(old, ignore_errors=True)
    return doomed


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if path.is_dir() else None


def verify_checkpoint(path: Path, required: tuple[str, ...] = FILES) -> bool:
    """Check every file against ``manifest.json``; False for an older checkpoint without one.

    Raises `CheckpointError` naming the first missing (of ``required`` or the manifest's) or corrupt file.
    """
    missing = [n for n in required if not (path / n).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    manifest = path / MANIFEST
    if not manifest.is_file():
        return False
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{manifest} is corrupt ({exc}): the checkpoint cannot be verified") from None
    for name, entry in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint file {f} is missing (listed in {manifest})")
        if f.stat().st_size != entry["bytes"] or sha256(f) != entry["sha256"]:
            raise CheckpointError(f"checkpoint file {f} is corrupt: its sha256 does not match {manifest}")
    return True


def resolve_checkpoint(root: Path, name: str) -> Path:
    """A checkpoint named by a folder path, ``step_N`` or ``N`` (under ``root``); `CheckpointError` if none."""
    if Path(name).is_dir():
        return Path(name)
    digits = name.removeprefix("step_")
    if digits.isdigit() and (root / f"step_{int(digits):06d}").is_dir():
        return root / f"step_{int(digits):06d}"
    found = ", ".join(p.name for p in checkpoints(root)) or "none"
    raise CheckpointError(f"--resume {name}: no such checkpoint (a folder, step_N or N; in {root}: {found})")


def load_checkpoint(path: Path, verify: bool = True) -> Checkpoint:
    """Load a checkpoint folder, checking its files' checksums first unless ``verify`` is False (done
    already). Never unpickles arbitrary objects: ``weights_only=True``."""
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if verify and not verify_checkpoint(path):
        logger.warning("checkpoint %s predates checksums (no %s): loaded without verification", path, MANIFEST)

    def read(name: str, fn: Callable[[Path], Any]) -> Any:
        try:
            return fn(path / name)
        except Exception as exc:  # unreadable although it matched its checksum (or an unverified old file)
            raise CheckpointError(f"checkpoint file {path / name} cannot be read: {type(exc).__name__}: {exc}") from None

    config = path / CONFIG
    return Checkpoint(
        path=path,
        weights=read("weights.safetensors", load_file),
        optimizer=read("optimizer.pt", lambda p: torch.load(p, weights_only=True)),
        scheduler=read("scheduler.pt", lambda p: torch.load(p, weights_only=True)),
        state=read("trainer_state.pt", lambda p: torch.load(p, weights_only=True)),
        config_text=config.read_text() if config.is_file() else None,
    )


def previous_intact(root: Path, before: Path) -> Path | None:
    """The newest checkpoint older than ``before`` whose files match their checksums."""
    step = step_of(before)
    for p in reversed(checkpoints(root)):
        if step is not None and (step_of(p) or 0) >= step:
            continue
        try:
            verify_checkpoint(p)
        except CheckpointError:
            continue
        return p
    return None
