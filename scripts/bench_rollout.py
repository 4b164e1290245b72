"""Rollout throughput: our KV-cache engine vs the official recipe's HF `generate()` + second forward.

The official BLIP3o-NEXT RL code sampled with plain `model.generate()` (full vocabulary, no restriction
to image tokens) and then ran a second full forward to get the hidden states the refiner needs. Our
engine prefills each prompt once, copies the cache to its group, samples among the image tokens only
and collects the hidden states as it goes. Both are timed in the same run on the same model; the
script prints images/s and the ratio.

    python -m blip3o_rl.scripts.bench_rollout [--model DIR --policy tiny | --grid 27] [--prompts 8 --group 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from ..policies import load_policy
from ..rl.rollout.engines import KVCacheEngine, SamplingParams


def _ours(policy, prompts, group):
    engine = KVCacheEngine()
    engine.setup(policy)
    seeds = [j * group for j in range(prompts.input_ids.shape[0])]
    return engine.generate(prompts, group, SamplingParams(), seeds, return_hidden=True)


@torch.no_grad()
def _hf_generate(policy, prompts, group):
    n = policy.layout.tokens_per_image
    out = policy.model.generate(
        input_ids=prompts.input_ids, attention_mask=prompts.attention_mask, do_sample=True, top_k=0, top_p=1.0,
        temperature=1.0, max_new_tokens=n, min_new_tokens=n, num_return_sequences=group,
        pad_token_id=policy.model.config.pad_token_id,
    )
    mask = torch.cat([prompts.attention_mask.repeat_interleave(group, 0), torch.ones_like(out[:, -n:])], 1)
    # The official code's second forward for the refiner's states (plain HF, as it ran it).
    return policy.model.get_decoder()(input_ids=out, attention_mask=mask).last_hidden_state


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: a fresh tiny world)")
    ap.add_argument("--policy", default="tiny")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--grid", type=int, default=4, help="fresh tiny world: grid x grid tokens (27 = BLIP3o-NEXT's 729)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model is None:
        from ..tiny import make_tiny_world

        args.model = str(make_tiny_world(tempfile.mkdtemp(prefix="tiny_world_"), grid=args.grid))
    policy = load_policy(args.policy, args.model)
    policy.model.eval()
    prompts = policy.prompt_batch([f"a caption number {i} with some words" for i in range(args.prompts)])
    images = args.prompts * args.group
    best = {"ours": float("inf"), "hf_generate": float("inf")}
    for _ in range(args.repeats):  # interleaved, best of N: both see the same machine noise
        for name, fn in (("ours", _ours), ("hf_generate", _hf_generate)):
            torch.manual_seed(0)
            t = time.perf_counter()
            fn(policy, prompts, args.group)
            best[name] = min(best[name], time.perf_counter() - t)
    n = policy.layout.tokens_per_image
    print(f"{images} images of {n} tokens, {args.threads} thread(s), best of {args.repeats}")
    for name, sec in best.items():
        print(f"  {name:12s} {images / sec:8.1f} images/s  ({sec:.3f} s)")
    print(f"  speed-up of ours over hf_generate + second forward: {best['hf_generate'] / best['ours']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
