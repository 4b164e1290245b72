"""Write a (trained) BLIP3o-NEXT language model back as an official checkpoint folder.

The folder has the layout of an official release, which `load_blip3o_next` reads again:

- ``model.safetensors``: the Qwen3 tensors taken from the given model (``lm_head.weight`` only when
  the config does not tie it), and every other tensor of the source checkpoint copied unchanged, in its
  stored dtype: ``model.diffusion_connector.*``, ``model.sana.*``, ``model.sana_vae.*`` and modules
  generation does not use (e.g. a vision tower), so the export is as complete as its source;
- ``config.json``: the source config with ``torch_dtype`` set to the dtype of the written Qwen3 tensors;
- the source folder's other top-level files (tokenizer, chat template, ``generation_config.json``).

All tensors are held in memory while the single file is written (about 10 GB for the 3B release in bf16).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Qwen3ForCausalLM

from .checkpoint import INDEX_FILE, SINGLE_FILE, WeightFiles
from .config import CONFIG_FILE, Blip3oNextConfig
from .loader import group_keys

#: Top-level files of the source folder that are not copied: the weights (rewritten) and pickles.
_NOT_COPIED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def save_blip3o_next(model: Qwen3ForCausalLM, config: Blip3oNextConfig, out_dir: str | Path) -> Path:
    """Write ``model`` (a plain ``Qwen3ForCausalLM``: merge any LoRA adapter first) with the rest of the
    checkpoint ``config`` was read from into the new folder ``out_dir``; returns its path."""
    source, out = config.source.parent, Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"export folder {out} is not empty: choose a new folder or remove it")
    adapter = [k for k in model.state_dict() if "lora_" in k or ".base_layer." in k]
    if adapter:
        raise ValueError(
            f"the model still holds a LoRA adapter ({adapter[0]}): merge it into the weights first"
        )

    files = WeightFiles(source)
    groups, _ = group_keys(files, model)
    tied = model.config.tie_word_embeddings
    # Tied: lm_head is the embedding matrix, stored once (as the loader and save_pretrained expect).
    tensors = {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if not (tied and k == "lm_head.weight")
    }
    ar_dtype = tensors["model.embed_tokens.weight"].dtype
    ar_keys = set(groups["ar"])
    copied = files.load({k: k for k in files.tensor_keys() if k not in ar_keys}, dtype=None, device="cpu")
    tensors.update(copied)

    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / SINGLE_FILE, metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(_export_config(config, ar_dtype), indent=2) + "\n")
    for path in sorted(source.iterdir()):
        if (
            path.is_file()
            and path.name not in (CONFIG_FILE, INDEX_FILE)
            and not path.name.endswith(_NOT_COPIED_SUFFIXES)
        ):
            shutil.copy2(path, out / path.name)
    return out


def _export_config(config: Blip3oNextConfig, ar_dtype: torch.dtype) -> dict:
    raw = dict(config.raw)
    for key in ("torch_dtype", "dtype"):  # transformers 5 writes "dtype"; official configs "torch_dtype"
        if key in raw or key == "torch_dtype":
            raw[key] = str(ar_dtype).removeprefix("torch.")
    name = raw["diffusion_name_or_path"]
    local = config.source.parent / name
    if not Path(name).is_absolute() and not Path(name).is_dir() and local.is_dir():
        # A folder relative to the source checkpoint: keep pointing at it from the new place.
        raw["diffusion_name_or_path"] = str(local.resolve())
    return raw
