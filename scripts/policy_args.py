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


def _kind(args: argparse.Namespace, command: str) -> str:
    run = getattr(args, "run", None)
    if run is None:
        if args.model is None:
            raise GenerationArgsError(f"{command}: give --model or --run")
        if getattr(args, "checkpoint", None) is not None:
            raise GenerationArgsError(f"{command}: --checkpoint needs --run")
        return args.policy or DEFAULT_POLICY
    if args.model is not None or args.policy is not None:
        raise GenerationArgsError(f"{command}: --run names its model and policy; do not give --model or --policy")
    if args.steps is not None or args.guidance is not None or args.diffusion_path is not None:
        raise GenerationArgsError(f"{command}: with --run the decode settings are the run's (model.policy_kwargs)")
    from blip3o_rl.rl.export import read_run_config

    return read_run_config(run).model.policy


def generation_policy(args: argparse.Namespace, command: str):
    """``(policy, SamplingParams)`` from the options of `add_generation_arguments`; the policy is on the GPU
    when there is one. Raises `GenerationArgsError` (message starting with ``command``) for bad options."""
    import torch

    from blip3o_rl.policies import DTYPES, SamplingParams, load_policy
    from blip3o_rl.policies.blip3o_next import Blip3oConfigError, CheckpointError

    if min(args.batch_size, 1 if args.steps is None else args.steps) < 1:
        raise GenerationArgsError(f"{command}: --batch-size and --steps must be >= 1")
    kind = _kind(args, command)
    kwargs: dict = {}
    if kind == "blip3o_next":
        from blip3o_rl.policies.blip3o_next import INFERENCE_SAMPLING, DecodeSettings

        defaults = (INFERENCE_SAMPLING.temperature, INFERENCE_SAMPLING.top_k, INFERENCE_SAMPLING.top_p)
        settings = {"num_inference_steps": args.steps, "guidance_scale": args.guidance}
        kwargs["decode_settings"] = DecodeSettings(**{k: v for k, v in settings.items() if v is not None})
        if args.diffusion_path is not None:
            kwargs["diffusion_path"] = args.diffusion_path
    else:
        if args.steps is not None or args.guidance is not None or args.diffusion_path is not None:
            raise GenerationArgsError(f"{command}: --steps, --guidance and --diffusion-path apply to blip3o_next, "
                                      f"not to {kind!r}")
        defaults = (1.0, 0, 1.0)
    temperature, top_k, top_p = (d if v is None else v for v, d in
                                 zip((args.temperature, args.top_k, args.top_p), defaults, strict=True))
    dtype = args.dtype or ("bfloat16" if torch.cuda.is_available() else "float32")
    try:
        if getattr(args, "run", None) is not None:
            from blip3o_rl.rl.export import load_run_policy

            policy, _, _ = load_run_policy(args.run, args.checkpoint)
            policy.model.to(DTYPES[dtype])
        else:
            policy = load_policy(kind, args.model, dtype, **kwargs)
    except (Blip3oConfigError, CheckpointError) as exc:  # a folder that is not a usable checkpoint
        raise GenerationArgsError(str(exc)) from None
    if torch.cuda.is_available():
        policy.model.to("cuda")
    return policy, SamplingParams(float(temperature), int(top_k), float(top_p))
