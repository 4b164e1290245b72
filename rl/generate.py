"""Text-to-image generation with any policy (for `blip3o-rl generate` and the benchmarks)."""

from __future__ import annotations

import torch
from PIL import Image
from tqdm.auto import tqdm

from blip3o_rl.policies.base import ImageTokenPolicy
from blip3o_rl.rl.rollout import KVCacheEngine, RolloutEngine, SamplingParams


@torch.no_grad()
def generate_images(
    policy: ImageTokenPolicy,
    prompts: list[str],
    images_per_prompt: int = 1,
    sampling: SamplingParams | None = None,
    seed: int = 0,
    batch_size: int = 16,
    engine: RolloutEngine | None = None,
    progress: bool = True,
) -> list[list[Image.Image]]:
    """``images_per_prompt`` images for each prompt (outer list follows ``prompts``).

    Runs ``batch_size`` images per engine call; a fixed ``seed`` gives the same images again.
    """
    engine, sampling = engine or KVCacheEngine(), sampling or SamplingParams()
    gen = torch.Generator(policy.device).manual_seed(seed)
    policy.model.eval()
    per_call = max(1, batch_size // images_per_prompt)
    out: list[list[Image.Image]] = []
    # Decoders that draw noise from the global RNG (BLIP3o-NEXT's diffusion refiner) repeat for a fixed
    # seed too; the caller's RNG state is restored afterwards.
    with torch.random.fork_rng(devices=[policy.device] if policy.device.type == "cuda" else []):
        torch.manual_seed(seed)
        for s in tqdm(range(0, len(prompts), per_call), desc="generate", disable=not progress, unit="batch"):
            chunk = prompts[s : s + per_call]
            ro = engine.generate(policy, policy.prompt_batch(chunk), images_per_prompt, sampling, gen,
                                 return_hidden=policy.needs_hidden_states)
            images = policy.decode(ro.codes, ro.hidden_states)
            out += [images[i * images_per_prompt : (i + 1) * images_per_prompt] for i in range(len(chunk))]
    return out
