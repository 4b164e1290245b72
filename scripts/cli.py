"""The ``blip3o-rl`` command line.

    blip3o-rl train demo                                   # the built-in CPU demo
    blip3o-rl train configs/my_run.yaml grpo.beta=0.01     # any recipe, with dotted overrides
    blip3o-rl train configs/my_run.yaml --resume           # continue from the latest checkpoint
    blip3o-rl config demo max_steps=10                     # print the resolved configuration
    blip3o-rl make-tiny-world OUT_DIR                      # write a random tiny-world model folder
    blip3o-rl eval geneval --model PATH --metadata FILE    # generate and score GenEval (or --images DIR)
    blip3o-rl data geneval --out FILE --n 100              # write GenEval-format training prompts
"""

from __future__ import annotations

import argparse
import logging
import sys

import yaml


def _cmd_train(args: argparse.Namespace) -> int:
    from blip3o_rl.rl.config import load_config
    from blip3o_rl.rl.trainer import train

    cfg = load_config(args.recipe, args.overrides)
    summary = train(cfg, resume=args.resume)
    if summary:
        print(f"\nrun: {cfg.output_dir}")
        print(f"mean reward, first fifth of steps: {summary['reward_first_fifth']:.3f}")
        print(f"mean reward, last fifth of steps:  {summary['reward_last_fifth']:.3f}")
        for k in sorted(summary):
            if k.endswith("_before"):
                name = k[: -len("_before")]
                print(f"{name}: {summary[k]:.3f} before -> {summary[name + '_after']:.3f} after")
        print(f"reward curve: {cfg.output_dir}/reward_curve.png; samples: {cfg.output_dir}/samples/")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from blip3o_rl.rl.config import config_to_dict, load_config

    print(yaml.safe_dump(config_to_dict(load_config(args.recipe, args.overrides)), sort_keys=False), end="")
    return 0


def _cmd_make_tiny_world(args: argparse.Namespace) -> int:
    from blip3o_rl.policies.tiny import make_tiny_world

    print(make_tiny_world(args.out_dir, seed=args.seed, grid=args.grid, hidden_size=args.hidden_size,
                          num_layers=args.num_layers))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blip3o-rl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run GRPO from a recipe")
    p.add_argument("recipe", help="a YAML path, or a packaged recipe name (e.g. demo)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. grpo.beta=0.01")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue from CHECKPOINT, or from the latest one in output_dir")
    p.set_defaults(fn=_cmd_train)

    p = sub.add_parser("config", help="print a recipe resolved with its overrides")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=_cmd_config)

    p = sub.add_parser("make-tiny-world", help="write a random-initialised tiny-world model folder")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", type=int, default=4, help="image is grid x grid tokens")
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--num-layers", type=int, default=2)
    p.set_defaults(fn=_cmd_make_tiny_world)

    _add_benchmark_commands(sub)
    return parser


def _add_benchmark_commands(sub) -> None:
    """``eval <benchmark>`` and ``data <benchmark>`` groups; each benchmark module mounts its own parsers."""
    from blip3o_rl.scripts import cmd_geneval

    evals = sub.add_parser("eval", help="generate and score a benchmark").add_subparsers(dest="benchmark", required=True)
    data = sub.add_parser("data", help="write benchmark-format prompt files").add_subparsers(dest="benchmark", required=True)
    p = evals.add_parser("geneval", help="GenEval: generate images with a policy and score them")
    cmd_geneval.configure_eval(p)
    p.set_defaults(fn=cmd_geneval.run_eval)
    p = data.add_parser("geneval", help="GenEval-format training prompts for the six tasks")
    cmd_geneval.configure_data(p)
    p.set_defaults(fn=cmd_geneval.run_data)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from blip3o_rl.rl.config import ConfigError
    from blip3o_rl.rl.data import PromptFileError

    try:
        return args.fn(args)
    except (ConfigError, PromptFileError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
