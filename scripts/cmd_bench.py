"""``blip3o-rl bench rollout``: every available rollout engine on the same model, batch and seeds.

Each engine is set up and run once untimed (warm-up: a compiled step compiles there), then timed
``--repeats`` times, best of N; the in-process PyTorch engines are interleaved (they see the same machine
noise); vLLM, when importable, is built and timed after them (an in-process ``LLM`` changes the process's
threading, so nothing else is timed once it exists). Reports tokens/s, images/s and the ratio to ``hf``
(the KV-cache engine, `KVCacheEngine`). Default model: a fresh tiny world with BLIP3o-NEXT's 729
tokens per image (grid 27) and head_dim 32 (hidden 128, 4 heads: what vLLM's CPU attention accepts).

    blip3o-rl bench rollout [--json] [--prompts 2 --group 8] [--engines hf,static] [--model DIR --policy tiny]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from typing import Any

import torch

TORCH_ENGINES: dict[str, tuple[str, dict[str, Any]]] = {
    "hf": ("kv_cache", {}),
    "static": ("static", {}),
    "static_compiled": ("static", {"compile": True}),
}


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model folder (default: a fresh tiny world, 729 tokens/image)")
    p.add_argument("--policy", default="tiny")
    p.add_argument("--grid", type=int, default=27, help="fresh tiny world: grid x grid tokens per image")
    p.add_argument("--hidden-size", type=int, default=128, help="fresh tiny world: hidden size (head_dim = /4)")
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--group", type=int, default=8, help="samples per prompt (G)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engines", help="comma-separated subset of hf, static, static_compiled, vllm (default: all "
                                     "available; static_compiled only on a GPU unless named)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _available(args: argparse.Namespace) -> list[str]:
    if args.engines:
        names = [n.strip() for n in args.engines.split(",") if n.strip()]
        unknown = [n for n in names if n not in (*TORCH_ENGINES, "vllm")]
        if unknown:
            raise SystemExit(f"error: unknown engines {unknown}: choose from {[*TORCH_ENGINES, 'vllm']}")
        return names if "hf" in names else ["hf", *names]  # the ratio's reference always runs
    names = ["hf", "static"]
    if torch.cuda.is_available():
        names.append("static_compiled")  # on the CPU its compile costs minutes and it is slower (docs/benchmarks.md)
    if importlib.util.find_spec("vllm") is not None:
        names.append("vllm")
    return names


def run(args: argparse.Namespace) -> int:
    from ..policies import load_policy
    from ..rl.rollout.engines import SamplingParams, build_engine, stream_seed

    torch.set_num_threads(args.threads)
    if args.json:  # vLLM logs to stdout once it configures logging: keep stdout one JSON object
        import os

        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    names = _available(args)
    if args.model is None:
        from ..tiny import make_tiny_world

        args.model = str(make_tiny_world(tempfile.mkdtemp(prefix="bench_world_"), grid=args.grid,
                                         hidden_size=args.hidden_size))
    policy = load_policy(args.policy, args.model)
    if torch.cuda.is_available():
        policy.lm.to("cuda")
    policy.lm.eval()
    prompts = policy.prompt_batch([f"a caption number {i} with some words" for i in range(args.prompts)])
    seeds = [stream_seed(args.seed, "bench", j) for j in range(args.prompts)]
    params = SamplingParams()
    n, images = policy.layout.tokens_per_image, args.prompts * args.group

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # host sync: timing only

    engines, warmup = {}, {}
    torch_names = [x for x in names if x in TORCH_ENGINES]
    for name in torch_names:
        kind, kwargs = TORCH_ENGINES[name]
        engine = build_engine(kind, **kwargs)
        engine.setup(policy)
        t = time.perf_counter()
        engine.generate(prompts, args.group, params, seeds)
        sync()
        warmup[name], engines[name] = time.perf_counter() - t, engine
    best = {name: float("inf") for name in names}
    for _ in range(args.repeats):
        for name in torch_names:
            sync()
            t = time.perf_counter()
            engines[name].generate(prompts, args.group, params, seeds)
            sync()
            best[name] = min(best[name], time.perf_counter() - t)
    if "vllm" in names:
        engine = build_engine("vllm")
        t = time.perf_counter()
        engine.setup(policy)
        engine.generate(prompts, args.group, params, seeds)
        warmup["vllm"] = time.perf_counter() - t
        for _ in range(args.repeats):
            t = time.perf_counter()
            engine.generate(prompts, args.group, params, seeds)
            best["vllm"] = min(best["vllm"], time.perf_counter() - t)

    figures = {name: {"seconds": sec, "tokens_per_s": images * n / sec, "images_per_s": images / sec,
                      "ratio_to_hf": best["hf"] / sec, "warmup_s": warmup[name]} for name, sec in best.items()}
    report = {"tokens_per_image": n, "images": images, "prompts": args.prompts, "group": args.group,
              "threads": args.threads, "repeats": args.repeats,
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "engines": figures}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{images} images x {n} tokens ({args.prompts} prompts x G={args.group}), {report['device']}, "
          f"{args.threads} thread(s), best of {args.repeats} after an untimed warm-up")
    print(f"  {'engine':16s} {'tokens/s':>10s} {'images/s':>9s} {'vs hf':>7s} {'warm-up s':>10s}")
    for name, f in figures.items():
        print(f"  {name:16s} {f['tokens_per_s']:10.0f} {f['images_per_s']:9.2f} {f['ratio_to_hf']:6.2f}x "
              f"{f['warmup_s']:10.1f}")
    return 0
