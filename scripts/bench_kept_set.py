"""The kept set under ties, measured: the sorted-order top-k/top-p cut (transformers' and vLLM's, and this
library's sampler before the tie rule) against the rule of `rl/grpo/sampling.py` (every code tied with the
cut value kept), on random bf16-valued logits over BLIP3o-NEXT's 65,536 codes.

For each row a code is sampled; the trainer rebuilds the set from the sampler's size as ``x >= the size-th
largest logit`` (the only set a size names, `scored_logits`). With the sorted-order cut that set can hold
more codes than the sampler kept (ties at the cut), so the trainer's log-prob of the sampled code differs
from the sampler's; with the rule the two sets are the same. Printed: the fraction of rows whose cut falls
inside a run of tied logits, and the log-prob error of the rebuild (mean, max) for both.

    python -m blip3o_rl.scripts.bench_kept_set --rows 2000 --top-k 20 --top-p 0.95
"""

from __future__ import annotations

if not __package__:  # run as a file (python scripts/NAME.py): run it as the module it is
    from blip3o_rl.scripts import run_as_module

    run_as_module(__file__)

import argparse

import torch

from ..rl.grpo.sampling import sample_codes, scored_logits


def sorted_order_kept(x: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """``[B]`` sizes of the sorted-order cut (top-k by position, then top-p by position, ties split)."""
    sorted_x = torch.sort(x, -1, descending=True).values
    if top_k:
        sorted_x[:, top_k:] = float("-inf")
    probs = sorted_x.softmax(-1)
    return ((probs.cumsum(-1) - probs) < top_p).sum(-1).clamp(max=top_k or x.shape[-1])


def rebuild_error(logits: torch.Tensor, codes: torch.Tensor, kept: torch.Tensor, sampler_logp: torch.Tensor):
    x = scored_logits(logits, codes, 1.0, kept=kept)
    trainer = torch.log_softmax(x, -1).gather(-1, codes[:, None]).squeeze(-1)
    return (trainer - sampler_logp).abs()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--codes", type=int, default=65536)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    errors: dict[str, list[torch.Tensor]] = {"sorted-order cut": [], "tie rule": []}
    split = 0
    for start in range(0, args.rows, 250):
        n = min(250, args.rows - start)
        logits = (10 + 2 * torch.randn(n, args.codes)).to(torch.bfloat16)  # bf16 spacing 0.0625-0.125 here
        x = logits.float()
        # the sorted-order cut: the sampler keeps `size` codes by position, the sampled one among them
        size = sorted_order_kept(x, args.top_k, args.top_p)
        order = torch.sort(x, dim=-1, descending=True, stable=True).indices
        pos = torch.arange(args.codes).expand(n, -1)
        keep_sorted = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, order, pos < size[:, None])
        z = x.masked_fill(~keep_sorted, float("-inf"))
        logp = torch.log_softmax(z, -1)
        codes = (logp.exp() / torch.empty_like(z).exponential_(1)).argmax(-1)
        picked = logp.gather(-1, codes[:, None]).squeeze(-1)
        errors["sorted-order cut"].append(rebuild_error(logits, codes, size, picked))
        split += int((torch.isfinite(scored_logits(logits, codes, 1.0, kept=size)).sum(-1) > size).sum())
        out = sample_codes(logits, 1.0, args.top_k, args.top_p)
        assert out.kept is not None  # truncated sampling reports its sizes
        errors["tie rule"].append(rebuild_error(logits, out.codes, out.kept, out.logprobs))
    print(f"{args.rows} rows x {args.codes} codes, bf16 logits ~ N(10, 2), top-k {args.top_k}, top-p {args.top_p}")
    print(f"rows whose sorted-order cut splits a run of ties: {split / args.rows:.1%}")
    for name, errs in errors.items():
        e = torch.cat(errs)
        print(f"{name:>18}: rebuild |log-prob error| mean {float(e.mean()):.3g}, max {float(e.max()):.3g}")


if __name__ == "__main__":
    main()
