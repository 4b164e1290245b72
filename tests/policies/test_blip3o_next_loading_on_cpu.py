"""Loading an official-format BLIP3o-NEXT folder: the tiny checkpoint script, the loader, its errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoTokenizer, Qwen3ForCausalLM

from blip3o_rl.policies.blip3o_next import (
    Blip3oConfigError,
    Blip3oNextPolicy,
    CheckpointError,
    DecodeSettings,
)
from blip3o_rl.scripts.make_tiny_blip3o_next import main as make_tiny

TOKEN_ID_KEYS = ["image_start_tag_id", "image_end_tag_id", "scale_start_token_id", "image_start_token_id"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("blip3o_next")
    assert make_tiny([str(root / "tied")]) == 0
    assert make_tiny([str(root / "untied"), "--untied", "--shards", "3", "--seed", "1"]) == 0
    return {"tied": root / "tied", "untied": root / "untied"}


def all_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def copy_checkpoint(src: Path, dst: Path) -> Path:
    """A copy that still points at the source's SANA folder (config keeps the absolute path)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("sana_tiny"))
    return dst


def rewrite_weights(folder: Path, edit) -> None:
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors")


def edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


# -- the tiny checkpoint is in the official format ------------------------------------------------------


def test_script_writes_the_official_layout(folders):
    tied, untied = folders["tied"], folders["untied"]
    config = json.loads((tied / "config.json").read_text())
    assert config["model_type"] == "blip3o_qwen"
    assert Path(config["diffusion_name_or_path"]) == (tied / "sana_tiny").resolve()
    for sub in ("scheduler/scheduler_config.json", "transformer/config.json", "vae/config.json"):
        assert (tied / "sana_tiny" / sub).is_file()

    keys = set(all_tensors(tied))
    for key in ("model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight", "model.norm.weight"):
        assert key in keys
    connector = {k for k in keys if k.startswith("model.diffusion_connector.")}
    assert connector == {
        f"model.diffusion_connector.{k}" for k in ("0.weight", "0.bias", "2.weight", "2.bias", "3.weight")
    }
    assert any(k.startswith("model.sana.transformer_blocks.") for k in keys)
    assert any(k.startswith("model.sana_vae.encoder.") for k in keys)
    assert any(k.startswith("model.sana_vae.decoder.") for k in keys)
    assert "lm_head.weight" not in keys  # tied: stored once
    assert "lm_head.weight" in all_tensors(untied)
    assert (untied / "model.safetensors.index.json").is_file() and not (untied / "model.safetensors").exists()

    # Added tokens in the official order, right after the base vocabulary, and the config ids match.
    tok = AutoTokenizer.from_pretrained(tied)
    order = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<im_start>", "<im_end>", "<S0>", "<S1>", "<S2>"]
    order += [f"<I{k}>" for k in range(config["num_image_tokens"])]
    ids = tok.convert_tokens_to_ids(order)
    assert ids == list(range(ids[0], ids[0] + len(order)))
    assert config["image_start_tag_id"] == tok.convert_tokens_to_ids("<im_start>")
    assert config["scale_start_token_id"] == tok.convert_tokens_to_ids("<S0>")
    assert config["image_start_token_id"] == tok.convert_tokens_to_ids("<I0>")
    assert config["vocab_size"] == len(tok)


def test_scheduler_folder_is_sana_15s_and_loads_unshifted(folders):
    """The real SANA 1.5 ``scheduler/`` holds a DPMSolverMultistepScheduler config (flow_shift 3.0, no
    ``shift``); loaded as FlowMatchEulerDiscreteScheduler its effective shift is 1.0 (REFERENCE §1)."""
    import numpy as np

    raw = json.loads((folders["tied"] / "sana_tiny" / "scheduler" / "scheduler_config.json").read_text())
    assert raw["_class_name"] == "DPMSolverMultistepScheduler"
    assert raw["flow_shift"] == 3.0 and "shift" not in raw
    assert raw["prediction_type"] == "flow_prediction" and raw["use_flow_sigmas"] is True
    scheduler = Blip3oNextPolicy.from_pretrained(folders["tied"]).decoder.scheduler
    assert type(scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert scheduler.config.shift == 1.0
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / 30, 30))
    assert scheduler.timesteps[:3].tolist() == pytest.approx([1000.0, 966.6667, 933.3333], abs=1e-3)
    assert scheduler.timesteps[-1].item() == pytest.approx(33.3333, abs=1e-3)



