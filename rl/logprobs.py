"""The trainer's forward: log-probs of sampled image codes, entropy, and conditioning hidden states.

One forward over ``prompt + codes`` gives everything the step needs:

- hidden at positions ``P-1 … P+N-2`` predict codes ``0 … N-1`` → log-probs and entropy;
- hidden at positions ``P-1 … P+N-1`` (the last prompt token, e.g. BLIP3o-NEXT's ``<S0>``, and the N
  image tokens) are the N + 1 conditioning states a diffusion decoder reads.

Logits are built from the image rows of ``lm_head`` chunk by chunk over positions, each chunk under
activation checkpointing, so no ``[B, N, num_codes]`` tensor is ever kept for backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from blip3o_rl.policies.base import ImageTokenPolicy, PromptBatch
from blip3o_rl.rl.sampling import scored_logits


@dataclass
class SequenceLogprobs:
    logprobs: torch.Tensor  # [B, N] log-prob of each sampled code (grad flows when enabled)
    entropy: torch.Tensor  # [B, N] entropy of the sampling distribution at each position (detached)
    hidden_states: torch.Tensor | None  # [B, N + 1, H] conditioning states (detached), if requested


def _chunk_logprobs(policy, hidden, codes, temperature, top_k, top_p, kept=None):
    # scored against the sampler's kept set (rl/sampling.py); untruncated: plain logits / temperature
    logp = torch.log_softmax(scored_logits(policy.image_logits(hidden), codes, temperature, top_k, top_p, kept), -1)
    picked = logp.gather(-1, codes[..., None]).squeeze(-1)
    with torch.no_grad():
        p = logp.exp()
        entropy = -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)
    return picked, entropy


def code_logprobs(
    policy: ImageTokenPolicy,
    hidden: torch.Tensor,
    codes: torch.Tensor,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    chunk_size: int = 128,
    kept: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs ``[B, N]`` of ``codes`` under the processed distribution at ``hidden [B, N, H]``, and entropy.

    ``kept [B, N]``: the sampler's kept-set sizes (truncated sampling), see `rl.sampling.scored_logits`.
    """
    parts, ents = [], []
    for s in range(0, codes.shape[1], chunk_size):
        k = None if kept is None else kept[:, s : s + chunk_size]
        args = (policy, hidden[:, s : s + chunk_size], codes[:, s : s + chunk_size], temperature, top_k, top_p, k)
        if torch.is_grad_enabled():
            lp, ent = checkpoint(_chunk_logprobs, *args, use_reentrant=False)
        else:
            lp, ent = _chunk_logprobs(*args)
        parts.append(lp)
        ents.append(ent)
    return torch.cat(parts, 1), torch.cat(ents, 1)


def sequence_logprobs(
    policy: ImageTokenPolicy,
    prompts: PromptBatch,
    codes: torch.Tensor,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    return_hidden: bool = False,
    chunk_size: int = 128,
    kept: torch.Tensor | None = None,
) -> SequenceLogprobs:
    """Forward ``prompts [B, P]`` + ``codes [B, N]`` through the policy; see the module docstring."""
    p, n = prompts.input_ids.shape[1], codes.shape[1]
    input_ids = torch.cat([prompts.input_ids, policy.layout.to_token_ids(codes)], 1)  # [B, P + N]
    attention_mask = torch.cat([prompts.attention_mask, torch.ones_like(codes)], 1)
    hidden = policy.hidden_states(input_ids, attention_mask).last_hidden_state  # [B, P + N, H]
    logprobs, entropy = code_logprobs(
        policy, hidden[:, p - 1 : p - 1 + n], codes, temperature, top_k, top_p, chunk_size, kept
    )
    cond = hidden[:, p - 1 : p + n].detach() if return_hidden else None  # [B, N + 1, H]
    return SequenceLogprobs(logprobs, entropy, cond)
