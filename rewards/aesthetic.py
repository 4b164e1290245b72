"""LAION aesthetic score: a linear or MLP head on the CLIP ViT-L/14 image embedding.

As the LAION predictors compute it: the image embedding of OpenAI's CLIP ViT-L/14 (`DEFAULT_CLIP`,
transformers' `CLIPModel`, any CLIP folder; not ``CLIPVisionModelWithProjection``, which in
transformers 5 builds a default 512-wide projection from a full CLIP config and silently re-initialises it), L2-normalised, through the head,
which predicts the mean human rating (about 1-10). Heads:

- the "improved aesthetic predictor" MLP (``sac+logos+ava1-l14-linearMSE``): keys ``layers.0``,
  ``layers.2``, ``layers.4``, ``layers.6``, ``layers.7`` (Linear 768→1024→128→64→16→1; dropouts
  between, no activations), the head Flow-GRPO and DDPO train with;
- the first LAION linear head (``sa_0_4_vit_l_14_linear``): keys ``weight`` ``[1, 768]`` and ``bias``.

``head`` is a local ``.safetensors`` file (or a ``.pth`` / ``.pt`` plain state dict, read with
``torch.load(weights_only=True)``, never unpickling objects; `convert_head` writes the safetensors
copy). The layer sizes are read from the file, so any chain of linear layers ending in 1 loads.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .pretrained import PretrainedReward, clip_image_features, load_pretrained

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
_LAYER = re.compile(r"^(?:layers\.)?(\d+)\.(weight|bias)$")


def read_head_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The head's tensors from a ``.safetensors`` file or a ``.pth``/``.pt`` plain state dict."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"aesthetic: head={str(path)!r}: no such file (a .safetensors LAION aesthetic head)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    if path.suffix in (".pth", ".pt", ".bin"):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"aesthetic: head={str(path)!r} is not a plain state dict of tensors")
        return state
    raise ValueError(f"aesthetic: head={str(path)!r}: expected a .safetensors (or .pth / .pt) file")


def build_head(state: dict[str, torch.Tensor], in_features: int, where: str = "head") -> nn.Sequential:
    """The chain of linear layers in ``state`` (``weight``/``bias``, or ``[layers.]N.weight``/``bias``)."""
    if set(state) == {"weight", "bias"}:
        layers = {0: (state["weight"], state["bias"])}
    else:
        found: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            m = _LAYER.match(key)
            if m is None:
                raise ValueError(f"aesthetic: {where}: unexpected key {key!r} (a LAION linear or MLP head has "
                                 "'weight'/'bias' or 'layers.N.weight'/'layers.N.bias')")
            found.setdefault(int(m.group(1)), {})[m.group(2)] = value
        for idx, parts in found.items():
            if set(parts) != {"weight", "bias"}:
                raise ValueError(f"aesthetic: {where}: layer {idx} lacks its weight or bias")
        layers = {i: (p["weight"], p["bias"]) for i, p in found.items()}
    if not layers:
        raise ValueError(f"aesthetic: {where}: no layers")
    modules, size = [], in_features
    for idx in sorted(layers):
        weight, bias = layers[idx]
        if weight.ndim != 2 or weight.shape[1] != size or bias.shape != (weight.shape[0],):
            raise ValueError(f"aesthetic: {where}: layer {idx} has weight {tuple(weight.shape)} / bias "
                             f"{tuple(bias.shape)}, expected inputs of size {size}")
        linear = nn.Linear(size, weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(weight.float())
            linear.bias.copy_(bias.float())
        modules.append(linear)
        size = weight.shape[0]
    if size != 1:
        raise ValueError(f"aesthetic: {where}: the last layer has {size} outputs, expected 1")
    return nn.Sequential(*modules).eval()


def convert_head(src: str | Path, dst: str | Path) -> Path:
    """Copy a ``.pth`` aesthetic head (plain state dict) into a ``.safetensors`` file."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in read_head_state(src).items()}, str(dst))
    return Path(dst)


class AestheticReward(PretrainedReward):
    """``aesthetic``: the LAION aesthetic head on CLIP ViT-L/14 image embeddings (prompt-independent)."""

    name = "aesthetic"

    def __init__(self, head: str | None = None, clip: str = DEFAULT_CLIP, *, scale: float = 1.0,
                 device: str | None = None, dtype: str | None = None, batch_size: int = 32):
        from transformers import AutoImageProcessor, CLIPModel

        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        if head is None:
            raise ValueError("aesthetic: head is required: a local .safetensors file of a LAION aesthetic head "
                             "(e.g. sac+logos+ava1-l14-linearMSE; `blip3o_rl.rewards.aesthetic.convert_head` "
                             "turns the published .pth into safetensors)")
        state = read_head_state(head)  # before the CLIP model: a bad head fails fast
        self.scale = float(scale)
        self.model = load_pretrained(CLIPModel.from_pretrained, clip, reward=self.name,
                                     field="clip", dtype=self.dtype).to(self.device).eval()
        self.image_processor = load_pretrained(AutoImageProcessor.from_pretrained, clip, reward=self.name, field="clip")
        self.head = build_head(state, int(self.model.config.projection_dim), where=f"head={head!r}").to(self.device)
        self.model_ids = {"clip": clip, "head": str(head)}

    @torch.no_grad()
    def score_images(self, images, prompts) -> tuple[list[float], list[dict[str, Any]]]:
        emb = clip_image_features(self.model, self.image_processor, images)  # [N, D], unit norm
        values = self.head(emb).squeeze(-1)  # [N]
        return (self.scale * values).tolist(), [{} for _ in images]
