"""The built-in tiny world: a tiny Qwen3 image-token model that trains on a laptop CPU.

It follows the BLIP3o-NEXT conventions exactly, at toy size:

- tokenizer: a base vocabulary, ChatML specials, then ``<im_start>``, ``<im_end>``, ``<S0>``..``<S2>``,
  ``<I0>``..``<I{K-1}>`` appended in that order; token ids are read back from the config, never assumed;
- prompt: the BLIP3o-NEXT chat template and caption instruction, ending with ``<im_start><S0>``;
- image: ``rows x cols`` codes (``grid``: an int for a square, or ``[rows, cols]``), each drawn as a
  ``tile x tile`` square by the world's *renderer* (default "palette": code k is a square of palette
  colour k; "glyphs" draws letters, `tiny/glyphs.py`; other worlds register their own).

Everything is saved with ``save_pretrained`` (safetensors + tokenizer files + config.json carrying the
world's settings) and loaded with ``from_pretrained``, the same code path as real checkpoints.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from .. import registry
from ..policies.base import ImageTokenLayout, ImageTokenPolicy, PromptBatch
from ..policies.tokenizer_files import load_tokenizer_files
from ..policies.weights import require_finite_module
from .warm_start import warm_start

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SYSTEM_PROMPT = "You are a helpful assistant."
CAPTION_INSTRUCTION = "Please generate image based on the following caption: {caption}"

# 16 well-separated colours; the first 8 have names used in prompts, the rest are distractors.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 75),
    "green": (60, 180, 75),
    "blue": (0, 130, 200),
    "yellow": (255, 225, 25),
    "orange": (245, 130, 48),
    "purple": (145, 30, 180),
    "cyan": (70, 240, 240),
    "pink": (250, 190, 212),
    "lime": (210, 245, 60),
    "teal": (0, 128, 128),
    "lavender": (220, 190, 255),
    "brown": (170, 110, 40),
    "maroon": (128, 0, 0),
    "navy": (0, 0, 128),
    "grey": (128, 128, 128),
    "black": (0, 0, 0),
}
BASE_WORDS = ["you", "are", "a", "helpful", "assistant", "please", "generate", "image", "based", "on", "the", "following", "caption", "system", "user", "an", "and", "with", "of", "at", "in", "top", "bottom", "left", "right", "half", "color", "colour"]
SPECIALS = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]


class PaletteRenderer:
    """Code k → a ``tile x tile`` square of colour ``palette[k]``."""

    def __init__(self, spec: dict[str, Any]):
        self.tile = int(spec["tile"])
        self.palette = np.asarray(spec.get("palette") or list(PALETTE.values()), dtype=np.uint8)  # [K, 3]
        self.num_codes = len(self.palette)

    @staticmethod
    def default_spec() -> dict[str, Any]:
        return {"palette": [list(c) for c in PALETTE.values()]}

    def render(self, codes: np.ndarray) -> np.ndarray:
        """``codes [B, rows, cols]`` → uint8 pixels ``[B, rows*tile, cols*tile, 3]``."""
        pix = self.palette[codes]  # [B, rows, cols, 3]
        return pix.repeat(self.tile, axis=1).repeat(self.tile, axis=2)


# Renderers are registry kind "tiny_renderer" (entry points: palette; objects, GenEval-style sprites;
# glyphs, letters for the OCR task; or "module:Class"). A class takes the world dict stored in config.json
# under `tiny_world` and has `num_codes`, `render(codes [B, rows, cols]) -> uint8 [B, H, W, 3]` and a
# static `default_spec()`.
DEFAULT_RENDERER = "palette"


def grid_shape(grid: int | Sequence[int]) -> tuple[int, int]:
    """``(rows, cols)`` of a tiny-world image: ``grid`` is an int (square) or ``[rows, cols]``."""
    if isinstance(grid, int) and not isinstance(grid, bool):
        shape = (grid, grid)
    elif isinstance(grid, Sequence) and len(grid) == 2 and all(isinstance(n, int) for n in grid):
        shape = (int(grid[0]), int(grid[1]))
    else:
        raise ValueError(f"tiny-world grid must be an int or [rows, cols], got {grid!r}")
    if min(shape) < 1:
        raise ValueError(f"tiny-world grid must have at least one row and one column, got {grid!r}")
    return shape


def build_renderer(spec: dict[str, Any]):
    return registry.resolve("tiny_renderer", spec.get("renderer", DEFAULT_RENDERER))(spec)


def build_tokenizer(num_codes: int, extra_words: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer: whole words where known, characters otherwise, plus the image tokens."""
    words = list(dict.fromkeys([*BASE_WORDS, *PALETTE, *(w.lower() for w in extra_words)]))
    chars = list(string.ascii_letters + string.digits + string.punctuation)
    vocab_list = [*SPECIALS, *words, *chars, *("##" + c for c in chars)]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    core = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>", continuing_subword_prefix="##"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<|endoftext|>", eos_token="<|im_end|>"
    )
    # The BLIP3o-NEXT convention: these are appended after the base vocabulary, in this order.
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.add_tokens(["<im_start>", "<im_end>", "<S0>", "<S1>", "<S2>"], special_tokens=True)
    tok.add_tokens([f"<I{k}>" for k in range(num_codes)], special_tokens=True)
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def make_tiny_world(
    out_dir: str | Path,
    *,
    grid: int | Sequence[int] = 4,
    tile: int = 8,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
    extra_words: Sequence[str] = (),
    renderer: str = DEFAULT_RENDERER,
    renderer_spec: dict[str, Any] | None = None,
    initializer_range: float = 0.02,
) -> Path:
    """Write a random-initialised tiny world model folder (``save_pretrained`` format) to ``out_dir``.

    ``grid`` is an int (a square image) or ``[rows, cols]``; ``renderer`` names a ``tiny_renderer``;
    ``renderer_spec`` (default: the renderer's ``default_spec()``) is stored in ``config.json`` under
    ``tiny_world`` and fixes the codebook size.
    ``initializer_range`` is the std of the random weights: at Hugging Face's 0.02 a 64-wide model's
    attention starts almost uniform, so the prompt barely reaches the image positions; ~0.1 gives the
    random model prompt-dependent features that training can pick up much sooner.
    """
    out = Path(out_dir)
    renderer_class = registry.resolve("tiny_renderer", renderer)
    rows, cols = grid_shape(grid)  # fails early on a malformed grid
    world = {"renderer": renderer, "grid": grid if isinstance(grid, int) else list(grid), "tile": tile}
    world.update(renderer_spec or renderer_class.default_spec())
    num_codes = build_renderer(world).num_codes
    tok = build_tokenizer(num_codes, extra_words)
    ids = tok.convert_tokens_to_ids
    config = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=max(512, rows * cols + 256),
        initializer_range=initializer_range,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=ids("<|im_end|>"),
        # BLIP3o-NEXT config keys, read back by the policy:
        image_start_tag_id=ids("<im_start>"),
        image_end_tag_id=ids("<im_end>"),
        scale_start_token_id=ids("<S0>"),
        image_start_token_id=ids("<I0>"),
        num_image_codes=num_codes,
        tiny_world=world,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    # With rows of std 0.02 and a unit-RMS final hidden state, image logits stay within about ±1.3, so no
    # code can get much above 30% probability unless lm_head itself grows (LoRA leaves it frozen). A
    # pretrained head is far larger; give the image rows (tied to their embeddings) a comparable scale.
    with torch.no_grad():
        start = config.image_start_token_id
        model.get_input_embeddings().weight[start : start + num_codes].normal_(0.0, 0.06)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


