"""Tiny random-initialised GenEval models (Mask2Former + CLIP) saved in the real on-disk formats.

They load through exactly the code paths of the real checkpoints (`Mask2FormerDetector`,
`ColourClassifier`), in well under a second on a CPU, which is what the tests and CPU demos need.
Their predictions are meaningless; ``object_bias`` makes the detector favour chosen classes so a
pipeline can be checked end to end.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from .metadata import GENEVAL_OBJECTS


def save_tiny_detector(
    path: str | Path, *, seed: int = 0, object_bias: Mapping[str, float] | None = None, image_size: int = 64
) -> Path:
    """Write a tiny Mask2Former (Swin backbone, 80 GenEval labels) and its image processor to ``path``.

    ``object_bias`` adds a constant to the class logits of the named objects for every query (e.g.
    ``{"dog": 8.0}`` makes most queries detect a dog); the no-object logit gets 0.
    """
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    torch.manual_seed(seed)
    backbone = SwinConfig(
        image_size=image_size,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(
        backbone_config=backbone,
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        dim_feedforward=32,
        num_queries=8,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        id2label=dict(enumerate(GENEVAL_OBJECTS)),
        label2id={n: i for i, n in enumerate(GENEVAL_OBJECTS)},
    )
    model = Mask2FormerForUniversalSegmentation(config).eval()
    if object_bias:
        with torch.no_grad():
            predictor = model.class_predictor
            predictor.weight.mul_(0.1)
            predictor.bias.zero_()
            for name, value in object_bias.items():
                predictor.bias[GENEVAL_OBJECTS.index(name)] = value
    path = Path(path)
    model.save_pretrained(path)
    Mask2FormerImageProcessor(size={"shortest_edge": image_size, "longest_edge": image_size * 2}).save_pretrained(path)
    return path


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (GPT-2/CLIP convention)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def save_tiny_clip_tokenizer(path: str | Path) -> tuple[int, int, int]:
    """Write a character-level CLIP BPE tokenizer to ``path``; returns (vocab size, bos id, eos id)."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    bos, eos = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": bos, "<|endoftext|>": eos})
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        CLIPTokenizer.from_pretrained(tmp).save_pretrained(path)
    return len(vocab), bos, eos


def save_tiny_clip(path: str | Path, *, seed: int = 0, image_size: int = 32) -> Path:
    """Write a tiny CLIP (character-level BPE tokenizer, 1-layer towers) and its processors to ``path``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    path = Path(path)
    vocab_size, bos, eos = save_tiny_clip_tokenizer(path)
    config = CLIPConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": vocab_size,
            "max_position_embeddings": 77,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": eos,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=8,
    )
    CLIPModel(config).eval().save_pretrained(path)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(path)
    return path
