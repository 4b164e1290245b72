"""`KVCacheEngine`: our batched, KV-cached sampler over the policy's `ImageTokenLM` (CPU and GPU).

Prefill each prompt once, copy its KV cache to the G rows of its group (or to the rows of the part of
it asked for), then decode exactly N image codes, sampling only among the image tokens (their rows of
``lm_head``) from `rl/grpo/sampling.py`'s distribution. Each prompt's noise comes from its own generator
seeded with its seed, drawn for the whole group at every step, so a group's samples do not depend on
what else is in the batch, nor on which of its samples this call produces.
"""

from __future__ import annotations

import torch

from ....policies.base import PromptBatch
from ....policies.model import StepOutput
from ...grpo.sampling import is_truncated, sample_codes
from .base import Rollout, RolloutEngine, SamplingParams


def prefill(lm, prompts: PromptBatch) -> StepOutput:
    """Run the prompts once into a new KV cache; ``logits [P, K]`` and ``hidden [P, H]`` at the last token."""
    return lm(prompts.input_ids, prompts.attention_mask, cache=lm.new_cache())


def decode_one_token(lm, codes: torch.Tensor, cache, attention_mask: torch.Tensor, positions: torch.Tensor):
    """Feed one image code per row ``codes [B]`` at ``positions [B]``; the cache is updated in place."""
    ids = lm.layout.to_token_ids(codes)[:, None]  # [B, 1]
    return lm(ids, attention_mask, cache=cache, position_ids=positions[:, None])


class KVCacheEngine(RolloutEngine):
    """Eager sampler over Hugging Face's dynamic KV cache; provides the conditioning hidden states."""

    provides_hidden_states = True

    @torch.no_grad()
    def _generate(
        self,
        prompts: PromptBatch,
        num_generations: int,
        params: SamplingParams,
        seeds: list[int],
        return_hidden: bool,
        samples: range,
    ) -> Rollout:
        lm, g, k = self.policy.lm, num_generations, len(samples)
        n = lm.layout.tokens_per_image
        out = prefill(lm, prompts)
        # One prefill per prompt, then the cache is copied to its k rows (k = G, or the slice held here).
        cache = out.cache
        cache.batch_repeat_interleave(k)
        logits, h = out.logits.repeat_interleave(k, 0), out.hidden.repeat_interleave(k, 0)  # [B, K], [B, H]
        group = prompts.repeat_interleave(k)  # [B, P]
        b, p = group.input_ids.shape
        mask = torch.cat([group.attention_mask, group.attention_mask.new_ones(b, n)], 1)  # [B, P + N]
        next_pos = group.attention_mask.sum(1)  # [B] position of the first image token
        generators = [torch.Generator(h.device).manual_seed(s) for s in seeds]

        codes = torch.empty(b, n, dtype=torch.long, device=h.device)
        logprobs = torch.empty(b, n, dtype=torch.float32, device=h.device)
        truncated = params.temperature > 0 and is_truncated(params.top_k, params.top_p)
        kept = torch.empty(b, n, dtype=torch.long, device=h.device) if truncated else None  # kept-set sizes
        hidden = [h] if return_hidden else None
        for j in range(n):
            # each prompt's generator draws its whole group's noise; rows `samples` of it are used
            c, lp, kp = sample_codes(logits, params.temperature, params.top_k, params.top_p, generators, g, samples)
            codes[:, j], logprobs[:, j] = c, lp
            if kept is not None and kp is not None:
                kept[:, j] = kp
            # The last code's hidden state is needed only as a conditioning state: one extra step.
            if j < n - 1 or return_hidden:
                step = decode_one_token(lm, c, cache, mask[:, : p + j + 1], next_pos + j)
                logits = step.logits
                if hidden is not None:
                    hidden.append(step.hidden)
        states = torch.stack(hidden, 1) if hidden is not None else None  # [B, N + 1, H]
        return Rollout(prompts=group, codes=codes, sampler_logprobs=logprobs, seeds=seeds,
                       hidden_states=states, kept_sizes=kept, first_sample=samples.start)
