"""`Blip3oNextPolicy.save_pretrained`: the official layout, written from the loaded (or trained) model."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

from blip3o_rl.policies.blip3o_next import Blip3oNextPolicy


def test_round_trip_keeps_every_tensor_and_file(tiny_blip3o_next, tmp_path):
    # A source like the real release: a vision tower generation does not use, a relative SANA folder.
    source = tmp_path / "source"
    shutil.copytree(tiny_blip3o_next, source)
    tensors = load_file(source / "model.safetensors")
    tensors["model.vision_tower.proj.weight"] = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
    save_file(tensors, source / "model.safetensors")
    config = json.loads((source / "config.json").read_text())
    config["diffusion_name_or_path"] = "sana_tiny"
    (source / "config.json").write_text(json.dumps(config))

    policy = Blip3oNextPolicy.from_pretrained(source, dtype=torch.bfloat16, device="cpu")
    with torch.no_grad():
        policy.model.model.norm.weight.add_(1.0)  # stands for training
    out = policy.save_pretrained(tmp_path / "export")

    written = load_file(out / "model.safetensors")
    assert set(written) == set(tensors)  # tied: no lm_head.weight, as in the source
    for key, value in tensors.items():
        if key == "model.norm.weight":
            assert torch.equal(written[key], value + 1)
        else:  # the unchanged AR tensors, the refiner and the vision tower, bit for bit
            assert written[key].dtype == value.dtype and torch.equal(written[key], value), key
    exported = json.loads((out / "config.json").read_text())
    assert exported["diffusion_name_or_path"] == str((source / "sana_tiny").resolve())
    assert exported["torch_dtype"] == "bfloat16"
    assert {k: v for k, v in exported.items() if k != "diffusion_name_or_path"} == {
        k: v for k, v in config.items() if k != "diffusion_name_or_path"
    }
    copied = {p.name for p in source.iterdir() if p.is_file()} - {"model.safetensors", "config.json"}
    assert copied and all((out / name).read_bytes() == (source / name).read_bytes() for name in copied)

    again = Blip3oNextPolicy.from_pretrained(out, dtype=torch.bfloat16, device="cpu")
    assert torch.equal(again.model.model.norm.weight, policy.model.model.norm.weight)


def test_refuses_an_unmerged_adapter_and_a_used_folder(tiny_blip3o_next, tmp_path):
    policy = Blip3oNextPolicy.from_pretrained(tiny_blip3o_next, device="cpu")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        policy.save_pretrained(busy)
    with warnings.catch_warnings():  # peft 0.21 reads transformers 5's deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        get_peft_model(policy.model, LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="LoRA adapter"):
        policy.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()
