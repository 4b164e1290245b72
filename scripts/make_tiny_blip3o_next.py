"""``python -m blip3o_rl.scripts.make_tiny_blip3o_next OUT_DIR``: write a tiny random BLIP3o-NEXT checkpoint
in the official on-disk format (`blip3o_rl.policies.blip3o_next.testing.write_tiny_checkpoint`)."""

from __future__ import annotations

if not __package__:  # run as a file (python scripts/NAME.py): run it as the module it is
    from blip3o_rl.scripts import run_as_module

    run_as_module(__file__)

import argparse
from pathlib import Path

from ..policies.blip3o_next.testing import VLLM_CPU_HEAD_DIM, TinySpec, write_tiny_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument(
        "--untied", action="store_true", help="store a separate lm_head.weight (default: tied)"
    )
    parser.add_argument("--shards", type=int, default=1, help="split the weights over N files with an index")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--head-dim", type=int, default=TinySpec.head_dim,
        help=f"attention head width (default {TinySpec.head_dim}; {VLLM_CPU_HEAD_DIM} or more for rollout.engine=vllm "
             "on the CPU, whose attention refuses narrower heads)",
    )
    args = parser.parse_args(argv)
    if args.shards < 1:
        parser.error("--shards must be >= 1")
    if args.head_dim < 2 or args.head_dim % 2:
        parser.error("--head-dim must be an even number >= 2 (rotary embeddings rotate pairs)")
    path = write_tiny_checkpoint(args.out_dir, tied=not args.untied, shards=args.shards, seed=args.seed,
                                 spec=TinySpec(head_dim=args.head_dim))
    print(f"wrote tiny BLIP3o-NEXT checkpoint to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
