"""Throughput of BLIP3o-NEXT's two halves, measured separately: AR image-token sampling and refiner decode.

    python -m blip3o_rl.scripts.bench_blip3o_next                # full-size shapes, random weights (GPU)
    python -m blip3o_rl.scripts.bench_blip3o_next --tiny         # tiny checkpoint through the real loader (CPU ok)

Full size is Qwen3-1.7B with the 217,210-token vocabulary + SANA 1.5 1.6B + DC-AE f32c32 (1024 px),
random weights in bf16 (the speed does not depend on the values). The AR part is the rollout engine
(`rl/rollout/engines/kv_cache.py`, untruncated sampling), which collects the N + 1 conditioning states as it
goes (one extra step for the last token); they are checked against one full forward
(`Blip3oNextPolicy.image_hidden_states`). Decode noise comes from one generator per image.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaTransformer2DModel
from transformers import Qwen3ForCausalLM

from ..policies.base import PromptBatch
from ..policies.blip3o_next import (
    Blip3oNextConfig,
    Blip3oNextDecoder,
    Blip3oNextPolicy,
    DecodeSettings,
)
from ..policies.blip3o_next.decoder import build_connector
from ..rl.rollout.engines import KVCacheEngine, SamplingParams
from ..rl.rollout.generate import decode_generators

# Public Qwen3-1.7B config with the BLIP3o-NEXT vocabulary and ids (REFERENCE §1).
QWEN3_1_7B_BLIP3O = {
    "model_type": "blip3o_qwen",
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "tie_word_embeddings": True,
    "vocab_size": 217210,
    "image_start_tag_id": 151669,
    "image_end_tag_id": 151670,
    "scale_start_token_id": 151671,
    "image_start_token_id": 151674,
    "num_image_tokens": 65536,
    "diffusion_name_or_path": "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers",
}
# SANA 1.5 1.6B at 1024 px (32 x 32 latents); qk_norm as in SANA 1.5 (assumed: configs unreachable here).
SANA_1_6B: dict[str, Any] = {
    "in_channels": 32,
    "out_channels": 32,
    "num_attention_heads": 70,
    "attention_head_dim": 32,
    "num_layers": 20,
    "num_cross_attention_heads": 20,
    "cross_attention_head_dim": 112,
    "cross_attention_dim": 2240,
    "caption_channels": 2304,
    "mlp_ratio": 2.5,
    "sample_size": 32,
    "patch_size": 1,
    "qk_norm": "rms_norm_across_heads",
}
DC_AE_F32C32 = {
    "in_channels": 3,
    "latent_channels": 32,
    "attention_head_dim": 32,
    "encoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
    "decoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
    "encoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
    "decoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
    "encoder_layers_per_block": [2, 2, 2, 3, 3, 3],
    "decoder_layers_per_block": [3, 3, 3, 3, 3, 3],
    "encoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
    "decoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
    "downsample_block_type": "Conv",
    "upsample_block_type": "interpolate",
    "decoder_norm_types": "rms_norm",
    "decoder_act_fns": "silu",
    "scaling_factor": 0.41407,
}
PROMPT_LENGTH = 48  # a GenEval prompt in the chat template is ~40-60 tokens


def full_size_policy(device: torch.device, dtype: torch.dtype) -> Blip3oNextPolicy:
    """Random-weight full-size policy (no tokenizer: prompts are fed as ids)."""
    config = Blip3oNextConfig.from_dict(
        QWEN3_1_7B_BLIP3O, Path("<bench: Qwen3-1.7B + BLIP3o-NEXT vocabulary>")
    )
    with torch.device(device):
        model = Qwen3ForCausalLM(config.qwen3_config()).to(dtype).eval()
        vae = AutoencoderDC(**DC_AE_F32C32)
        vae.encoder = None  # decode only
        decoder = Blip3oNextDecoder(
            build_connector(config.hidden_size, SANA_1_6B["caption_channels"]),
            SanaTransformer2DModel(**SANA_1_6B),
            vae,
            FlowMatchEulerDiscreteScheduler(),  # shift 1.0: what SANA 1.5's scheduler/ folder loads as
        ).to(device=device, dtype=dtype)
    return Blip3oNextPolicy(model, None, config, decoder)


def synthetic_prompts(policy: Blip3oNextPolicy, batch: int, device: torch.device) -> PromptBatch:
    """Random text ids ending with ``<im_start><S0>`` (the prompt content does not change the cost)."""
    text = torch.randint(0, 151643, (batch, PROMPT_LENGTH - 2), device=device)
    suffix = torch.tensor(policy.prompt_suffix_ids, device=device).expand(batch, -1)
    ids = torch.cat([text, suffix], 1)
    return PromptBatch(ids, torch.ones_like(ids))


def timed(device: torch.device, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` and its wall time, synchronising the GPU around it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random checkpoint through the real loader")
    parser.add_argument("--batch", type=int, default=16, help="images per measured batch")
    parser.add_argument("--steps", type=int, default=30, help="diffusion steps")
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--chunk", type=int, default=16, help="images per SANA batch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    settings = DecodeSettings(args.steps, args.guidance, args.chunk)

    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            from ..policies.blip3o_next.testing import write_tiny_checkpoint

            policy = Blip3oNextPolicy.from_pretrained(
                write_tiny_checkpoint(Path(tmp) / "tiny"),
                device=device,
                dtype=dtype,
                decode_settings=settings,
            )
            prompt = policy.prompt_batch(["a photo of a red cube"] * args.batch).to(device)
        else:
            policy = full_size_policy(device, dtype)
            policy.decoder.settings = settings
            prompt = synthetic_prompts(policy, args.batch, device)
    engine = KVCacheEngine()
    engine.setup(policy)
    seeds = list(range(args.batch))
    untruncated = SamplingParams()

    ar_times, decode_times = [], []
    for i in range(args.repeats + 1):  # run 0 is the warm-up
        ro, t_ar = timed(device, engine.generate, prompt, 1, untruncated, seeds, return_hidden=True)
        codes, hidden = ro.codes, ro.hidden_states
        generators = decode_generators(seeds, 1, device)
        _, t_dec = timed(device, policy.decode, codes, hidden, generators=generators)
        if i:
            ar_times.append(t_ar)
            decode_times.append(t_dec)
    with torch.no_grad():
        check = policy.image_hidden_states(prompt, codes)
    drift = (check.float() - hidden.float()).abs().max().item()  # host sync, once, after timing

    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": "tiny" if args.tiny else "Qwen3-1.7B + SANA-1.6B (random weights)",
        "dtype": str(dtype).removeprefix("torch."),
        "batch": args.batch,
        "tokens_per_image": policy.layout.tokens_per_image,
        "image_size": policy.decoder.image_size,
        "steps": args.steps,
        "guidance": args.guidance,
        "ar_images_per_s": args.batch / min(ar_times),
        "decode_images_per_s": args.batch / min(decode_times),
        "decode_over_ar_time": min(decode_times) / min(ar_times),
        "cached_vs_full_forward_hidden_max_abs_diff": drift,
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
