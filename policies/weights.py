"""Checks on the weights a policy loads: every floating tensor must be finite.

A NaN or infinity in a weight file (a diverged run, a corrupted copy) would otherwise load silently and
only show as black images or NaN losses much later. Each loader checks every tensor once, as it reads
it: `require_finite` for a tensor read from a file, `require_finite_module` for a module filled by a
library loader (``from_pretrained``), naming the file that holds the tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .errors import ModelFolderError


class NonFiniteWeightsError(ModelFolderError):
    """A weight file holds NaN or infinite values; the message names the file and the tensor."""


def require_finite(tensor: torch.Tensor, key: str, file: str | Path) -> None:
    """Raise `NonFiniteWeightsError` if the floating ``tensor`` (``key`` in ``file``) holds NaN or inf."""
    if not (tensor.is_floating_point() or tensor.is_complex()) or bool(torch.isfinite(tensor).all()):
        return
    nan = int(torch.isnan(tensor).sum())
    inf = int(torch.isinf(tensor).sum())
    raise NonFiniteWeightsError(
        f"{file}: tensor {key!r} holds {nan} NaN and {inf} infinite values (of {tensor.numel()}): the weights are "
        "broken (a diverged run or a damaged copy); this folder is not loaded")


def require_finite_module(module: nn.Module, folder: str | Path) -> None:
    """Every floating parameter and buffer of ``module``, loaded from the safetensors files of ``folder``
    under its ``state_dict`` names (as ``save_pretrained`` writes them), is finite; else the error names
    the file holding the first bad tensor."""
    for key, tensor in module.state_dict().items():
        if not (tensor.is_floating_point() or tensor.is_complex()) or bool(torch.isfinite(tensor).all()):
            continue
        require_finite(tensor, key, _file_of(Path(folder), key))


def _file_of(folder: Path, key: str) -> Path:
    """The safetensors file of ``folder`` that holds ``key`` (from the index, or the single file's header)."""
    index = folder / "model.safetensors.index.json"
    try:
        if index.is_file():
            return folder / json.loads(index.read_text())["weight_map"][key]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    files = sorted(folder.glob("*.safetensors"))
    return files[0] if len(files) == 1 else folder
