"""Command-line options for "which policy generates, and how" (shared by the benchmark commands).

`add_policy_arguments(parser)` adds ``--model``/``--run`` (a model folder, or a training run whose
checkpoint is applied), ``--policy``, ``--checkpoint``, ``--model-dtype``, sampling
(``--temperature``/``--top-k``/``--top-p``, default: the policy's inference values) and the
BLIP3o-NEXT decode options; `load_policy_from_args(args)` returns ``(policy, SamplingParams)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from blip3o_rl.rl.rollout import SamplingParams

DEFAULT_POLICY = "blip3o_next"


class PolicyArgsError(ValueError):
    """Inconsistent policy options (the commands print it as a usage error)."""


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("policy (give --model or --run)")
    group.add_argument("--model", type=Path, help="model folder to generate with (e.g. an export)")
    group.add_argument("--run", type=Path, help="a training run's output_dir: its base model with a checkpoint applied")
    group.add_argument("--checkpoint", help="with --run: step_N, N or a path (default: the latest)")
    group.add_argument("--policy", help=f"policy kind for --model (default {DEFAULT_POLICY}; tiny for the tiny world)")
    group.add_argument("--model-dtype", choices=("float32", "bfloat16", "float16"),
                       help="policy dtype (default: bfloat16 on GPU, float32 on CPU)")
    group.add_argument("--temperature", type=float, help="AR sampling temperature (default: the policy's, 1.0)")
    group.add_argument("--top-k", type=int, help="0 disables (default: BLIP3o-NEXT 1200, others 0)")
    group.add_argument("--top-p", type=float, help="1 disables (default: BLIP3o-NEXT 0.95, others 1)")
    group.add_argument("--steps", type=int, help="BLIP3o-NEXT diffusion decode steps (default 30)")
    group.add_argument("--guidance", type=float, help="BLIP3o-NEXT decode CFG scale (default 2.0)")
    group.add_argument("--diffusion-path", help="BLIP3o-NEXT: local SANA diffusers folder (default: the config's)")


def _decode_kwargs(args: argparse.Namespace, kind: str) -> dict:
    given = {"--steps": args.steps, "--guidance": args.guidance, "--diffusion-path": args.diffusion_path}
    if kind != "blip3o_next" or args.run is not None:
        used = [k for k, v in given.items() if v is not None]
        if used:
            raise PolicyArgsError(f"{', '.join(used)}: only for --model with --policy blip3o_next")
        return {}
    from blip3o_rl.policies.blip3o_next import DecodeSettings

    settings = {"num_inference_steps": args.steps, "guidance_scale": args.guidance}
    kwargs: dict = {"decode_settings": DecodeSettings(**{k: v for k, v in settings.items() if v is not None})}
    if args.diffusion_path is not None:
        kwargs["diffusion_path"] = args.diffusion_path
    return kwargs


def _sampling(args: argparse.Namespace, kind: str) -> SamplingParams:
    if kind == "blip3o_next":
        from blip3o_rl.policies.blip3o_next import INFERENCE_TEMPERATURE, INFERENCE_TOP_K, INFERENCE_TOP_P

        defaults = (INFERENCE_TEMPERATURE, INFERENCE_TOP_K, INFERENCE_TOP_P)
    else:
        defaults = (1.0, 0, 1.0)
    given = (args.temperature, args.top_k, args.top_p)
    return SamplingParams(*(d if v is None else v for v, d in zip(given, defaults, strict=True)))


def load_policy_from_args(args: argparse.Namespace):
    """``(policy, sampling)`` from the options of `add_policy_arguments`; the policy is on the GPU if any."""
    import torch

    from blip3o_rl.policies import DTYPES, load_policy
    from blip3o_rl.rl.export import load_run_policy, read_run_config

    if (args.model is None) == (args.run is None):
        raise PolicyArgsError("give exactly one of --model or --run")
    if args.run is not None and args.policy is not None:
        raise PolicyArgsError("--policy is for --model; a run names its own policy")
    if args.checkpoint is not None and args.run is None:
        raise PolicyArgsError("--checkpoint needs --run")
    kind = read_run_config(args.run).model.policy if args.run is not None else args.policy or DEFAULT_POLICY
    kwargs = _decode_kwargs(args, kind)
    dtype = args.model_dtype or ("bfloat16" if torch.cuda.is_available() else "float32")
    if args.run is not None:
        policy, _, _ = load_run_policy(args.run, args.checkpoint)
        policy.model.to(DTYPES[dtype])
    else:
        policy = load_policy(kind, args.model, dtype, **kwargs)
    if torch.cuda.is_available():
        policy.model.to("cuda")
    policy.model.requires_grad_(False).eval()
    return policy, _sampling(args, kind)
