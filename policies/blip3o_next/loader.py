"""Offline loading of an official BLIP3o-NEXT checkpoint folder.

The folder holds one state dict (single file or sharded) with

- the Qwen3 causal LM: ``model.embed_tokens.*``, ``model.layers.*``, ``model.norm.*`` and, unless the
  config ties it to the embeddings, ``lm_head.weight``;
- ``model.diffusion_connector.*``, ``model.sana.*`` (SANA transformer), ``model.sana_vae.*`` (DC-AE);
- possibly other modules of the training code (e.g. the TA-Tok ``model.vision_tower.*``), which
  generation does not need: they are skipped and logged.

The refiner's architecture and scheduler come from the configs under ``diffusion_name_or_path``
(``scheduler/``, ``transformer/``, ``vae/``); only configs are read there, the weights come from the
checkpoint. Modules are built without memory (meta parameters), every tensor is checked against them
(`checkpoint.match_part`), then the tensors are assigned directly.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaTransformer2DModel
from torch import nn
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase, Qwen3ForCausalLM

from ..tokenizer_files import load_tokenizer_files
from .checkpoint import CheckpointError, Part, WeightFiles, match_part
from .config import Blip3oNextConfig
from .decoder import Blip3oNextDecoder, DecodeSettings, build_connector

logger = logging.getLogger(__name__)

CONNECTOR_PREFIX = "model.diffusion_connector."
SANA_PREFIX = "model.sana."
VAE_PREFIX = "model.sana_vae."
#: Refiner files read from the diffusers folder (configs only).
DIFFUSION_FILES = ("scheduler/scheduler_config.json", "transformer/config.json", "vae/config.json")
#: The tokenizer's files: the fast tokenizer's, or the slow Qwen2 tokenizer's (converted without sentencepiece).
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))


@dataclass
class Blip3oNextComponents:
    """Everything `load_blip3o_next` builds from a folder."""

    config: Blip3oNextConfig
    model: Qwen3ForCausalLM  # the trainable AR part
    tokenizer: PreTrainedTokenizerBase
    decoder: Blip3oNextDecoder  # frozen


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPU (what the model was trained in); float32 on CPU, where bf16 kernels are slow."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def resolve_diffusion_folder(config: Blip3oNextConfig, override: str | Path | None = None) -> Path:
    """The local SANA diffusers folder: ``override`` if given, else the config's
    ``diffusion_name_or_path`` as a path (absolute or relative to the checkpoint folder), else that hub id
    in the local Hugging Face cache. Never downloads."""
    name = config.diffusion_name_or_path
    folder: Path | None
    if override is not None:
        folder, origin = Path(override), "diffusion_path"
    else:
        origin = f"diffusion_name_or_path={name!r} in {config.source}"
        candidates = [Path(name), config.source.parent / name]
        folder = next((c for c in candidates if c.is_dir()), None)
        if folder is None:
            folder = _cached_snapshot(name)
        if folder is None:
            raise FileNotFoundError(
                f"{config.source}: diffusion_name_or_path={name!r} is neither a local folder nor in the local "
                "Hugging Face cache (nothing is downloaded); pass diffusion_path=<local copy of that diffusers "
                f"repo> (only {', '.join(DIFFUSION_FILES)} are read)"
            )
    for rel in DIFFUSION_FILES:
        if not (folder / rel).is_file():
            raise FileNotFoundError(f"{folder / rel} is missing (SANA diffusers folder from {origin})")
    return folder


def _cached_snapshot(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=list(DIFFUSION_FILES)))
    except (OSError, ValueError):  # not a repo id, or not cached
        return None


def _expected(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _assign(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    module.load_state_dict(tensors, strict=False, assign=True)  # match_part already checked every key


def _check_loaded(module: nn.Module, what: str) -> None:
    left = [n for n, p in module.named_parameters() if p.is_meta]
    if left:  # match_part guarantees completeness; this guards the guarantee
        raise CheckpointError(f"{what}: parameters left unloaded: {left[:5]}")


def group_keys(files: WeightFiles, model: Qwen3ForCausalLM) -> tuple[dict[str, list[str]], Counter]:
    """Split the checkpoint keys by module ("ar" for ``model``, "connector", "sana", "vae"); the rest
    are counted by top-level name."""
    # Qwen3Model's children that hold weights: embed_tokens, layers, norm.
    ar_roots = {k.split(".")[1] for k in model.state_dict() if k.startswith("model.")}
    groups: dict[str, list[str]] = {"ar": [], "connector": [], "sana": [], "vae": []}
    skipped: Counter = Counter()
    for key in files.tensor_keys():
        parts = key.split(".")
        if parts[0] == "lm_head" or (parts[0] == "model" and len(parts) > 1 and parts[1] in ar_roots):
            groups["ar"].append(key)
        elif key.startswith(CONNECTOR_PREFIX):
            groups["connector"].append(key)
        elif key.startswith(SANA_PREFIX):
            groups["sana"].append(key)
        elif key.startswith(VAE_PREFIX):
            groups["vae"].append(key)
        else:
            skipped[".".join(parts[:2]) if parts[0] == "model" else parts[0]] += 1
    return groups, skipped


def load_tokenizer(folder: Path, config: Blip3oNextConfig) -> PreTrainedTokenizerBase:
    """The folder's tokenizer, checked to reach the last image token; token names are checked loosely.
    Missing or unreadable tokenizer files fail naming the folder and the files (`load_tokenizer_files`)."""
    tokenizer = load_tokenizer_files(folder, lambda f: AutoTokenizer.from_pretrained(f, local_files_only=True),
                                     TOKENIZER_FILES, also=("tokenizer_config.json",))
    last = config.image_start_token_id + config.num_image_tokens - 1
    if len(tokenizer) <= last:
        raise CheckpointError(
            f"{folder}: the tokenizer has {len(tokenizer)} tokens but {config.source} puts the last image token at id "
            f"{last}: tokenizer and config do not belong together"
        )
    names = {
        "image_start_tag_id": (config.image_start_tag_id, "<im_start>"),
        "image_end_tag_id": (config.image_end_tag_id, "<im_end>"),
        "scale_start_token_id": (config.scale_start_token_id, "<S0>"),
        "image_start_token_id": (config.image_start_token_id, "<I0>"),
    }
    for key, (token_id, usual) in names.items():
        token = tokenizer.convert_ids_to_tokens(token_id)
        if token != usual:  # the training code lets the token format vary: warn, do not fail
            logger.warning(
                "%s: %s=%d is %r in the tokenizer (the official token is %r)",
                folder,
                key,
                token_id,
                token,
                usual,
            )
    return tokenizer


def load_decoder(
    files: WeightFiles,
    keys: dict[str, list[str]],
    config: Blip3oNextConfig,
    diffusion_folder: Path,
    dtype: torch.dtype,
    device: torch.device,
    settings: DecodeSettings | None,
) -> Blip3oNextDecoder:
    """Connector, SANA and DC-AE decoder from the checkpoint, shaped by the diffusers configs."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(diffusion_folder, subfolder="scheduler")
    transformer_config = SanaTransformer2DModel.load_config(diffusion_folder / "transformer")
    vae_config = AutoencoderDC.load_config(diffusion_folder / "vae")
    with init_empty_weights(include_buffers=False):
        transformer = SanaTransformer2DModel.from_config(transformer_config)
        vae = AutoencoderDC.from_config(vae_config)
        connector = build_connector(config.hidden_size, transformer.config.caption_channels)
    vae_decoder_shapes = {k: s for k, s in _expected(vae).items() if not k.startswith("encoder.")}
    vae.encoder = None  # only the DC-AE decoder is needed (GRPO checkpoints may lack the encoder)
    transformer_source = str(diffusion_folder / "transformer" / "config.json")
    vae_source = str(diffusion_folder / "vae" / "config.json")
    connector_source = f"hidden_size={config.hidden_size} and SANA caption_channels in {transformer_source}"
    parts = [
        (
            connector,
            keys["connector"],
            Part("diffusion connector", CONNECTOR_PREFIX, _expected(connector), connector_source),
        ),
        (
            transformer,
            keys["sana"],
            Part("SANA transformer", SANA_PREFIX, _expected(transformer), transformer_source),
        ),
        (
            vae,
            keys["vae"],
            Part("DC-AE decoder", VAE_PREFIX, vae_decoder_shapes, vae_source, ignored=("encoder.",)),
        ),
    ]
    for module, owned, part in parts:
        _assign(module, files.load(match_part(files, part, owned), dtype, device))
        _check_loaded(module, part.name)
    decoder = Blip3oNextDecoder(connector, transformer, vae, scheduler, settings)
    return decoder.to(device=device, dtype=dtype)  # diffusers casts buffers too when loading in a dtype


