"""The frozen BLIP3o-NEXT refiner: AR hidden states → connector → SANA flow matching → DC-AE → pixels.

For a batch of ``B`` images with ``T = N + 1`` conditioning positions (``<S0>`` and the N image
tokens) of hidden size ``H``:

1. the connector maps the hidden states ``[B, T, H]`` to SANA's caption width ``[B, T, C]`` once per
   chunk (it does not depend on the diffusion step); the unconditional branch is the connector applied
   to all-zeros hidden states, batched as the official class batches it: one connector call over
   ``cat([zeros_like(h), h])`` ``[2b, T, H]`` (`context`). In float32 the batching changes nothing; in
   bf16 a matmul's result depends on the batch it runs in, and running the branches separately moved
   decoded pixels by up to 6/255 from the official class's;
2. Euler flow matching over ``FlowMatchEulerDiscreteScheduler`` with
   ``sigmas = linspace(1, 1/steps, steps)`` (then the scheduler's ``shift``: 1.0, i.e. none, for the
   real SANA 1.5 folder, whose ``DPMSolverMultistepScheduler`` config has ``flow_shift`` but no
   ``shift``; timesteps 1000, 966.7, ..., 33.3 for 30 steps), both CFG
   branches in one SANA batch: ``v = v_uncond + g * (v_cond - v_uncond)``;
3. DC-AE decode of ``latents / scaling_factor (+ shift_factor)``, mapped from [-1, 1] to 8-bit RGB.

Nothing here is trained: the module is built with ``requires_grad=False`` and runs under ``no_grad``.
"""

from __future__ import annotations

import logging
import typing
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaTransformer2DModel
from diffusers.models.normalization import RMSNorm
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import nn

from ..base import mark_decode_error

logger = logging.getLogger(__name__)

#: RMSNorm epsilon of the official connector.
CONNECTOR_NORM_EPS = 1e-5

Generators = torch.Generator | list[torch.Generator] | None


def build_connector(hidden_size: int, width: int) -> nn.Sequential:
    """``Linear(H → W) → GELU(tanh) → Linear(W → W) → RMSNorm(W)``; state-dict keys 0.*, 2.*, 3.weight
    as in the official ``model.diffusion_connector``. ``W`` is SANA's ``caption_channels`` (2304)."""
    return nn.Sequential(
        nn.Linear(hidden_size, width),
        nn.GELU(approximate="tanh"),
        nn.Linear(width, width),
        RMSNorm(width, eps=CONNECTOR_NORM_EPS, elementwise_affine=True),
    )


@dataclass(frozen=True)
class DecodeSettings:
    """Refiner sampling settings; the defaults are the official inference ones."""

    num_inference_steps: int = 30
    guidance_scale: float = 2.0
    chunk_size: int = 16  # images per SANA batch (x2 with CFG): bounds activation memory

    def __post_init__(self) -> None:
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")


