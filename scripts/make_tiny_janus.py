"""``python -m blip3o_rl.scripts.make_tiny_janus OUT_DIR``: write a tiny random Janus-Pro folder in the official
transformers on-disk format (`blip3o_rl.policies.janus.testing.write_tiny_janus`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..policies.janus.testing import write_tiny_janus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_tiny_janus(args.out_dir, seed=args.seed)
    print(f"wrote tiny Janus-Pro folder to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
