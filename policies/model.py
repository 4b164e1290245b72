"""`ImageTokenLM`: the trainable autoregressive model as one ``nn.Module``.

Every computation on the trainable weights runs inside `ImageTokenLM.forward`, so the wrapper that
distributed training puts around this one module (DDP's gradient hooks, FSDP's unsharding, ZeRO-3's
gathering) sees all of it. Two calls, chosen by the arguments:

- **score** (``codes`` given): one pass over ``prompt + codes`` returning the log-prob and entropy of
  every code under a caller-supplied distribution (chunked over positions, each chunk under activation
  checkpointing when grad is on) and, optionally, the N + 1 conditioning hidden states;
- **step** (``cache`` given): run ``input_ids`` into the KV cache (a prefill into an empty cache, or one
  decode token) and return the image-code logits and hidden state at the last position. The cache is
  Hugging Face's growing `DynamicCache` (`ImageTokenLM.new_cache`), or a `StaticKVCache` allocated once at
  its final shape (`ImageTokenLM.new_static_cache`): then ``cache_position`` names the cache columns the
  inputs are written to and ``attention_mask`` covers all the cache's columns, so every decode step has
  the same shapes (what ``torch.compile`` and CUDA graphs need).

Logits are only ever built from the image rows of ``lm_head``: that is the masked softmax over the
image tokens, and it keeps a ``[*, vocab]`` tensor (217k columns for BLIP3o-NEXT) out of memory. A score
call with ``full_vocabulary`` (the official trainer's scoring, `rl/grpo/score_space.py`) adds one column,
the log-sum-exp of every other row, computed chunk by chunk.
"""

from __future__ import annotations