class Blip3oNextDecoder(nn.Module):
    """Connector + SANA transformer + DC-AE decoder + flow-matching scheduler, all frozen."""

    def __init__(
        self,
        connector: nn.Sequential,
        transformer: SanaTransformer2DModel,
        vae: AutoencoderDC,
        scheduler: FlowMatchEulerDiscreteScheduler,
        settings: DecodeSettings | None = None,
    ):
        super().__init__()
        self.connector = connector
        self.transformer = transformer
        self.vae = vae
        self.scheduler = scheduler
        self.settings = settings or DecodeSettings()
        self.requires_grad_(False)
        self.eval()

    @property
    def dtype(self) -> torch.dtype:
        return self._connector_in().weight.dtype

    @property
    def device(self) -> torch.device:
        return self._connector_in().weight.device

    def _connector_in(self) -> nn.Linear:
        """The connector's first layer, ``Linear(H → W)`` (see `build_connector`)."""
        return typing.cast(nn.Linear, self.connector[0])

    @property
    def latent_size(self) -> int:
        return int(self.transformer.config.sample_size)

    @property
    def image_size(self) -> int:
        """Side of the decoded square image in pixels (1024 for SANA 1.5 at 32 x 32 latents)."""
        blocks = len(self.vae.config.decoder_block_out_channels)
        return self.latent_size * 2 ** (blocks - 1)

    def train(self, mode: bool = True) -> Blip3oNextDecoder:
        return super().train(False)  # frozen: dropout and norms stay in inference mode

    @torch.no_grad()
    def condition(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Connector output for hidden states ``[B, T, H]`` → ``[B, T, C]``."""
        return self.connector(hidden_states.to(self.device, self.dtype))

    @torch.no_grad()
    def context(self, hidden_states: torch.Tensor, settings: DecodeSettings | None = None) -> torch.Tensor:
        """SANA's ``encoder_hidden_states`` for hidden states ``[b, T, H]``: with guidance, ``[2b, T, C]``, the
        unconditional rows (the connector of all-zeros states) first, from one connector call over
        ``cat([zeros_like(h), h])`` as the official class computes it; without (``guidance_scale`` 1),
        the conditional ``[b, T, C]`` alone."""
        settings = settings or self.settings
        h = hidden_states.to(self.device, self.dtype)
        return self.condition(torch.cat([torch.zeros_like(h), h]) if settings.guidance_scale != 1.0 else h)

    def sigmas(self, num_inference_steps: int) -> np.ndarray:
        """The official sigma schedule, given to the scheduler: ``linspace(1, 1/steps, steps)``."""
        return np.linspace(1.0, 1.0 / num_inference_steps, num_inference_steps)

    @torch.no_grad()
    def denoise(
        self,
        context: torch.Tensor,
        generator: Generators = None,
        settings: DecodeSettings | None = None,
    ) -> torch.Tensor:
        """Euler flow matching from noise to latents ``[b, C_lat, S, S]`` for the connector outputs
        ``context`` (`context`: ``[2b, T, C]`` unconditional rows first with guidance, else ``[b, T, C]``);
        both CFG branches run as one SANA batch."""
        settings = settings or self.settings
        guided = settings.guidance_scale != 1.0  # g = 1 is exactly the conditional branch
        b = context.shape[0] // 2 if guided else context.shape[0]
        channels = self.transformer.config.in_channels
        latents = randn_tensor(
            (b, channels, self.latent_size, self.latent_size),
            generator=generator,
            device=self.device,
            dtype=self.dtype,
        )
        self.scheduler.set_timesteps(sigmas=self.sigmas(settings.num_inference_steps), device=self.device)
        for t in self.scheduler.timesteps:
            model_in = torch.cat([latents, latents]) if guided else latents
            velocity = self.transformer(
                hidden_states=model_in,
                encoder_hidden_states=context,
                timestep=t.expand(model_in.shape[0]),
                encoder_attention_mask=None,
            ).sample
            if guided:
                v_uncond, v_cond = velocity.chunk(2)
                velocity = v_uncond + settings.guidance_scale * (v_cond - v_uncond)
            latents = self.scheduler.step(velocity, t, latents).prev_sample
        return latents

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """DC-AE decode: latents → RGB in [0, 1], ``[b, 3, H, W]`` float32 on the CPU."""
        config = self.vae.config
        latents = latents.to(self.vae.dtype) / config.scaling_factor
        if getattr(config, "shift_factor", None) is not None:
            latents = latents + config.shift_factor
        pixels = self.vae.decode(latents).sample
        return (pixels / 2 + 0.5).clamp(0, 1).float().cpu()

    @torch.no_grad()
    def forward(
        self,
        hidden_states: torch.Tensor,
        generator: Generators = None,
        settings: DecodeSettings | None = None,
    ) -> torch.Tensor:
        """Hidden states ``[B, T, H]`` → RGB ``[B, 3, H_img, W_img]`` in [0, 1] (CPU), in chunks of
        ``settings.chunk_size``. ``generator`` may be one generator or one per image (reproducible
        per image whatever the chunking)."""
        settings = settings or self.settings
        if isinstance(generator, list) and len(generator) != hidden_states.shape[0]:
            raise ValueError(f"got {len(generator)} generators for {hidden_states.shape[0]} images")
        images = []
        for start in range(0, hidden_states.shape[0], settings.chunk_size):
            chunk = slice(start, start + settings.chunk_size)
            context = self.context(hidden_states[chunk], settings)  # once per chunk, not once per step
            gen = generator[chunk] if isinstance(generator, list) else generator
            images.append(self.decode_latents(self.denoise(context, gen, settings)))
        return torch.cat(images)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """RGB ``[B, 3, H, W]`` in [0, 1] → 8-bit PIL images (rounded, as the official code does).

    An image with NaN or infinite values is not turned into a silent black image: it comes back as a
    black placeholder marked failed (`mark_decode_error`: its ``info`` says why, so its sample is never
    scored or saved as an image), and a warning says how many values were bad.
    """
    finite = torch.isfinite(images)
    bad = (~finite).flatten(1).sum(1).tolist()  # [B] non-finite values per image
    array = (images.nan_to_num(0.0, 0.0, 0.0).permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
    out = [Image.fromarray(a) for a in array]
    for i, count in enumerate(bad):
        if count:
            why = (f"non-finite decode: {count} of {finite[i].numel()} pixel values are NaN or infinite (the "
                   "refiner's inputs or weights are not finite)")
            logger.warning("BLIP3o-NEXT decode: image %d of %d failed: %s", i, len(out), why)
            mark_decode_error(out[i], why)
    return out
