"""Tiny random stand-ins of the preference rewards' models, saved in the real on-disk formats.

They load through exactly the code paths of the real checkpoints (`CLIPScoreReward`,
`PickScoreReward`, `AestheticReward`) in well under a second on a CPU; their scores are meaningless.

- `save_tiny_clip_score(path)`: one transformers CLIP folder (model, tokenizer, image processor), the
  layout of ``openai/clip-vit-large-patch14``;
- `save_tiny_pickscore(root)`: PickScore's two folders, ``root/processor`` (tokenizer + image processor,
  the role of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``) and ``root/model`` (config + safetensors of a
  CLIP-H-style `CLIPModel`: GELU, patch 14; the role of ``yuvalkirstain/PickScore_v1``);
- `save_tiny_aesthetic(root)`: ``root/clip`` (a CLIP folder like ViT-L/14) and ``root/head.safetensors``
  (the LAION MLP head's keys, ``layers.0`` ... ``layers.7``, with small hidden sizes), or the linear head.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .geneval.testing import save_tiny_clip, save_tiny_clip_tokenizer


def save_tiny_clip_score(path: str | Path, *, seed: int = 0, image_size: int = 32) -> Path:
    """A tiny CLIP folder for `CLIPScoreReward` (the same builder as GenEval's colour classifier)."""
    return save_tiny_clip(path, seed=seed, image_size=image_size)


def save_tiny_pickscore(root: str | Path, *, seed: int = 0, image_size: int = 28) -> tuple[Path, Path]:
    """Write ``root/model`` and ``root/processor`` as PickScore ships them; returns (model, processor)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    root = Path(root)
    model_dir, processor_dir = root / "model", root / "processor"
    vocab_size, bos, eos = save_tiny_clip_tokenizer(processor_dir)
    CLIPImageProcessor(  # CLIP-H's preprocessing (shortest side, centre crop, OpenAI mean/std), at tiny size
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(processor_dir)
    tower = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "hidden_act": "gelu", "layer_norm_eps": 1e-5}
    config = CLIPConfig(
        text_config={**tower, "vocab_size": vocab_size, "max_position_embeddings": 77, "bos_token_id": bos,
                     "eos_token_id": eos, "pad_token_id": eos},
        vision_config={**tower, "image_size": image_size, "patch_size": 14},
        projection_dim=8,
    )
    model = CLIPModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(float(torch.tensor(20.0).log()))  # PickScore's scale is ~100; any value works
    model.save_pretrained(model_dir)
    return model_dir, processor_dir


def save_tiny_aesthetic(root: str | Path, *, seed: int = 0, head: str = "mlp", image_size: int = 32) -> tuple[Path, Path]:
    """Write ``root/clip`` and ``root/head.safetensors`` (``head``: "mlp" or "linear"); returns (clip, head)."""
    from safetensors.torch import save_file

    root = Path(root)
    clip_dir = save_tiny_clip(root / "clip", seed=seed, image_size=image_size)
    dim = 8  # the tiny CLIP's projection_dim
    g = torch.Generator().manual_seed(seed + 1)
    if head == "mlp":  # LAION's Sequential: 0 Linear, 1 Dropout, 2 Linear, 3 Dropout, 4 Linear, 5 Dropout, 6 Linear, 7 Linear
        sizes = {0: (dim, 16), 2: (16, 8), 4: (8, 8), 6: (8, 4), 7: (4, 1)}
        state = {}
        for idx, (n_in, n_out) in sizes.items():
            state[f"layers.{idx}.weight"] = torch.randn(n_out, n_in, generator=g) / n_in**0.5
            state[f"layers.{idx}.bias"] = torch.randn(n_out, generator=g) * 0.1
    elif head == "linear":
        state = {"weight": torch.randn(1, dim, generator=g), "bias": torch.tensor([5.0])}
    else:
        raise ValueError(f"head must be 'mlp' or 'linear', got {head!r}")
    path = root / "head.safetensors"
    save_file(state, str(path))
    return clip_dir, path
