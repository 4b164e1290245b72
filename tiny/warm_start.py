"""A short supervised warm start for tiny-world policies: the tiny counterpart of the SFT checkpoint.

BLIP3o-NEXT starts RL from a supervised (SFT) model that already reads its prompt. A random-init
tiny model does not: GRPO would first have to discover attention to the prompt from a sequence-level
reward, which takes far longer than a demo. So the tiny world is warm-started by cross-entropy toward
*noisy* target images (each tile right with probability ``accuracy``, else a random code): the model
learns to read the prompt but paints only about ``accuracy`` of each image right, leaving RL the rest.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..policies.base import ImageTokenPolicy
from ..rl.data import PromptRow
from ..rl.grpo.logprobs import sequence_logprobs


def warm_start(
    policy: ImageTokenPolicy,
    rows: list[PromptRow],
    target_codes: Callable[[dict, tuple[int, int]], torch.Tensor],
    grid: tuple[int, int],
    steps: int = 100,
    accuracy: float = 0.3,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
) -> None:
    """Train ``policy.model`` in place toward noisy targets ``target_codes(row, grid)``.

    ``row`` is the prompt file's row as a dict: ``{"prompt": ..., **metadata}``; ``grid`` is the image's
    ``(rows, cols)`` of codes. Targets are registry kind ``tiny_targets`` (entry points layout, geneval,
    glyphs; or "module:function").
    """
    g = torch.Generator().manual_seed(seed)
    targets = [target_codes({"prompt": r.prompt, **r.metadata}, grid) for r in rows]  # each [N]
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