@pytest.mark.parametrize("variant", ["tied", "untied"])
def test_loads_every_tensor_from_the_folder(folders, variant):
    folder = folders[variant]
    policy = Blip3oNextPolicy.from_pretrained(folder, device="cpu")
    stored = all_tensors(folder)
    model = policy.model
    assert type(model) is Qwen3ForCausalLM  # plain transformers class: peft/vLLM see stock Qwen3
    assert model.config.model_type == "qwen3"
    assert model.dtype == torch.float32

    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and variant == "tied":
            continue
        torch.testing.assert_close(tensor, stored[name].float(), rtol=0, atol=0, msg=name)
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    assert tied == (variant == "tied")

    decoder = policy.decoder
    for prefix, module in [
        ("model.diffusion_connector.", decoder.connector),
        ("model.sana.", decoder.transformer),
        ("model.sana_vae.", decoder.vae),
    ]:
        for name, tensor in module.state_dict().items():
            torch.testing.assert_close(
                tensor, stored[prefix + name].float(), rtol=0, atol=0, msg=prefix + name
            )
    assert decoder.vae.encoder is None  # only the DC-AE decoder is needed

    # Log-probs use the image rows of whichever matrix is the output head.
    head = stored["model.embed_tokens.weight" if variant == "tied" else "lm_head.weight"].float()
    start, k = policy.layout.image_token_start, policy.layout.num_codes
    hidden = torch.randn(3, model.config.hidden_size)
    torch.testing.assert_close(policy.lm.image_logits(hidden), hidden @ head[start : start + k].T)


def test_layout_and_ids_come_from_the_config(folders):
    config = json.loads((folders["tied"] / "config.json").read_text())
    policy = Blip3oNextPolicy.from_pretrained(folders["tied"], device="cpu")
    assert policy.layout.image_token_start == config["image_start_token_id"]
    assert policy.layout.num_codes == config["num_image_tokens"]
    assert policy.layout.tokens_per_image == config["tokens_per_image"]
    assert policy.prompt_suffix_ids == [config["image_start_tag_id"], config["scale_start_token_id"]]
    assert policy.needs_hidden_states


def test_autoconfig_reads_the_custom_model_type(folders):
    config = AutoConfig.from_pretrained(folders["tied"])
    assert config.model_type == "blip3o_qwen"
    assert (
        config.image_start_token_id
        == json.loads((folders["tied"] / "config.json").read_text())["image_start_token_id"]
    )


def test_skips_modules_generation_does_not_need(folders, tmp_path):
    # Real checkpoints carry the TA-Tok encoder; GRPO checkpoints dropped the DC-AE encoder.
    folder = copy_checkpoint(folders["tied"], tmp_path / "ckpt")

    def edit(tensors):
        tensors["model.vision_tower.encoder.proj.weight"] = torch.zeros(4, 4)
        for key in [k for k in tensors if k.startswith("model.sana_vae.encoder.")]:
            del tensors[key]

    rewrite_weights(folder, edit)
    policy = Blip3oNextPolicy.from_pretrained(folder, device="cpu")
    assert not any("vision_tower" in n for n, _ in policy.model.named_parameters())


def test_tied_config_ignores_a_stored_lm_head(folders, tmp_path):
    folder = copy_checkpoint(folders["tied"], tmp_path / "ckpt")
    rewrite_weights(
        folder, lambda t: t.__setitem__("lm_head.weight", torch.zeros_like(t["model.embed_tokens.weight"]))
    )
    model = Blip3oNextPolicy.from_pretrained(folder, device="cpu").model
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight.abs().sum() > 0


def test_diffusion_path_override(folders, tmp_path):
    folder = copy_checkpoint(folders["tied"], tmp_path / "ckpt")
    edit_config(
        folder, lambda c: c.__setitem__("diffusion_name_or_path", "Efficient-Large-Model/not-cached-here")
    )
    with pytest.raises(
        FileNotFoundError,
        match=r"diffusion_name_or_path='Efficient-Large-Model/not-cached-here'.*diffusion_path",
    ):
        Blip3oNextPolicy.from_pretrained(folder, device="cpu")
    policy = Blip3oNextPolicy.from_pretrained(
        folder, diffusion_path=folders["tied"] / "sana_tiny", device="cpu"
    )
    assert policy.decoder.latent_size == 8


def test_relative_diffusion_path_resolves_against_the_folder(folders, tmp_path):
    folder = tmp_path / "moved"
    shutil.copytree(folders["tied"], folder)
    edit_config(folder, lambda c: c.__setitem__("diffusion_name_or_path", "sana_tiny"))
    Blip3oNextPolicy.from_pretrained(folder, device="cpu")


