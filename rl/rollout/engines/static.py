"""`StaticCacheEngine` (``rollout.engine: static``): a fixed-shape, compilable sampler (gpt-fast style).

Image-token sampling is unusually regular (exactly N tokens, G samples per prompt, a fixed set of
allowed ids), so everything can have its final shape from the start:

- `prefill` runs each prompt **once** into a `StaticKVCache` of P rows; its columns are then copied to
  the G rows of the prompt's group (or the rows of the part of it asked for) in the decode cache, which is allocated once per batch shape at
  ``[B, H_kv, S_max, D]`` per layer and reused across calls (``S_max`` = prompt + N + 1 rounded up to
  ``length_bucket``, so prompts of different lengths share one compiled step);
- `decode_one_token` feeds one code per row at its cache column and samples the next one from
  `rl/grpo/sampling.py`'s distribution (`sample_with_noise`: temperature → top-k → top-p, the exponential
  race, no host sync); it is the only function compiled (``torch.compile``, ``mode="reduce-overhead"``,
  i.e. CUDA graphs, on a GPU; optional on the CPU, ``compile: true`` in ``rollout.engine_kwargs``);
- `decode_n_tokens` is the fixed-length loop: no ``.item()``, no data-dependent stopping.

All compute goes through the policy's `ImageTokenLM` (its static-cache step call), so LoRA adapters and
the live training weights are used as they are. Sampling semantics are those of `KVCacheEngine`: each
prompt's Exp(1) noise is drawn from its own generator seeded with its seed, in the same order, so a
group's samples depend only on its seed (and, for the same seeds, equal the KV-cache engine's up to
float rounding of the logits); truncated sampling reports the kept-set sizes; the N + 1 conditioning
hidden states are collected when asked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ....policies.base import PromptBatch
from ....policies.model import ImageTokenLM, StaticKVCache, positions_from_mask
from ...grpo.sampling import SampledCodes, draw_noise, is_truncated, sample_with_noise
from .base import Rollout, RolloutEngine, SamplingParams

StepResult = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]  # codes, logprobs, kept, hidden


def prefill(lm: ImageTokenLM, prompts: PromptBatch) -> tuple[StaticKVCache, torch.Tensor, torch.Tensor]:
    """Run the ``prompts [P, L]`` once into a new static cache of exactly L columns; returns the cache and
    the image-code ``logits [P, K]`` and ``hidden [P, H]`` at the last prompt token."""
    p, length = prompts.input_ids.shape
    cache = lm.new_static_cache(p, length)
    columns = torch.arange(length, device=prompts.input_ids.device)  # [L]
    out = lm(prompts.input_ids, prompts.attention_mask, cache=cache,
             position_ids=positions_from_mask(prompts.attention_mask), cache_position=columns)
    return cache, out.logits, out.hidden


def decode_one_token(lm: ImageTokenLM, codes: torch.Tensor, cache: StaticKVCache, columns: torch.Tensor,
                     positions: torch.Tensor, cache_position: torch.Tensor, noise: torch.Tensor | None,
                     temperature: float, top_k: int, top_p: float) -> StepResult:
    """Feed ``codes [B]`` (RoPE ``positions [B]``, cache column ``cache_position [1]``, valid cache
    ``columns [B, S_max]``) and sample the next codes from ``noise [B, K]``. The compiled unit."""
    ids = lm.layout.to_token_ids(codes)[:, None]  # [B, 1]
    out = lm(ids, columns, cache=cache, position_ids=positions[:, None], cache_position=cache_position)
    s = sample_with_noise(out.logits, noise, temperature, top_k, top_p)
    return s.codes, s.logprobs, s.kept, out.hidden


class StaticCacheEngine(RolloutEngine):
    """Static KV cache, one prefill per prompt, fixed-length loop, optionally compiled per-token step.

    Engine kwargs (``rollout.engine_kwargs``):
        compile: compile `decode_one_token` with ``torch.compile`` (default: on CUDA yes, on the CPU no).
        compile_mode: ``torch.compile`` mode (default: "reduce-overhead" (CUDA graphs) on CUDA, "default"
            on the CPU).
        fullgraph: require one graph for the step (default True: a graph break is an error, not a slowdown).
        compile_backend: ``torch.compile`` backend ("inductor"; "eager"/"aot_eager" only trace, for tests).
        length_bucket: ``S_max`` is rounded up to a multiple of this (fewer distinct shapes to compile).
        attention_window: attend over the written columns rounded up to a multiple of this (about half the
            attention work over a fixed-length loop, a few distinct shapes); None: every step attends over
            all ``S_max`` columns (one shape). Default: 64 in eager mode, None when compiled (each window
            width would be a separate graph).
    """

    provides_hidden_states = True

    def __init__(self, compile: bool | None = None, compile_mode: str | None = None, fullgraph: bool = True,
                 compile_backend: str = "inductor",
                 length_bucket: int = 64, attention_window: int | str | None = "auto"):
        if length_bucket < 1:
            raise ValueError(f"length_bucket must be >= 1, got {length_bucket}")
        if attention_window != "auto" and attention_window is not None and (
                not isinstance(attention_window, int) or attention_window < 1):
            raise ValueError(f"attention_window must be a positive int, null or 'auto', got {attention_window!r}")
        self.attention_window = attention_window
        self._window: int | None = None
        self.compile, self.compile_mode, self.fullgraph = compile, compile_mode, fullgraph
        self.compile_backend = compile_backend
        self.length_bucket = length_bucket
        self._cache: StaticKVCache | None = None
        self._step: Callable[..., StepResult] | None = None
        self._on_cuda = False

    def setup(self, policy) -> None:
        super().setup(policy)
        device = policy.device
        self._on_cuda = device.type == "cuda"
        use_compile = self._on_cuda if self.compile is None else self.compile
        if use_compile:
            mode = self.compile_mode or ("reduce-overhead" if self._on_cuda else "default")
            if self.compile_backend != "inductor":
                self._step = torch.compile(decode_one_token, backend=self.compile_backend, fullgraph=self.fullgraph)
            else:
                self._step = torch.compile(decode_one_token, mode=mode, fullgraph=self.fullgraph)
        else:
            self._step = decode_one_token
        auto = None if use_compile else 64
        self._window = auto if self.attention_window == "auto" else self.attention_window  # type: ignore[assignment]

    def _decode_cache(self, lm: ImageTokenLM, batch: int, max_len: int) -> StaticKVCache:
        """The decode cache, allocated once per shape (reused across calls: stable addresses for CUDA graphs)."""
        cache = self._cache
        if cache is None or cache.shape[0] != batch or cache.shape[2] != max_len or cache.keys[0].device != self.policy.device:
            self._cache = cache = None  # free the old one first
            self._cache = cache = lm.new_static_cache(batch, max_len)
        return cache

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
        if self._step is None:
            raise RuntimeError("StaticCacheEngine.setup(policy) must be called before generate")
        n = lm.layout.tokens_per_image
        # 1. One prefill per prompt, copied to its k rows of the decode cache (k = G, or the slice held here).
        pre, logits, h = prefill(lm, prompts)
        group = prompts.repeat_interleave(k)  # [B, P]
        b, p = group.input_ids.shape
        device = group.input_ids.device
        s_max = -(-(p + n + 1) // self.length_bucket) * self.length_bucket
        cache = self._decode_cache(lm, b, s_max)
        cache.copy_prefix_from(pre, k)
        del pre
        columns = torch.zeros(b, s_max, dtype=torch.long, device=device)  # [B, S_max] valid cache columns
        columns[:, :p] = group.attention_mask
        columns[:, p:] = 1  # image columns: masked causally by the step until written
        first_pos = group.attention_mask.sum(1)  # [B] RoPE position of the first image code
        slots = torch.arange(p, p + n, device=device)  # [N] cache column of code j
        generators = [torch.Generator(device).manual_seed(s) for s in seeds]

        # 2. The fixed-length loop.
        out = decode_n_tokens(
            self._step, lm, logits.repeat_interleave(k, 0), h.repeat_interleave(k, 0), cache, columns, first_pos,
            slots, p, generators, g, params, return_hidden, clone_outputs=self._on_cuda, window=self._window,
            samples=samples,
        )
        return Rollout(prompts=group, codes=out["codes"], sampler_logprobs=out["logprobs"], seeds=seeds,
                       hidden_states=out["hidden"], kept_sizes=out["kept"], first_sample=samples.start)


def decode_n_tokens(step: Callable[..., StepResult], lm: ImageTokenLM, logits: torch.Tensor, hidden0: torch.Tensor,
                    cache: StaticKVCache, columns: torch.Tensor, first_pos: torch.Tensor, slots: torch.Tensor, start: int,
                    generators: Sequence[torch.Generator], group_size: int, params: SamplingParams,
                    return_hidden: bool, clone_outputs: bool = False, window: int | None = None,
                    samples: range | None = None) -> dict[str, Any]:
    """Sample exactly ``len(slots)`` codes per row, starting from the prefill's ``logits [B, K]``.

    ``slots [N]``: the cache column of each code (``start`` = ``slots[0]``, known to the caller without a
    host sync). Code j is drawn from the logits after code j - 1 (the prefill's for j = 0) with noise from each
    prompt's generator, in `KVCacheEngine`'s order; the last code is fed once more only when its hidden
    state is asked for (``return_hidden``: the N + 1 conditioning states). ``window``: attend over the
    written columns rounded up to a multiple of it (None: all columns). ``samples``: the rows are those
    samples of each group of ``group_size`` (each generator still draws the whole group's noise; None: all
    of it). No host syncs.
    """
    b, n = logits.shape[0], slots.shape[0]
    device = logits.device
    t, k, p = params.temperature, params.top_k, params.top_p
    truncated = t > 0 and is_truncated(k, p)
    codes = torch.empty(b, n, dtype=torch.long, device=device)
    logprobs = torch.empty(b, n, dtype=torch.float32, device=device)
    kept = torch.empty(b, n, dtype=torch.long, device=device) if truncated else None
    hidden = torch.empty(b, n + 1, hidden0.shape[-1], dtype=hidden0.dtype, device=device) if return_hidden else None
    if hidden is not None:
        hidden[:, 0] = hidden0
    noise = torch.empty(logits.shape, dtype=torch.float32, device=device) if t > 0 else None

    def draw() -> torch.Tensor | None:
        # the caller's noise buffer is refilled; a compiled (CUDA-graph) step copies its inputs anyway
        return None if noise is None else draw_noise(noise, generators, group_size, samples)

    first: SampledCodes = sample_with_noise(logits, draw(), t, k, p)  # code 0, from the prefill's logits
    c, lp, kp = first.codes, first.logprobs, first.kept
    for j in range(n):
        codes[:, j], logprobs[:, j] = c, lp
        if kept is not None and kp is not None:
            kept[:, j] = kp
        if j == n - 1 and not return_hidden:
            break
        last = j == n - 1  # the extra step for the last code's hidden state: its sample is discarded
        step_noise = (torch.ones_like(noise) if last else draw()) if noise is not None else None
        if clone_outputs:
            torch.compiler.cudagraph_mark_step_begin()
        width = columns.shape[1] if window is None else min(columns.shape[1], -(-(start + j + 1) // window) * window)
        c, lp, kp, h = step(lm, c, cache, columns[:, :width], first_pos + j, slots[j : j + 1], step_noise, t, k, p)
        if clone_outputs:  # CUDA-graph outputs are overwritten by the next replay
            c, lp, kp, h = c.clone(), lp.clone(), None if kp is None else kp.clone(), h.clone()
        if hidden is not None:
            hidden[:, j + 1] = h
    return {"codes": codes, "logprobs": logprobs, "kept": kept, "hidden": hidden}