def ar_skeleton(config: Blip3oNextConfig) -> Qwen3ForCausalLM:
    """The Qwen3 causal LM described by the config, with meta (unallocated) parameters."""
    with init_empty_weights(include_buffers=False):
        return Qwen3ForCausalLM(config.qwen3_config())


def load_ar_model(
    files: WeightFiles,
    keys: list[str],
    model: Qwen3ForCausalLM,
    config: Blip3oNextConfig,
    dtype: torch.dtype,
    device: torch.device,
) -> Qwen3ForCausalLM:
    """Fill `ar_skeleton` from the checkpoint, tied or untied as the config says."""
    tied = model.config.tie_word_embeddings
    if tied and "lm_head.weight" in keys:
        # transformers ties after loading, so a stored lm_head is ignored; do the same.
        logger.info(
            "%s ties lm_head to the embeddings: ignoring lm_head.weight in the checkpoint", config.source
        )
        keys = [k for k in keys if k != "lm_head.weight"]
    part = Part(
        "Qwen3 language model",
        "",
        _expected(model),
        str(config.source),
        optional=frozenset({"lm_head.weight"}) if tied else frozenset(),
    )
    _assign(model, files.load(match_part(files, part, keys), dtype, device))
    if tied:
        model.tie_weights()
    _check_loaded(model, part.name)
    model.to(device)  # non-persistent buffers (rotary inv_freq) stay float32, as in from_pretrained
    model.config.dtype = dtype  # what the weights now are (the file's torch_dtype may differ)
    if (files.folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(files.folder, local_files_only=True)
    return model


def load_blip3o_next(
    path: str | Path,
    diffusion_path: str | Path | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    decode_settings: DecodeSettings | None = None,
    decoder_dtype: torch.dtype | None = None,
) -> Blip3oNextComponents:
    """Load an official BLIP3o-NEXT folder (e.g. ``BLIP3o-NEXT-SFT-3B``) fully offline.

    ``diffusion_path`` overrides the config's ``diffusion_name_or_path`` with a local diffusers folder.
    ``dtype``/``device`` default to bf16 on CUDA when available, else float32 on the CPU.
    ``decoder_dtype`` (default: ``dtype``) sets the frozen refiner's dtype apart from the trained AR
    model's, e.g. float32 AR weights for full fine-tuning with a bf16 refiner.
    """
    folder = Path(path)
    config = Blip3oNextConfig.from_folder(folder)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    diffusion_folder = resolve_diffusion_folder(config, diffusion_path)
    files = WeightFiles(folder)
    model = ar_skeleton(config)
    keys, skipped = group_keys(files, model)
    for name, count in sorted(skipped.items()):
        logger.info(
            "%s: not loading %d tensors under %s (not needed to generate images)", folder, count, name
        )
    tokenizer = load_tokenizer(folder, config)
    model = load_ar_model(files, keys["ar"], model, config, dtype, device)
    decoder = load_decoder(
        files, keys, config, diffusion_folder, decoder_dtype or dtype, device, decode_settings
    )
    return Blip3oNextComponents(config=config, model=model, tokenizer=tokenizer, decoder=decoder)
