"""Reading and checking the weights of a checkpoint folder (one safetensors file or a sharded index).

Every tensor is checked against the module that will receive it before anything is loaded, so a
wrong folder fails with the file, the key and both shapes instead of a deep ``load_state_dict`` trace.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import ModelFolderError
from ..weights import require_finite

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ModelFolderError):
    """A checkpoint whose weights do not match what the config describes."""


class WeightFiles:
    """Which safetensors file of a folder holds each tensor, and the tensors' shapes (read lazily)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / INDEX_FILE
        single = self.folder / SINGLE_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CheckpointError(
                    f"{index}: not a safetensors index with a 'weight_map' ({exc})"
                ) from None
            self.file_of = {key: self.folder / name for key, name in weight_map.items()}
            for path in sorted(set(self.file_of.values())):
                if not path.is_file():
                    raise CheckpointError(f"{index} lists {path.name}, which is missing from {self.folder}")
        elif single.is_file():
            with safe_open(single, framework="pt") as f:
                self.file_of = dict.fromkeys(f.keys(), single)
        else:
            found = sorted(p.name for p in self.folder.glob("*")) if self.folder.is_dir() else []
            raise CheckpointError(
                f"no weights in {self.folder}: expected {SINGLE_FILE} or {INDEX_FILE} (found: {found or 'nothing'}); "
                "pytorch_model.bin checkpoints are not read (pickle), convert them to safetensors"
            )
        self._shapes: dict[str, tuple[int, ...]] = {}

    def tensor_keys(self) -> list[str]:
        return list(self.file_of)

    def shape(self, key: str) -> tuple[int, ...]:
        if not self._shapes:
            for path in sorted(set(self.file_of.values())):
                with safe_open(path, framework="pt") as f:
                    for k in f.keys():  # noqa: SIM118 (safe_open handles are not dicts)
                        self._shapes[k] = tuple(f.get_slice(k).get_shape())
        return self._shapes[key]

    def load(
        self, names: Mapping[str, str], dtype: torch.dtype | None, device: torch.device | str
    ) -> dict[str, torch.Tensor]:
        """Read the tensors ``{checkpoint key: module name}``; returns ``{module name: tensor}``.

        Floating tensors are checked finite as read (`require_finite`: the error names the file and the key),
        then cast to ``dtype`` (``None``: kept as stored); integer buffers keep their type.
        """
        by_file: dict[Path, list[str]] = {}
        for key in names:
            by_file.setdefault(self.file_of[key], []).append(key)
        out: dict[str, torch.Tensor] = {}
        for path, keys in by_file.items():
            with safe_open(path, framework="pt") as f:
                for key in keys:
                    tensor = f.get_tensor(key)
                    require_finite(tensor, key, path)
                    if dtype is not None and tensor.is_floating_point():
                        tensor = tensor.to(dtype)
                    out[names[key]] = tensor.to(device)
        return out


@dataclass(frozen=True)
class Part:
    """One module of the checkpoint: its key prefix and the shapes its ``state_dict`` expects."""

    name: str  # for messages, e.g. "SANA transformer"
    prefix: str  # checkpoint key = prefix + module key
    expected: Mapping[str, tuple[int, ...]]
    source: str  # where the expected shapes come from, for messages
    optional: frozenset[str] = frozenset()  # module keys that may be absent
    ignored: tuple[str, ...] = ()  # module-key prefixes present in checkpoints but not loaded


def match_part(files: WeightFiles, part: Part, owned: Iterable[str]) -> dict[str, str]:
    """Map each checkpoint key of ``part`` to its module key, after checking keys and shapes.

    ``owned`` are the checkpoint keys that belong to this part; any of them the module does not expect
    (outside ``part.ignored``) is an error, as is a missing expected key or a shape mismatch.
    """
    present = {key[len(part.prefix) :]: key for key in owned}
    missing = sorted(k for k in part.expected if k not in present and k not in part.optional)
    if missing:
        shown = ", ".join(repr(part.prefix + k) for k in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(
            f"{files.folder}: {len(missing)} weights of the {part.name} are missing from the checkpoint: {shown}{more} "
            f"(expected by {part.source})"
        )
    unexpected = sorted(
        k for k in present if k not in part.expected and not any(k.startswith(p) for p in part.ignored)
    )
    if unexpected:
        shown = ", ".join(repr(part.prefix + k) for k in unexpected[:5])
        raise CheckpointError(
            f"{files.folder}: {len(unexpected)} weights in the checkpoint are not part of the {part.name} built from "
            f"{part.source}: {shown} (does the config match the weights?)"
        )
    names: dict[str, str] = {}
    for module_key, key in present.items():
        if module_key not in part.expected:
            continue
        actual, wanted = files.shape(key), tuple(part.expected[module_key])
        if actual != wanted:
            raise CheckpointError(
                f"{files.file_of[key]}: tensor {key!r} has shape {list(actual)} but the {part.name} built from "
                f"{part.source} expects {list(wanted)}"
            )
        names[key] = module_key
    return names
