"""A tiny random-initialised Janus-Pro folder in the official (transformers) on-disk format, for tests.

`write_tiny_janus(out_dir)`; from the shell::

    python -m blip3o_rl.scripts.make_tiny_janus OUT_DIR [--seed S]

The folder has what a ``deepseek-community/Janus-Pro-7B`` download has, at toy sizes, written by
transformers' own classes: ``config.json`` (``model_type: "janus"`` with its ``text_config`` (Llama),
``vision_config`` and ``vq_config``), ``model.safetensors`` under the official key names,
``generation_config.json`` as the conversion script writes it (temperature 1, ``guidance_scale`` 5, the
pad token, ``generation_kwargs.boi_token_id``), and the processor files (tokenizer with Janus's special
tokens and BOS post-processor, the PIL image processor, the official chat template).

Everything is built with transformers' classes independently of the loader, so the tests that load this
folder check the policy against the format, not against itself. The VQ decoder's weights are chosen so
that different codes decode to visibly different colours (a colour reward then has something to learn
from): its residual blocks start as identities (second convolutions zero), its norm groups hold two
channels each (a group of one normalises each channel's mean away, and with it the colour), and its
output convolution is scaled up. It is still the official decoder class, with weights like any others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    GenerationConfig,
    JanusConfig,
    JanusForConditionalGeneration,
    JanusImageProcessorPil,
    JanusProcessor,
    JanusVisionConfig,
    JanusVQVAEConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

from .prompt import CHAT_TEMPLATE

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
IMAGE_TOKEN, BOI, EOI = "<image_placeholder>", "<begin_of_image>", "<end_of_image>"
ROLE_TOKENS = ("<|User|>", "<|Assistant|>")


@dataclass(frozen=True)
class TinyJanusSpec:
    """Toy sizes; Janus-Pro-7B is Llama 4096 wide, 30 layers, 16,384 codes, 576 tokens (24 x 24) per image."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 128
    num_codes: int = 64
    grid: int = 4  # tokens per side: image_size / patch_size
    patch_size: int = 16
    vq_channels: int = 64  # GroupNorm(32): a multiple of 32; 2 channels a group let colour through
    vq_levels: int = 3  # 2 ** (levels - 1) pixels per token side: 4 x 4 tokens -> 16 x 16 pixels
    output_gain: float = 8.0  # scale of the decoder's conv_out weights (colourful decodes)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level base vocabulary + Janus's special tokens; BOS prepended, as the official tokenizer does."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = (BOS, EOS, PAD, *ROLE_TOKENS, IMAGE_TOKEN, BOI, EOI)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE_TOKEN, "boi_token": BOI, "eoi_token": EOI},
        padding_side="left",
    )


def janus_config(spec: TinyJanusSpec, tokenizer: PreTrainedTokenizerFast) -> JanusConfig:
    ids = tokenizer.convert_tokens_to_ids
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, max_position_embeddings=512,
        pad_token_id=ids(PAD), bos_token_id=ids(BOS), eos_token_id=ids(EOS),
    )
    vision = JanusVisionConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=spec.grid * spec.patch_size,
        patch_size=spec.patch_size, projection_dim=spec.hidden_size, num_image_tokens=spec.grid**2, depth=2,
    )
    vq = JanusVQVAEConfig(
        embed_dim=8, num_embeddings=spec.num_codes, latent_channels=16, base_channels=spec.vq_channels,
        channel_multiplier=[1] * spec.vq_levels, num_res_blocks=1, projection_dim=spec.hidden_size,
        image_token_embed_dim=spec.hidden_size, num_hidden_layers=1,
    )
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq, image_token_id=ids(IMAGE_TOKEN))


def generation_config(tokenizer: PreTrainedTokenizerFast) -> GenerationConfig:
    """As the official conversion writes it: temperature 1, CFG scale 5, the pad and begin-of-image ids."""
    ids = tokenizer.convert_tokens_to_ids
    return GenerationConfig(
        bos_token_id=ids(BOS), eos_token_id=ids(EOS), pad_token_id=ids(PAD), temperature=1.0,
        guidance_scale=5, generation_kwargs={"boi_token_id": ids(BOI)},
    )


def write_tiny_janus(out_dir: str | Path, spec: TinyJanusSpec = TinyJanusSpec(), seed: int = 0) -> Path:
    """Write a tiny random Janus-Pro folder at ``out_dir`` (created; must be empty or absent)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty")
    tokenizer = build_tokenizer()
    config = janus_config(spec, tokenizer)
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(config).eval()
    with torch.no_grad():  # a decoder whose colours follow the codes (see the module docstring)
        decoder = model.model.vqmodel.decoder
        for name, module in decoder.named_modules():
            if name.endswith((".conv2", ".proj_out")):  # residual branches off: every block an identity
                module.weight.zero_()
                module.bias.zero_()
        decoder.conv_out.weight.mul_(spec.output_gain)
    model.generation_config = generation_config(tokenizer)
    model.save_pretrained(out)
    image_processor = JanusImageProcessorPil(size={"height": config.vision_config.image_size,
                                                    "width": config.vision_config.image_size})
    processor = JanusProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                               use_default_system_prompt=True, num_image_tokens=spec.grid**2)
    processor.save_pretrained(out)
    return out