def test_decode_settings_and_decoder_dtype_as_recipe_policy_kwargs(folders):
    policy = Blip3oNextPolicy.from_pretrained(
        folders["tied"],
        dtype=torch.float32,
        device="cpu",
        decode_settings={"num_inference_steps": 3, "chunk_size": 2},
        decoder_dtype="bfloat16",
    )
    assert policy.decoder.settings == DecodeSettings(num_inference_steps=3, guidance_scale=2.0, chunk_size=2)
    assert policy.model.dtype == torch.float32 and policy.decoder.dtype == torch.bfloat16
    codes = torch.randint(0, policy.layout.num_codes, (2, policy.layout.tokens_per_image))
    hidden = policy.image_hidden_states(policy.prompt_batch(["a", "b"]), codes)  # float32
    assert [image.size for image in policy.decode(codes, hidden)] == [(32, 32)] * 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"decode_settings": {"steps": 3}}, r"decode_settings: unknown keys \['steps'\]"),
        ({"decoder_dtype": "bf16"}, r"decoder_dtype: 'bf16' is not a floating-point torch dtype"),
        ({"decoder_dtype": "int8"}, r"decoder_dtype: 'int8'"),
    ],
)
def test_bad_policy_kwargs_are_named(folders, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Blip3oNextPolicy.from_pretrained(folders["tied"], device="cpu", **kwargs)


# -- loading errors name the file and the key --------------------------------------------------------------


def test_missing_weights_file(folders, tmp_path):
    folder = copy_checkpoint(folders["tied"], tmp_path / "ckpt")
    (folder / "model.safetensors").unlink()
    with pytest.raises(
        CheckpointError,
        match=r"no weights in .*ckpt: expected model\.safetensors or model\.safetensors\.index\.json",
    ):
        Blip3oNextPolicy.from_pretrained(folder, device="cpu")


def test_missing_shard(folders, tmp_path):
    folder = copy_checkpoint(folders["untied"], tmp_path / "ckpt")
    (folder / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(
        CheckpointError, match=r"index\.json lists model-00002-of-00003\.safetensors, which is missing"
    ):
        Blip3oNextPolicy.from_pretrained(folder, diffusion_path=folders["untied"] / "sana_tiny", device="cpu")


@pytest.mark.parametrize("key", TOKEN_ID_KEYS)
def test_config_missing_a_token_id(folders, tmp_path, key):
    folder = copy_checkpoint(folders["tied"], tmp_path / "ckpt")
    edit_config(folder, lambda c: c.pop(key))
    with pytest.raises(Blip3oConfigError, match=rf"ckpt/config\.json: missing key '{key}'"):
        Blip3oNextPolicy.from_pretrained(folder, device="cpu")


def test_config_with_a_foreign_model_type(folders, tmp_path):
    folder = copy_checkpoint(folders["tied"], tmp_path / "ckpt")
    edit_config(folder, lambda c: c.__setitem__("model_type", "llama"))
    with pytest.raises(Blip3oConfigError, match="model_type is 'llama'"):
        Blip3oNextPolicy.from_pretrained(folder, device="cpu")


def test_config_image_range_outside_the_vocabulary(folders, tmp_path):
    folder = copy_checkpoint(folders["tied"], tmp_path / "ckpt")
    edit_config(folder, lambda c: c.__setitem__("num_image_tokens", c["num_image_tokens"] + 1))
    with pytest.raises(Blip3oConfigError, match="do not fit in vocab_size"):
        Blip3oNextPolicy.from_pretrained(folder, device="cpu")


@pytest.mark.parametrize(
    "key",
    [
        "model.layers.0.mlp.up_proj.weight",
        "model.sana.caption_projection.linear_1.weight",
        "model.diffusion_connector.0.weight",
    ],
)
def test_tensor_with_the_wrong_shape(folders, tmp_path, key):
    folder = copy_checkpoint(folders["tied"], tmp_path / "ckpt")
    stored = load_file(folders["tied"] / "model.safetensors")
    good = list(stored[key].shape)
    bad = [good[0] + 1, *good[1:]]
    rewrite_weights(folder, lambda t: t.__setitem__(key, torch.zeros(bad)))
    with pytest.raises(CheckpointError) as err:
        Blip3oNextPolicy.from_pretrained(folder, device="cpu")
    message = str(err.value)
    assert "model.safetensors" in message and repr(key) in message
    assert f"has shape {bad}" in message and f"expects {good}" in message


@pytest.mark.parametrize("key", ["model.norm.weight", "model.sana_vae.decoder.conv_out.weight"])
def test_missing_tensor(folders, tmp_path, key):
    folder = copy_checkpoint(folders["tied"], tmp_path / "ckpt")
    rewrite_weights(folder, lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=rf"weights of the .* are missing from the checkpoint: '{key}'"):
        Blip3oNextPolicy.from_pretrained(folder, device="cpu")


def test_untied_checkpoint_without_lm_head(folders, tmp_path):
    folder = copy_checkpoint(folders["tied"], tmp_path / "ckpt")
    edit_config(folder, lambda c: c.__setitem__("tie_word_embeddings", False))
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: 'lm_head\.weight'"):
        Blip3oNextPolicy.from_pretrained(folder, device="cpu")


def test_more_layers_than_the_config(folders, tmp_path):
    folder = copy_checkpoint(folders["tied"], tmp_path / "ckpt")
    edit_config(folder, lambda c: c.__setitem__("num_hidden_layers", 1))
    with pytest.raises(CheckpointError, match=r"not part of the Qwen3 language model .*'model\.layers\.1\."):
        Blip3oNextPolicy.from_pretrained(folder, device="cpu")
