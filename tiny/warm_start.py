"""A short supervised warm start for tiny-world policies: the tiny counterpart of the SFT checkpoint.

BLIP3o-NEXT starts RL from a supervised (SFT) model that already reads its prompt. A random-init
tiny model does not: GRPO would first have to discover attention to the prompt from a sequence-level
reward, which takes far longer than a demo. So the tiny world is warm-started by cross-entropy toward
*noisy* target images (each tile right with probability ``accuracy``, else a random code): the model
learns to read the prompt but paints only about ``accuracy`` of each image right, leaving RL the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from blip3o_rl import registry
from blip3o_rl.rl.data import PromptRow
from blip3o_rl.rl.logprobs import sequence_logprobs
from blip3o_rl.tiny.world import TinyWorldPolicy, make_tiny_world


def warm_start(
    policy: TinyWorldPolicy,
    rows: list[PromptRow],
    target_codes: Callable[[dict, tuple[int, int]], torch.Tensor],
    steps: int = 100,
    accuracy: float = 0.3,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
) -> None:
    """Train ``policy.model`` in place toward noisy targets ``target_codes(row, policy.grid)``.

    ``row`` is the prompt file's row as a dict: ``{"prompt": ..., **metadata}``.
    """
    g = torch.Generator().manual_seed(seed)
    targets = [target_codes({"prompt": r.prompt, **r.metadata}, policy.grid) for r in rows]  # each [N]
    opt = torch.optim.AdamW(policy.model.parameters(), lr=learning_rate)
    k = policy.layout.num_codes
    policy.model.train()
    for _ in tqdm(range(steps), desc="tiny-world warm start", disable=not progress):
        pick = torch.randint(len(rows), (batch_size,), generator=g).tolist()
        target = torch.stack([targets[i] for i in pick])  # [B, N]
        noise = torch.randint(k, target.shape, generator=g)
        keep = torch.rand(target.shape, generator=g) < accuracy
        codes = torch.where(keep, target, noise)
        prompts = policy.prompt_batch([rows[i].prompt for i in pick])
        loss = -sequence_logprobs(policy.lm, prompts, codes, temperature=1.0).logprobs.mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    policy.model.eval()


# Warm-start targets are registry kind "tiny_targets" (entry points: layout, geneval, glyphs; or
# "module:function"): function(row, (rows, cols)) -> codes [rows * cols], the image a prompt asks for,
# where row = {"prompt": ..., **metadata} is the prompt file's row.
WORLD_KEYS = tuple(sorted((registry.parameters(make_tiny_world) or frozenset()) - {"out_dir"}))  # seed, grid, tile, ...
WARM_KEYS = ("sft_steps", "sft_accuracy", "sft_targets", "sft_learning_rate")


def build_tiny_world(out_dir: str | Path, rows: list[PromptRow], spec: dict[str, Any], progress: bool = True) -> Path:
    """Make a tiny world from ``spec`` (`make_tiny_world` keys plus ``sft_*`` warm-start keys) and save it.

    ``sft_steps`` (default 0: none) warm-starts it on ``rows`` toward the ``sft_targets`` images.
    """
    unknown = sorted(set(spec) - set(WORLD_KEYS) - set(WARM_KEYS))
    if unknown:
        raise ValueError(f"model.build: unknown keys {unknown}; known: {[*WORLD_KEYS, *WARM_KEYS]}")
    out = make_tiny_world(out_dir, **{k: v for k, v in spec.items() if k in WORLD_KEYS})
    steps = int(spec.get("sft_steps", 0))
    if steps:
        targets = registry.resolve("tiny_targets", spec.get("sft_targets", "layout"))
        given = {"accuracy": ("sft_accuracy", float), "learning_rate": ("sft_learning_rate", float), "seed": ("seed", int)}
        options = {arg: cast(spec[key]) for arg, (key, cast) in given.items() if key in spec}  # else warm_start's defaults
        policy = TinyWorldPolicy.from_pretrained(out)
        warm_start(policy, rows, targets, steps=steps, progress=progress, **options)
        policy.save_pretrained(out)
    return out