import functools
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
#: distribution, supplied by the caller (the trainer's `rl/grpo/sampling.py`); ``positions`` is the slice of
#: the N code positions this chunk covers, for callers that carry per-position state.
ScoreFn = Callable[[torch.Tensor, torch.Tensor, slice], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class SamplingParams:
    """The sampling distribution over image codes (applied by `rl/grpo/sampling.py`)."""

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


class StaticKVCache:
    """A KV cache allocated once at its final shape: per layer, keys and values ``[B, H_kv, S_max, D]``.

    A step call writes its inputs' keys and values at the columns ``cache_position [L]`` (the same for
    every row; left-padded prompts keep all rows aligned) in place, and attends over the first ``S``
    columns, where ``S`` is the width of the caller's column mask ``[B, S]`` (``S_max`` for one fixed
    shape, or a bucketed prefix that saves attention work in eager mode) under a mask built from it:
    nothing is allocated per token and the buffers never change shape. It implements the one method Hugging Face attention layers call on a cache, ``update``
    (transformers 5.x: ``update(k, v, layer_idx, ...)``, extra arguments ignored); the mask is handed to
    the model ready-made, so the cache is never asked for lengths or mask sizes.
    """

    is_compileable = True

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.cache_position = torch.zeros(1, dtype=torch.long, device=device)  # [L] columns being written
        self.visible = max_len  # columns attended by the current step (the width of its column mask)
        if torch.device(device).type == "cuda":  # CUDA graphs: buffers mutated in place keep their address
            for t in (*self.keys, *self.values):
                torch._dynamo.mark_static_address(t)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(B, H_kv, S_max, D)``."""
        return tuple(self.keys[0].shape)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``[B, H_kv, L, D]`` at ``cache_position``; return the whole layer ``[B, H_kv, S_max, D]``."""
        k, v = self.keys[layer_idx], self.values[layer_idx]
        k.index_copy_(2, self.cache_position, key_states.to(k.dtype))
        v.index_copy_(2, self.cache_position, value_states.to(v.dtype))
        return k[:, :, : self.visible], v[:, :, : self.visible]

    def copy_prefix_from(self, other: StaticKVCache, repeats: int) -> None:
        """Fill the first columns of every row from ``other`` (``[P, H, L, D]``, L <= S_max), each of its rows
        repeated ``repeats`` times (a prompt's prefill shared by its group of G rows)."""
        length = other.keys[0].shape[2]
        for dst, src in zip((*self.keys, *self.values), (*other.keys, *other.values), strict=True):
            dst[:, :, :length].copy_(src.repeat_interleave(repeats, 0))


def static_attention_mask(columns: torch.Tensor, cache_position: torch.Tensor, implementation: str,
                          dtype: torch.dtype) -> torch.Tensor:
    """The 4D mask ``[B, 1, L, S_max]`` of a static-cache step: query i (written at column
    ``cache_position[i]``) sees the valid ``columns [B, S_max]`` up to its own, and always its own column
    (so a padding query never has an empty row, which would give NaN states in the cache). Boolean for
    SDPA, additive for eager attention."""
    cols = torch.arange(columns.shape[1], device=columns.device)  # [S]
    causal = cols[None, :] <= cache_position[:, None]  # [L, S]
    own = cols[None, :] == cache_position[:, None]  # [L, S]
    allowed = (causal[None] & columns.bool()[:, None, :]) | own[None]  # [B, L, S]
    if implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=columns.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)[:, None]
    return allowed[:, None]  # [B, 1, L, S]


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
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor,
        *,
        codes: torch.Tensor | None = None,
        score: ScoreFn | None = None,
        return_hidden: bool = False,
        chunk_size: int = 128,
        cache: Any = None,
        position_ids: torch.Tensor | None = None,
        cache_position: torch.Tensor | None = None,
        full_vocabulary: bool = False,
    ) -> ScoredCodes | StepOutput:
        """Score ``codes [B, N]`` after the prompts ``input_ids [B, P]`` (with ``score``; without it, only the
        hidden states are returned), or run a step into ``cache``: a prefill of ``input_ids`` (prompt
        tokens), or a decode step of image ``codes [B, L]`` (``input_ids`` None). ``position_ids`` default
        to the mask's: right for a prefill of left-padded rows. With a `StaticKVCache`, ``cache_position
        [L]`` gives the columns the L inputs are written to and ``attention_mask [B, S]`` marks which of the
        cache's first S columns are valid (the prompt's padding 0; S <= S_max, the columns attended);
        ``position_ids [B, L]`` are then required. ``full_vocabulary`` (score call): ``score`` gets
        `scoring_logits` with the extra column (only where `scores_full_vocabulary`)."""
        if cache is None:
            if codes is None or input_ids is None or (score is None and not return_hidden):
                raise ValueError("a score call takes input_ids, codes, and score or return_hidden (no cache); "
                                 "a step call takes a cache (new_cache() for a prefill)")
            return self._score(input_ids, attention_mask, codes, score, return_hidden, chunk_size, full_vocabulary)
        if (input_ids is None) == (codes is None):
            raise ValueError("a step call takes prompt input_ids (a prefill) or image codes (a decode step)")
        if isinstance(cache, StaticKVCache):
            if cache_position is None or position_ids is None:
                raise ValueError("a static-cache step needs cache_position and position_ids")
            return self._static_step(input_ids, codes, attention_mask, cache, position_ids, cache_position)
        return self._step(input_ids, codes, attention_mask, cache, position_ids)

    #: KV-cache rows per sampled row: 1, or 2 under classifier-free guidance (a conditional and an
    #: unconditional row each; `policies/guidance.py`).
    rows_per_sample: int = 1

    def new_static_cache(self, batch_size: int, max_len: int) -> StaticKVCache:
        """A `StaticKVCache` for ``batch_size`` sampled rows (times `rows_per_sample` cache rows) of up to
        ``max_len`` tokens, in the weights' dtype and device. Holds no parameters. Only for models whose attention layers all see the full sequence."""
        cfg = self.causal_lm.config
        cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        types = set(getattr(cfg, "layer_types", None) or ["full_attention"])
        if types != {"full_attention"}:
            raise NotImplementedError(f"static KV cache: only full-attention layers are supported, got {types}")
        impl = getattr(cfg, "_attn_implementation", None) or "sdpa"
        if impl not in ("sdpa", "eager"):
            raise NotImplementedError(f"static KV cache: attention {impl!r} unsupported (sdpa or eager)")
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        weight = self.causal_lm.get_input_embeddings().weight
        return StaticKVCache(cfg.num_hidden_layers, batch_size * self.rows_per_sample, getattr(cfg, "num_key_value_heads", None) or heads,
                             max_len, head_dim, weight.dtype, weight.device)

    def new_cache(self) -> Any:
        """An empty KV cache for a step call (holds no parameters)."""
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.causal_lm.config)
        except TypeError:  # older transformers: no config argument
            return DynamicCache()

    # -- internals --------------------------------------------------------------------------------------

    def body_inputs(self, input_ids: torch.Tensor | None, codes: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """What the decoder body reads for prompt tokens followed by image codes (either may be None): here
        their token ids (code k is id ``image_token_start + k``). A model that embeds image codes through
        its own table (Janus) returns ``inputs_embeds`` instead."""
        parts = [t for t in (input_ids, None if codes is None else self.layout.to_token_ids(codes)) if t is not None]
        return {"input_ids": parts[0] if len(parts) == 1 else torch.cat(parts, 1)}

    def decoder_body(self) -> nn.Module:
        """The transformer body whose ``last_hidden_state`` (after the final norm) the image head reads."""
        return self.causal_lm.get_decoder()

    def _body(self, inputs: dict[str, torch.Tensor], attention_mask, position_ids, cache=None):
        body = self.decoder_body()
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask)
        kwargs: dict[str, Any] = {"use_cache": cache is not None}
        if cache is not None:
            kwargs[_cache_argument(type(body))] = cache
        out = body(**inputs, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        return out.last_hidden_state  # [B, L, H], after the final norm

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden [..., H] → [..., num_codes]`` from the image rows of ``lm_head``. Call it only from
        inside `forward` (under a sharding wrapper the weight exists only there)."""
        head = self.causal_lm.get_output_embeddings()
        start, k = self.layout.image_token_start, self.layout.num_codes
        weight = head.weight[start : start + k]
        bias = head.bias[start : start + k] if getattr(head, "bias", None) is not None else None
        return nn.functional.linear(hidden.to(weight.dtype), weight, bias)

    #: whether `scoring_logits` can add the full-vocabulary column: the image codes are rows of the text
    #: ``lm_head`` (False for a model with its own image head, or a guided mixture of two distributions)
    scores_full_vocabulary: bool = True

    def scoring_logits(self, hidden: torch.Tensor, full_vocabulary: bool = False) -> torch.Tensor:
        """`image_logits`, or with ``full_vocabulary`` ``[..., num_codes + 1]``: the image logits and, last,
        the log-sum-exp (float32) of every other row of ``lm_head``, so that a log-softmax over the columns
        is the full-vocabulary log-softmax of the codes. Call it only from inside `forward`."""
        if not full_vocabulary:
            return self.image_logits(hidden)
        if not self.scores_full_vocabulary:
            raise ValueError(f"{type(self).__name__} has no full-vocabulary scoring: its image codes are not "
                             "rows of a text lm_head (or it samples a guided mixture)")
        head = self.causal_lm.get_output_embeddings()
        start, k = self.layout.image_token_start, self.layout.num_codes
        logits = head(hidden.to(head.weight.dtype)).float()  # [..., V]: one chunk of positions at a time
        rest = torch.cat([logits[..., :start], logits[..., start + k :]], -1).logsumexp(-1, keepdim=True)
        return torch.cat([logits[..., start : start + k], rest], -1)

    def _step(self, input_ids, codes, attention_mask, cache, position_ids) -> StepOutput:
        h = self._body(self.body_inputs(input_ids, codes), attention_mask, position_ids, cache)[:, -1]  # [B, H]
        return StepOutput(logits=self.image_logits(h), hidden=h, cache=cache)

    def _static_hidden(self, inputs, columns, cache: StaticKVCache, position_ids, cache_position) -> torch.Tensor:
        """The body's last-position hidden state ``[B, H]`` of a static-cache step."""
        body = self.decoder_body()
        cfg = self.causal_lm.config
        cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg  # a composite config's LM part
        impl = getattr(cfg, "_attn_implementation", None) or "sdpa"
        mask = static_attention_mask(columns, cache_position, impl, cache.keys[0].dtype)
        cache.cache_position, cache.visible = cache_position, columns.shape[1]
        # A ready-made 4D mask is used as is (every layer is full attention): no mask construction, no
        # length queries on the cache.
        out = body(**inputs, attention_mask=mask, position_ids=position_ids,
                   use_cache=True, **{_cache_argument(type(body)): cache})
        return out.last_hidden_state[:, -1]  # [B, H]

    def _static_step(self, input_ids, codes, columns, cache: StaticKVCache, position_ids, cache_position) -> StepOutput:
        h = self._static_hidden(self.body_inputs(input_ids, codes), columns, cache, position_ids, cache_position)
        return StepOutput(logits=self.image_logits(h), hidden=h, cache=cache)

    def _score(self, prompt_ids, prompt_mask, codes, score, return_hidden, chunk_size,
               full_vocabulary=False) -> ScoredCodes:
        p, n = prompt_ids.shape[1], codes.shape[1]
        attention_mask = torch.cat([prompt_mask, torch.ones_like(codes)], 1)  # [B, P + N]
        hidden = self._body(self.body_inputs(prompt_ids, codes), attention_mask, None)  # [B, P + N, H]
        # hidden at P-1 … P+N-1 are the N + 1 conditioning states; P-1 … P+N-2 predict codes 0 … N-1.
        cond = hidden[:, p - 1 : p + n]  # [B, N + 1, H]
        if score is None:
            return ScoredCodes(None, None, cond)  # grad flows when enabled (for tests of the conditioning)
        head = functools.partial(self.scoring_logits, full_vocabulary=full_vocabulary)
        logprobs, entropy = score_chunks(head, (cond[:, :n],), codes, score, chunk_size)
        return ScoredCodes(logprobs, entropy, cond.detach() if return_hidden else None)


def score_chunks(head: Callable[..., torch.Tensor], states: tuple[torch.Tensor, ...], codes: torch.Tensor,
                 score: ScoreFn, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropy ``[B, N]`` of ``codes [B, N]`` under ``score(head(*states[:, chunk]), ...)``,
    chunk by chunk over positions (each chunk under activation checkpointing when grad is on): the image
    logits of only ``chunk_size`` positions exist at a time. ``states``: the ``[B, N, H]`` hidden states the
    head reads (one tensor; two for a guided head: conditional and unconditional)."""
    n = codes.shape[1]
    logprobs, entropy = [], []
    for s in range(0, n, chunk_size):
        sl = slice(s, min(s + chunk_size, n))

        def chunk(c, *hs, sl=sl):
            return score(head(*hs), c, sl)

        parts = tuple(h[:, sl] for h in states)
        if torch.is_grad_enabled():
            lp, ent = checkpoint(chunk, codes[:, sl], *parts, use_reentrant=False)
        else:
            lp, ent = chunk(codes[:, sl], *parts)
        logprobs.append(lp)
        entropy.append(ent.detach())
    return torch.cat(logprobs, 1), torch.cat(entropy, 1)