# `model.build` keys: make_tiny_world's (seed, grid, tile, ...) and the warm start's.
WORLD_KEYS = tuple(sorted((registry.parameters(make_tiny_world) or frozenset()) - {"out_dir"}))
WARM_KEYS = ("sft_steps", "sft_accuracy", "sft_targets", "sft_learning_rate")


class TinyWorldPolicy(ImageTokenPolicy):
    """The tiny world's policy: a `Qwen3ForCausalLM` plus a palette decoder (no hidden states needed)."""

    needs_hidden_states = False

    def __init__(self, model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast):
        cfg = model.config
        world = getattr(cfg, "tiny_world", None)
        if not world:
            raise ValueError("config.json has no 'tiny_world' section: not a tiny-world model folder")
        self.grid = grid_shape(world["grid"])  # (rows, cols)
        self.renderer = build_renderer(world)
        self.layout = ImageTokenLayout(
            image_token_start=cfg.image_start_token_id,
            num_codes=cfg.num_image_codes,
            tokens_per_image=self.grid[0] * self.grid[1],
        )
        self.model, self.tokenizer = model, tokenizer
        tokenizer.padding_side = "left"  # prompts must end at the same column (the saved setting may differ)
        self._prompt_suffix = tokenizer.convert_ids_to_tokens([cfg.image_start_tag_id, cfg.scale_start_token_id])
        if self.renderer.num_codes != self.layout.num_codes:
            raise ValueError(f"renderer draws {self.renderer.num_codes} codes; config has {self.layout.num_codes}")

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> TinyWorldPolicy:
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a model folder (make one with make_tiny_world)")
        tokenizer = load_tokenizer_files(path, PreTrainedTokenizerFast.from_pretrained, [("tokenizer.json",)])
        model = Qwen3ForCausalLM.from_pretrained(path, dtype=dtype)
        require_finite_module(model, path)  # a NaN weight would otherwise load silently
        return cls(model, tokenizer)

    @classmethod
    def build(cls, path: str | Path, prompts: Sequence[Any], progress: bool = True, **kwargs: Any) -> Path:
        """Make a tiny world at ``path`` from the recipe's ``model.build`` keys: `make_tiny_world`'s, plus
        ``sft_steps`` (default 0: none), ``sft_accuracy``, ``sft_targets`` and ``sft_learning_rate`` for a
        supervised warm start on ``prompts`` (`blip3o_rl.tiny.warm_start`)."""
        unknown = sorted(set(kwargs) - set(WORLD_KEYS) - set(WARM_KEYS))
        if unknown:
            raise ValueError(f"model.build: unknown keys {unknown}; known: {[*WORLD_KEYS, *WARM_KEYS]}")
        out = make_tiny_world(path, **{k: v for k, v in kwargs.items() if k in WORLD_KEYS})
        steps = int(kwargs.get("sft_steps", 0))
        if steps:
            targets = registry.resolve("tiny_targets", kwargs.get("sft_targets", "layout"))
            given = {"accuracy": ("sft_accuracy", float), "learning_rate": ("sft_learning_rate", float),
                     "seed": ("seed", int)}
            options = {arg: cast(kwargs[key]) for arg, (key, cast) in given.items() if key in kwargs}
            policy = cls.from_pretrained(out)
            warm_start(policy, list(prompts), targets, policy.grid, steps=steps, progress=progress, **options)
            policy.save_pretrained(out)
        return out

    def save_pretrained(self, path: str | Path) -> None:
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)

    def prompt_text(self, caption: str) -> str:
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": CAPTION_INSTRUCTION.format(caption=caption)},
        ]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + "".join(self._prompt_suffix)

    def tokenize_prompts(self, captions: Sequence[str]) -> PromptBatch:
        enc = self.tokenizer(
            [self.prompt_text(c) for c in captions], padding=True, return_tensors="pt", add_special_tokens=False
        )
        return PromptBatch(enc["input_ids"], enc["attention_mask"])

    def decode(self, codes: torch.Tensor, hidden_states: torch.Tensor | None = None, *,
               generators: Sequence[torch.Generator] | None = None) -> list[Image.Image]:
        """Draws the tiles; deterministic, so ``generators`` are not used."""
        pix = self.renderer.render(codes.cpu().numpy().reshape(-1, *self.grid))  # [B, H, W, 3]
        return [Image.fromarray(p) for p in pix]
