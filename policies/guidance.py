"""Classifier-free guidance at the AR level: `GuidedImageTokenLM`, an `ImageTokenLM` that samples and scores
the CFG-mixed distribution.

Every sampled row has two rows in the model: the conditional one (the prompt) and an unconditional one
(the prompt with its content masked, `Guidance.unconditional`). Each position's image logits are mixed
as transformers' ``ClassifierFreeGuidanceLogitsProcessor`` does::

    mixed = uncond + (cond - uncond) * scale

and **that** mixed distribution (then temperature / top-k / top-p, `rl/grpo/sampling.py`) is what the
rollout engines sample from and what the trainer scores: the importance ratio and the KL term are both
defined on it, so the log-prob of every sampled code under the trainer equals the sampler's.

The batch is doubled inside `forward`, so the engines and the trainer keep passing B conditional rows:

- step calls (prefill and decode): the KV cache holds 2B rows, the B conditional rows first
  (`ImageTokenLM.rows_per_sample` is 2; a prompt's prefill repeated per sample keeps that order, since
  repeating ``[c_0 .. c_P-1, u_0 .. u_P-1]`` row-wise gives the conditional block first); the step returns
  the B mixed logits and the conditional hidden states;
- score calls: one body pass over the 2B rows, then the mixed logits chunk by chunk. With
  ``detach_uncond`` the unconditional rows (body and head) run without grad, their logits a constant in
  the mixture (ReasonGen-R1's choice: the policy gradient flows through the conditional branch only; the
  log-prob values are the same).

The default is the gradient through both branches: it is the exact gradient of the objective on the
distribution the rollout sampled from; ``detach_uncond`` is a cheaper (no backward through the second
half of the batch) but biased approximation of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .model import ImageTokenLayout, ImageTokenLM, ScoredCodes, StaticKVCache, StepOutput, score_chunks


@dataclass(frozen=True)
class Guidance:
    """CFG settings: the mixing ``scale`` (> 1), how an unconditional prompt is made, the gradient option."""

    scale: float
    keep_ids: tuple[int, ...]  # prompt tokens the unconditional row keeps (Janus: BOS and <begin_of_image>)
    pad_id: int  # every other prompt token becomes this one
    detach_uncond: bool = False  # no gradient through the unconditional rows (ReasonGen-R1)

    def __post_init__(self):
        if not self.scale > 1:
            raise ValueError(f"guidance scale must be > 1 (1 is no guidance: use guidance=None), got {self.scale}")

    def unconditional(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids [B, P]`` with every token not in `keep_ids` replaced by `pad_id`."""
        keep = torch.zeros_like(input_ids, dtype=torch.bool)
        for i in self.keep_ids:
            keep |= input_ids == i
        return input_ids.masked_fill(~keep, self.pad_id)

    def mix(self, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        """The guided logits, in float32 (the formula of transformers' CFG logits processor)."""
        cond, uncond = cond.float(), uncond.float()
        return uncond + (cond - uncond) * self.scale


def _twice(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else torch.cat([t, t], 0)


class GuidedImageTokenLM(ImageTokenLM):
    """`ImageTokenLM` under classifier-free guidance (see the module docstring); ``guidance`` None: plain."""

    def __init__(self, causal_lm, layout: ImageTokenLayout, guidance: Guidance | None):
        super().__init__(causal_lm, layout)
        self.guidance = guidance

    @property
    def rows_per_sample(self) -> int:  # type: ignore[override]
        return 1 if self.guidance is None else 2

    def _doubled_inputs(self, input_ids: torch.Tensor | None, codes: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Body inputs of the 2B rows: conditional prompts then unconditional ones, the same codes for both."""
        assert self.guidance is not None
        ids = None if input_ids is None else torch.cat([input_ids, self.guidance.unconditional(input_ids)], 0)
        return self.body_inputs(ids, _twice(codes))

    def _step(self, input_ids, codes, attention_mask, cache, position_ids) -> StepOutput:
        if self.guidance is None:
            return super()._step(input_ids, codes, attention_mask, cache, position_ids)
        b = attention_mask.shape[0]
        h = self._body(self._doubled_inputs(input_ids, codes), _twice(attention_mask), _twice(position_ids),
                       cache)[:, -1]  # [2B, H]
        return StepOutput(logits=self.guided_logits(h[:b], h[b:]), hidden=h[:b], cache=cache)

    def _static_step(self, input_ids, codes, columns, cache: StaticKVCache, position_ids, cache_position) -> StepOutput:
        if self.guidance is None:
            return super()._static_step(input_ids, codes, columns, cache, position_ids, cache_position)
        b = columns.shape[0]
        h = self._static_hidden(self._doubled_inputs(input_ids, codes), _twice(columns), cache,
                                _twice(position_ids), cache_position)  # [2B, H]
        return StepOutput(logits=self.guided_logits(h[:b], h[b:]), hidden=h[:b], cache=cache)

    def guided_logits(self, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        """Mixed image logits ``[..., K]`` (float32) from conditional and unconditional hidden states."""
        assert self.guidance is not None
        return self.guidance.mix(self.image_logits(cond), self.image_logits(uncond))

    def _guided_logits_detached(self, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        """`guided_logits` with the unconditional logits a constant (no gradient through that branch)."""
        assert self.guidance is not None
        with torch.no_grad():
            u = self.image_logits(uncond)
        return self.guidance.mix(self.image_logits(cond), u)

    @property
    def scores_full_vocabulary(self) -> bool:  # type: ignore[override]
        return self.guidance is None  # a guided mixture is no row of a full-vocabulary softmax

    def _score(self, prompt_ids, prompt_mask, codes, score, return_hidden, chunk_size,
               full_vocabulary=False) -> ScoredCodes:
        g = self.guidance
        if g is None or score is None:
            return super()._score(prompt_ids, prompt_mask, codes, score, return_hidden, chunk_size, full_vocabulary)
        if full_vocabulary:
            raise ValueError("full-vocabulary scoring is not defined for a guided (CFG) policy: it samples "
                             "a mixture of two distributions; score it in the sampler's kept set")
        p, n, b = prompt_ids.shape[1], codes.shape[1], codes.shape[0]
        mask = torch.cat([prompt_mask, torch.ones_like(codes)], 1)  # [B, P + N]
        if g.detach_uncond:
            cond_h = self._body(self.body_inputs(prompt_ids, codes), mask, None)  # [B, P + N, H]
            with torch.no_grad():
                uncond_h = self._body(self.body_inputs(g.unconditional(prompt_ids), codes), mask, None)
        else:
            both = self._body(self._doubled_inputs(prompt_ids, codes), _twice(mask), None)  # [2B, P + N, H]
            cond_h, uncond_h = both[:b], both[b:]
        states = (cond_h[:, p - 1 : p + n - 1], uncond_h[:, p - 1 : p + n - 1])  # [B, N, H] each: predict codes
        head = self._guided_logits_detached if g.detach_uncond else self.guided_logits
        logprobs, entropy = score_chunks(head, states, codes, score, chunk_size)
        hidden = cond_h[:, p - 1 : p + n].detach() if return_hidden else None  # [B, N + 1, H] conditional
        return ScoredCodes(logprobs, entropy, hidden)


__all__ = ["Guidance", "GuidedImageTokenLM"]
