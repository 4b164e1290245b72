"""`ImageTokenLM`: the trainable autoregressive model as one ``nn.Module``.

Every computation on the trainable weights runs inside `ImageTokenLM.forward`, so the wrapper that
distributed training puts around this one module (DDP's gradient hooks, FSDP's unsharding, ZeRO-3's
gathering) sees all of it. Two calls, chosen by the arguments:

- **score** (``codes`` given): one pass over ``prompt + codes`` returning the log-prob and entropy of
  every code under a caller-supplied distribution (chunked over positions, each chunk under activation
  checkpointing when grad is on) and, optionally, the N + 1 conditioning hidden states;
- **step** (``cache`` given): run ``input_ids`` into the KV cache (a prefill into an empty cache, or one
  decode token) and return the image-code logits and hidden state at the last position.

Logits are only ever built from the image rows of ``lm_head``: that is the masked softmax over the
image tokens, and it keeps a ``[*, vocab]`` tensor (217k columns for BLIP3o-NEXT) out of memory.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: ``score(logits [B, n, K], codes [B, n], positions) -> (logprobs [B, n], entropy [B, n])``: the sampling
#: distribution, supplied by the caller (the trainer's `rl/sampling.py`); ``positions`` is the slice of
#: the N code positions this chunk covers, for callers that carry per-position state.
ScoreFn = Callable[[torch.Tensor, torch.Tensor, slice], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class SamplingParams:
    """The sampling distribution over image codes (applied by `rl/sampling.py`)."""

    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k truncation (RL default)
    top_p: float = 1.0  # 1.0: no nucleus truncation (RL default)


@dataclass(frozen=True)
class ImageTokenLayout:
    """Where the image tokens live in the vocabulary and how many make one image."""

    image_token_start: int  # token id of code 0 (<I0>)
    num_codes: int  # codebook size
    tokens_per_image: int  # e.g. 729 = 27 x 27 for BLIP3o-NEXT

    def to_token_ids(self, codes: torch.Tensor) -> torch.Tensor:
        return codes + self.image_token_start


@dataclass
class ScoredCodes:
    """What a score call returns."""

    logprobs: torch.Tensor | None  # [B, N] log-prob of each code (grad flows when enabled); None without score
    entropy: torch.Tensor | None  # [B, N] entropy of the distribution at each position (detached)
    hidden_states: torch.Tensor | None  # [B, N + 1, H] conditioning states (detached), if requested


@dataclass
class StepOutput:
    """What a step call returns."""

    logits: torch.Tensor  # [B, K] image-code logits at the last input position
    hidden: torch.Tensor  # [B, H] post-final-norm hidden state at the last input position
    cache: Any  # the KV cache, updated in place


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows: 0 at each row's first real token (padding clamped to 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


_CACHE_ARGUMENT: dict[type, str] = {}


def _cache_argument(body_class: type[nn.Module]) -> str:
    """transformers renamed the body's ``past_key_values`` argument to ``cache`` (5.x, old name deprecated)."""
    if body_class not in _CACHE_ARGUMENT:
        params = inspect.signature(body_class.forward).parameters
        _CACHE_ARGUMENT[body_class] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_ARGUMENT[body_class]


class ImageTokenLM(nn.Module):
    """A Hugging Face causal LM restricted to its image tokens; see the module docstring.

    ``causal_lm`` is the ``*ForCausalLM`` (LoRA, when used, is injected into it in place, so this module
    holds the adapter weights too).
    """

    causal_lm: PreTrainedModel

    def __init__(self, causal_lm: PreTrainedModel, layout: ImageTokenLayout):
        super().__init__()
        self.causal_lm = causal_lm
        self.layout = layout

    # -- the two calls ----------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        codes: torch.Tensor | None = None,
        score: ScoreFn | None = None,
        return_hidden: bool = False,
        chunk_size: int = 128,
        cache: Any = None,
        position_ids: torch.Tensor | None = None,
    ) -> ScoredCodes | StepOutput:
        """Score ``codes [B, N]`` after the prompts ``input_ids [B, P]`` (with ``score``; without it, only the
        hidden states are returned), or run a step into ``cache`` (``position_ids`` default to the mask's:
        right for a prefill of left-padded rows)."""
        if codes is not None:
            if cache is not None or (score is None and not return_hidden):
                raise ValueError("a score call takes codes, and score or return_hidden, and no cache")
            return self._score(input_ids, attention_mask, codes, score, return_hidden, chunk_size)
        if cache is None:
            raise ValueError("give codes (score call) or a cache (step call; new_cache() for a prefill)")
        return self._step(input_ids, attention_mask, cache, position_ids)

    def new_cache(self) -> Any:
        """An empty KV cache for a step call (holds no parameters)."""
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.causal_lm.config)
        except TypeError:  # older transformers: no config argument
            return DynamicCache()

    # -- internals --------------------------------------------------------------------------------------

    def _body(self, input_ids, attention_mask, position_ids, cache=None):
        body: nn.Module = self.causal_lm.get_decoder()
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask)
        kwargs: dict[str, Any] = {"use_cache": cache is not None}
        if cache is not None:
            kwargs[_cache_argument(type(body))] = cache
        out = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        return out.last_hidden_state  # [B, L, H], after the final norm

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden [..., H] → [..., num_codes]`` from the image rows of ``lm_head``. Call it only from
        inside `forward` (under a sharding wrapper the weight exists only there)."""
        head = self.causal_lm.get_output_embeddings()
        start, k = self.layout.image_token_start, self.layout.num_codes
        weight = head.weight[start : start + k]
        bias = head.bias[start : start + k] if getattr(head, "bias", None) is not None else None
        return nn.functional.linear(hidden.to(weight.dtype), weight, bias)

    def _step(self, input_ids, attention_mask, cache, position_ids) -> StepOutput:
        h = self._body(input_ids, attention_mask, position_ids, cache)[:, -1]  # [B, H]
        return StepOutput(logits=self.image_logits(h), hidden=h, cache=cache)

    def _score(self, prompt_ids, prompt_mask, codes, score, return_hidden, chunk_size) -> ScoredCodes:
        p, n = prompt_ids.shape[1], codes.shape[1]
        input_ids = torch.cat([prompt_ids, self.layout.to_token_ids(codes)], 1)  # [B, P + N]
        attention_mask = torch.cat([prompt_mask, torch.ones_like(codes)], 1)  # [B, P + N]
        hidden = self._body(input_ids, attention_mask, None)  # [B, P + N, H]
        # hidden at P-1 … P+N-1 are the N + 1 conditioning states; P-1 … P+N-2 predict codes 0 … N-1.
        cond = hidden[:, p - 1 : p + n]  # [B, N + 1, H]
        if score is None:
            return ScoredCodes(None, None, cond)  # grad flows when enabled (for tests of the conditioning)
        scoring = cond[:, :n]  # [B, N, H]
        logprobs, entropy = [], []
        for s in range(0, n, chunk_size):
            sl = slice(s, min(s + chunk_size, n))

            def chunk(h, c, sl=sl):
                return score(self.image_logits(h), c, sl)

            if torch.is_grad_enabled():
                lp, ent = checkpoint(chunk, scoring[:, sl], codes[:, sl], use_reentrant=False)
            else:
                lp, ent = chunk(scoring[:, sl], codes[:, sl])
            logprobs.append(lp)
            entropy.append(ent.detach())
        return ScoredCodes(torch.cat(logprobs, 1), torch.cat(entropy, 1), cond.detach() if return_hidden else None)
