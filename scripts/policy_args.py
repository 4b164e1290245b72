"""Command-line options for "which policy generates, and how", shared by ``generate`` and ``eval``.

`add_generation_arguments(parser)` adds the model (``--model``, or with ``runs=True`` also a training
``--run`` whose checkpoint is applied), ``--policy``, ``--dtype``, ``--seed``, ``--batch-size``,
sampling (``--temperature``/``--top-k``/``--top-p``, default: the policy's inference values) and the
BLIP3o-NEXT decode options; `generation_policy(args, command)` returns ``(policy, SamplingParams)``.
Nothing here imports torch until a policy is loaded, so building a parser stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_POLICY = "blip3o_next"


class GenerationArgsError(ValueError):
    """Unusable generation options or model folder (commands print it as a usage error, status 2)."""


def add_generation_arguments(p: argparse.ArgumentParser, *, runs: bool = False) -> None:
    """Model, sampling and decode options; ``runs`` also offers ``--run``/``--checkpoint`` instead of ``--model``."""
    p.add_argument("--model", required=not runs, type=Path,
                   help="model folder (e.g. BLIP3o-NEXT-SFT-3B or an export)")
    if runs:
        p.add_argument("--run", type=Path, help="instead of --model: a training run's output_dir, generating "
                       "with its base model and a checkpoint applied (as `blip3o-rl export` would save it)")
        p.add_argument("--checkpoint", help="with --run: step_N, N or a checkpoint path (default: the latest)")
    p.add_argument("--policy", default=None if runs else DEFAULT_POLICY,
                   help=f"policy kind: {DEFAULT_POLICY} (default), tiny, or package.module:Class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16, help="images per sampling call")
    p.add_argument("--temperature", type=float, help="AR sampling temperature (BLIP3o-NEXT default 1.0)")
    p.add_argument("--top-k", type=int, help="0 disables (BLIP3o-NEXT default 1200, the official inference value)")
    p.add_argument("--top-p", type=float, help="1 disables (BLIP3o-NEXT default 0.95)")
    p.add_argument("--steps", type=int, help="diffusion decode steps (BLIP3o-NEXT default 30)")
    p.add_argument("--guidance", type=float, help="decode CFG scale (BLIP3o-NEXT default 2.0)")
    p.add_argument("--diffusion-path", help="local SANA diffusers folder (default: the config's)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on GPU, float32 on CPU")


def _policy_kwargs(args: argparse.Namespace) -> dict:
    """The decode shortcuts as policy keyword arguments (a policy that takes none of them refuses them)."""
    decode = {k: v for k, v in (("num_inference_steps", args.steps), ("guidance_scale", args.guidance))
              if v is not None}
    kwargs: dict = {"decode_settings": decode} if decode else {}
    if args.diffusion_path is not None:
        kwargs["diffusion_path"] = args.diffusion_path
    return kwargs


def generation_policy(args: argparse.Namespace, command: str):
    """``(policy, SamplingParams)`` from the options of `add_generation_arguments`; sampling options not given
    take the policy's own inference values. Raises `GenerationArgsError` (message starting with ``command``)."""
    from ..policies import SamplingParams
    from ..registry import ComponentError
    from ..rl.rollout.generate import inference_policy

    if min(args.batch_size, 1 if args.steps is None else args.steps) < 1:
        raise GenerationArgsError(f"{command}: --batch-size and --steps must be >= 1")
    if args.temperature is not None and not args.temperature > 0:
        raise GenerationArgsError(f"{command}: --temperature must be > 0, got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise GenerationArgsError(f"{command}: --top-p must be in (0, 1] (1 disables), got {args.top_p}")
    if args.top_k is not None and args.top_k < 0:
        raise GenerationArgsError(f"{command}: --top-k must be >= 0 (0 disables), got {args.top_k}")
    if getattr(args, "guidance", None) is not None and not args.guidance >= 0:
        raise GenerationArgsError(f"{command}: --guidance must be >= 0, got {args.guidance}")
    run, kwargs = getattr(args, "run", None), _policy_kwargs(args)
    if run is None and args.model is None:
        raise GenerationArgsError(f"{command}: give --model or --run")
    if run is None and getattr(args, "checkpoint", None) is not None:
        raise GenerationArgsError(f"{command}: --checkpoint needs --run")
    if run is not None and (args.model is not None or args.policy is not None):
        raise GenerationArgsError(f"{command}: --run names its model and policy; do not give --model or --policy")
    if run is not None and kwargs:
        raise GenerationArgsError(f"{command}: with --run the decode settings are the run's (model.policy_kwargs)")
    kind = args.policy or DEFAULT_POLICY
    try:
        policy = inference_policy(args.model, policy=kind, run=run, checkpoint=getattr(args, "checkpoint", None),
                                  dtype=args.dtype, policy_kwargs=kwargs)
    except ComponentError as exc:  # e.g. a policy that takes none of the decode options
        hint = "--steps, --guidance and --diffusion-path do not apply to policy " f"{kind!r}: " if kwargs else ""
        raise GenerationArgsError(f"{command}: {hint}{exc}") from None
    except ValueError as exc:  # a folder that is not a usable checkpoint (config, weights) or a bad option
        raise GenerationArgsError(f"{command}: {exc}") from None
    d = policy.inference_sampling
    return policy, SamplingParams(
        d.temperature if args.temperature is None else float(args.temperature),
        d.top_k if args.top_k is None else int(args.top_k),
        d.top_p if args.top_p is None else float(args.top_p),
    )
