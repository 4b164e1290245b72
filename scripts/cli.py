"""The ``blip3o-rl`` command line.

    blip3o-rl train demo                                   # the built-in CPU demo
    blip3o-rl train configs/my_run.yaml grpo.beta=0.01     # any recipe, with dotted overrides
    blip3o-rl train configs/my_run.yaml --resume           # continue from the latest checkpoint
    blip3o-rl train configs/my_run.yaml --overwrite        # a new run where one was (moved to <dir>.old-<time>)
    blip3o-rl config demo max_steps=10                     # print the resolved configuration
    blip3o-rl make-tiny-world OUT_DIR                      # write a random tiny-world model folder
    blip3o-rl generate --model PATH --prompt "a red cube"  # text-to-image (BLIP3o-NEXT by default)
    blip3o-rl export --run runs/my_run --out exported/     # a run's checkpoint as a standalone model
    blip3o-rl eval geneval --model PATH --metadata FILE    # generate and score GenEval (or --images DIR)
    blip3o-rl data geneval --out FILE --n 100              # write GenEval-format training prompts
    blip3o-rl eval ocr --model PATH --prompts test.txt     # OCR accuracy of a model on OCR prompts
    blip3o-rl serve-reward --reward ocr --port 8100        # a reward server (remote:http://127.0.0.1:8100)
    blip3o-rl bench step demo_ocr --steps 5                # pipelined vs sequential steps, same run
    blip3o-rl bench rollout [--json]                       # every rollout engine, same model and seeds
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from pathlib import Path

import yaml

from .policy_args import add_generation_arguments


def _cmd_train(args: argparse.Namespace) -> int:
    from ..rl.config import load_config
    from ..rl.trainer import train

    cfg = load_config(args.recipe, args.overrides, check_inputs=True)
    summary = train(cfg, resume=args.resume, overwrite=args.overwrite, allow_config_change=args.allow_config_change)
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
    from ..rl.config import config_to_dict, load_config

    print(yaml.safe_dump(config_to_dict(load_config(args.recipe, args.overrides, check_inputs=True)), sort_keys=False), end="")
    return 0


def _cmd_make_tiny_world(args: argparse.Namespace) -> int:
    from ..tiny import make_tiny_world

    print(make_tiny_world(args.out_dir, seed=args.seed, grid=args.grid, hidden_size=args.hidden_size,
                          num_layers=args.num_layers))
    return 0


def _usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _generation_policy(args: argparse.Namespace, command: str):
    """``(policy, sampling)`` from the shared generation options; an `int` exit status after a usage error."""
    from .policy_args import GenerationArgsError, generation_policy

    try:
        return generation_policy(args, command)
    except GenerationArgsError as exc:
        return _usage_error(str(exc))


def _cmd_generate(args: argparse.Namespace) -> int:
    from ..policies.base import decode_error
    from ..rl.data import PromptRow, check_policy_prompts, load_prompts
    from ..rl.rollout.generate import generate_images

    given = [PromptRow(p, {}, i) for i, p in enumerate(args.prompt or [], 1)]  # "--prompt:2": the second
    from_file = load_prompts(args.prompts_file) if args.prompts_file else []
    prompts = [r.prompt for r in (*given, *from_file)]
    if not prompts:
        return _usage_error("generate: give at least one --prompt or a --prompts-file")
    if args.num_images < 1:
        return _usage_error("generate: --num-images must be >= 1")
    _claim_out(args)  # before any work: an unusable --out would throw every image away
    loaded = _generation_policy(args, "generate")
    if isinstance(loaded, int):
        return loaded
    policy, sampling = loaded
    check_policy_prompts(policy, given, "--prompt")  # what train refuses: no room for the image tokens
    check_policy_prompts(policy, from_file, args.prompts_file)
    images = generate_images(policy, prompts, args.num_images, sampling, seed=args.seed, batch_size=args.batch_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    with (out / "images.jsonl").open("w", encoding="utf-8") as index:
        for i, (prompt, group) in enumerate(zip(prompts, images, strict=True)):
            for j, image in enumerate(group):
                name = f"{i:05d}_{j:02d}.png"
                why = decode_error(image)
                if why is not None:  # a failed decode's placeholder: reported, not saved as an image
                    failed += 1
                    print(f"error: image {j} of prompt {i + 1} ({name}) was not written: {why}", file=sys.stderr)
                    index.write(json.dumps({"file": None, "prompt": prompt, "seed": args.seed, "error": why}) + "\n")
                    continue
                image.save(out / name)
                index.write(json.dumps({"file": name, "prompt": prompt, "seed": args.seed}) + "\n")
    written = sum(len(g) for g in images) - failed
    print(f"wrote {written} images for {len(prompts)} prompts to {out} (index: images.jsonl)"
          + (f"; {failed} failed to decode" if failed else ""))
    return 1 if failed else 0


def _claim_out(args: argparse.Namespace) -> None:
    """``--out`` must be writable and empty, or ``--overwrite`` moves its old files aside (rl/run/run_dir.py)."""
    from ..rl.run.run_dir import claim_output_folder

    moved = claim_output_folder(args.out, overwrite=args.overwrite)
    if moved is not None:
        print(f"--overwrite: moved the previous contents of {args.out} to {moved}", file=sys.stderr)


def _cmd_export(args: argparse.Namespace) -> int:
    from ..rl.weights.export import export_run

    try:
        out = export_run(args.run, args.out, checkpoint=args.checkpoint, base_model=args.base_model,
                         dtype=args.dtype)
    except FileExistsError as exc:
        return _usage_error(str(exc))
    print(f"exported {args.run} to {out}")
    return 0


def _cmd_serve_reward(args: argparse.Namespace) -> int:
    from ..rewards.server import TOKEN_ENV, ServerLimits, ServerSettings, serve

    try:
        kwargs = json.loads(args.kwargs)
    except json.JSONDecodeError as exc:
        return _usage_error(f"serve-reward: --kwargs is not JSON: {exc}")
    if not isinstance(kwargs, dict):
        return _usage_error("serve-reward: --kwargs must be a JSON object")
    devices = tuple(d for d in (args.devices or "").split(",") if d)
    settings = ServerSettings(
        reward=args.reward, kwargs=kwargs, host=args.host, port=args.port, workers=args.workers,
        token=args.token or os.environ.get(TOKEN_ENV) or None, devices=devices, concurrency=args.concurrency,
        limits=ServerLimits(max_body_bytes=int(args.max_body_mb * 2**20), max_images=args.max_images,
                            max_image_pixels=args.max_image_pixels),
    )
    logging.getLogger("blip3o_rl").setLevel(logging.INFO)  # request logs with their ids
    try:
        serve(settings, port_file=args.port_file)
    except (ValueError, ImportError) as exc:
        return _usage_error(f"serve-reward: {exc}")
    return 0


def _add_serve_reward(sub) -> None:
    p = sub.add_parser("serve-reward", help="serve a reward over HTTP (FastAPI + uvicorn; never unpickles)",
                       description="Serves any reward spec the trainer accepts; train against it with the "
                       "reward spec remote:http://HOST:PORT. PNG/JPEG images + JSON, limits checked before "
                       "decoding, bearer token, /health, /ready, /openapi.json.")
    p.add_argument("--reward", required=True, help="a reward spec: registered name, package.module:attr, file.py:attr")
    p.add_argument("--kwargs", default="{}", help="JSON object of the reward's keyword arguments")
    p.add_argument("--host", default="127.0.0.1", help="bind address (beyond loopback needs --token)")
    p.add_argument("--port", type=int, default=8000, help="0: a free port (printed, and written to --port-file)")
    p.add_argument("--port-file", help="write the bound port to this file once listening")
    p.add_argument("--workers", type=int, default=1, help="worker processes, each with its own reward")
    p.add_argument("--devices", help="comma-separated devices, one worker each (sets CUDA_VISIBLE_DEVICES)")
    p.add_argument("--token", help="bearer token required from clients (default: $BLIP3O_RL_REWARD_TOKEN)")
    p.add_argument("--concurrency", type=int, default=1, help="batches scored at once per worker")
    p.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body, MiB")
    p.add_argument("--max-images", type=int, default=256, help="most images per request")
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096,
                   help="most pixels per image, from its header, checked before decoding")
    p.set_defaults(fn=_cmd_serve_reward)


# ---------------------------------------------------------------- blip3o-rl eval <benchmark>


def _cmd_eval_ocr(args: argparse.Namespace) -> int:
    from ..rewards.ocr import OCRReward, load_ocr_prompts
    from ..rl.benchmarks.ocr import evaluate_ocr
    from ..rl.data import PromptRow, check_policy_prompts
    from .eval_ocr import engine_kwargs

    if min(args.images_per_prompt, 1 if args.max_prompts is None else args.max_prompts) < 1:
        return _usage_error("eval ocr: --images-per-prompt and --max-prompts must be >= 1")
    try:
        rows = load_ocr_prompts(args.prompts)[: args.max_prompts]
        kwargs = engine_kwargs(args)
    except ValueError as exc:  # a bad prompt line (OCRPromptError) or --engine-param
        return _usage_error(f"eval ocr: {exc}")
    _claim_out(args)
    loaded = _generation_policy(args, "eval ocr")
    if isinstance(loaded, int):
        return loaded
    policy, sampling = loaded
    text = Path(args.prompts).read_text(encoding="utf-8").split("\n")  # the rows' lines: the non-blank ones
    lines = [n for n, line in enumerate(text, 1) if line.strip()][: len(rows)]
    check_policy_prompts(policy, [PromptRow(r["prompt"], {}, n) for r, n in zip(rows, lines, strict=True)],
                         args.prompts)
    reward = OCRReward(args.engine, **kwargs)
    summary = evaluate_ocr(
        policy, reward, rows, args.out, images_per_prompt=args.images_per_prompt, sampling=sampling,
        seed=args.seed, batch_size=args.batch_size,
        extra={"model": str(args.model), "policy": args.policy, "prompts": str(args.prompts),
               "engine_settings": reward.engine.describe()["settings"]},
    )
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    if summary["ocr_reward_mean"] is not None:
        print(f"OCR accuracy (mean OCR reward): {summary['ocr_reward_mean']:.4f}; exact match: "
              f"{summary['exact_match_rate']:.4f}; {summary['num_scored']} images scored, "
              f"{summary['num_failed']} failed; results in {args.out}")
    return 0 if summary["num_scored"] else 1


def _add_eval_ocr(benchmarks) -> None:
    """``blip3o-rl eval ocr``: generate with a model folder and score with the OCR reward."""
    from .eval_ocr import add_engine_arguments

    p = benchmarks.add_parser("ocr", help="text rendering: mean OCR reward ('OCR accuracy') and exact-match rate",
                              description="Generates images for OCR prompts (the text to render in double "
                              "quotes) and writes results.jsonl (one record per image), images/ and "
                              "summary.json to --out.")
    p.add_argument("--prompts", required=True, help="OCR prompt file, one prompt per line (e.g. Flow-GRPO's test.txt)")
    p.add_argument("--images-per-prompt", type=int, default=1)
    p.add_argument("--max-prompts", type=int, help="only the first K prompts")
    p.add_argument("--out", default="eval_ocr", help="output folder (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="--out may hold files: move them to <out>.old-<time>")
    add_generation_arguments(p)
    add_engine_arguments(p)
    p.set_defaults(fn=_cmd_eval_ocr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blip3o-rl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of expected errors too (accepted anywhere on the line)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run GRPO from a recipe")
    p.add_argument("recipe", help="a YAML path, or a packaged recipe name (e.g. demo)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. grpo.beta=0.01")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue from CHECKPOINT (a folder, step_N or N), or from the latest one in output_dir; "
                   "a key=value after --resume is an override, not a checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an output_dir that holds one, moving its files to <output_dir>.old-<time>")
    p.add_argument("--allow-config-change", nargs="+", action="extend", default=[], metavar="KEY",
                   help="with --resume: accept these changed keys (or sections, e.g. optim); the new values apply "
                   "and the change is recorded in output_dir/config_changes.jsonl")
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

    p = sub.add_parser("generate", help="text-to-image with a model folder; writes PNGs")
    p.add_argument("--prompt", action="append", help="a caption (repeat for several)")
    p.add_argument("--prompts-file", help="prompt file: .jsonl rows with 'prompt', or one prompt per line")
    p.add_argument("--num-images", type=int, default=1, help="images per prompt")
    p.add_argument("--out", default="generated", help="output folder (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="--out may hold files: move them to <out>.old-<time>")
    add_generation_arguments(p)
    p.set_defaults(fn=_cmd_generate)

    p = sub.add_parser("export", help="merge a run's checkpoint into its base model and save a model folder")
    p.add_argument("--run", required=True, help="the run's output_dir (holds config.yaml and checkpoints/)")
    p.add_argument("--out", required=True, help="new folder for the exported model")
    p.add_argument("--checkpoint", help="step_N, N or a checkpoint path (default: the latest)")
    p.add_argument("--base-model", help="base model folder (default: the run's model.name_or_path)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the saved language-model weights (default: the run's model.dtype)")
    p.set_defaults(fn=_cmd_export)

    _add_serve_reward(sub)
    _add_benchmark_commands(sub)
    return parser


def _add_benchmark_commands(sub) -> None:
    """``eval <benchmark>``, ``data <benchmark>`` and ``bench <what>`` groups; each module mounts its own parsers."""
    from . import bench_step, cmd_bench, cmd_geneval

    evals = sub.add_parser("eval", help="generate and score a benchmark").add_subparsers(dest="benchmark", required=True)
    data = sub.add_parser("data", help="write benchmark-format prompt files").add_subparsers(dest="benchmark", required=True)
    p = evals.add_parser("geneval", help="GenEval: generate images with a policy and score them")
    cmd_geneval.configure_eval(p)
    p.set_defaults(fn=cmd_geneval.run_eval)
    _add_eval_ocr(evals)
    p = data.add_parser("geneval", help="GenEval-format training prompts for the six tasks")
    cmd_geneval.configure_data(p)
    p.set_defaults(fn=cmd_geneval.run_data)
    bench = sub.add_parser("bench", help="performance benchmarks").add_subparsers(dest="benchmark", required=True)
    p = bench.add_parser("rollout", help="every available rollout engine on one model, batch and seeds")
    cmd_bench.configure(p)
    p.set_defaults(fn=cmd_bench.run)
    p = bench.add_parser("step", help="pipelined vs sequential GRPO steps of a recipe, in the same run")
    bench_step.configure(p)
    p.set_defaults(fn=bench_step.main)


def _move_overrides(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> None:
    """``key=value`` words that argparse gave to ``--resume`` / ``--allow-config-change`` or left over
    (after an option) are overrides; anything else left over is an error."""
    if args.command not in ("train", "config"):
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return
    bad = [w for w in extra if "=" not in w or w.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = [*args.overrides, *extra]
    if args.command == "train":
        if isinstance(args.resume, str) and "=" in args.resume and not Path(args.resume).exists():
            args.overrides.append(args.resume)
            args.resume = True
        keys = [k for k in args.allow_config_change if "=" not in k]
        args.overrides += [k for k in args.allow_config_change if "=" in k]
        args.allow_config_change = keys


def _expected_error(exc: BaseException) -> str | None:
    """The one-line message of an expected failure (bad input, disk full, missing package), else None."""
    from ..policies.errors import ModelFolderError
    from ..registry import ComponentError
    from ..rl.config import ConfigError
    from ..rl.data import PromptFileError
    from ..rl.errors import RunError
    from .policy_args import GenerationArgsError

    if isinstance(exc, (ConfigError, ComponentError, PromptFileError, RunError, GenerationArgsError, ModelFolderError,
                        FileNotFoundError, FileExistsError, NotADirectoryError, UnicodeDecodeError)):
        return str(exc)
    if isinstance(exc, ImportError):  # an optional dependency that is not installed
        return f"{exc}" if "pip install" in str(exc) else f"{exc} (a package is missing: pip install it)"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"no space left writing {exc.filename or 'a file'}"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or exc}"
    if type(exc).__name__ == "SafetensorError":  # a truncated or non-safetensors weights file
        return f"{_safetensors_file(exc) or 'a .safetensors file'} is not a readable safetensors file: {exc}"
    return None


def _safetensors_file(exc: BaseException) -> str | None:
    """The file a safetensors reader was opening when it failed (from the traceback's frames)."""
    tb, found = exc.__traceback__, None
    while tb is not None:
        for name in ("filename", "file", "checkpoint_file", "path"):
            value = tb.tb_frame.f_locals.get(name)
            if isinstance(value, (str, Path)) and str(value).endswith(".safetensors"):
                found = str(value)
        tb = tb.tb_next
    return found


def main(argv: list[str] | None = None) -> int:
    """Run one command. Expected failures print one ``error: ...`` line and return 2 (``--debug``: raise);
    SIGINT / SIGTERM during training return 128 + the signal after saving a checkpoint."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    _move_overrides(args, extra, parser)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from ..rl.errors import TrainingStopped
    from ..rl.run.progress import on_terminal, quiet_library_bars

    if not on_terminal():  # a log file: no "Loading weights" / "Writing model shards" bar redraws
        quiet_library_bars()

    try:
        return args.fn(args)
    except TrainingStopped as exc:
        print(f"blip3o-rl: {exc}", file=sys.stderr)
        return 128 + exc.signal_number
    except KeyboardInterrupt as exc:
        if debug:
            raise
        print(f"error: interrupted{': ' + str(exc) if str(exc) else ''}; the last saved checkpoint is intact",
              file=sys.stderr)
        return 130
    except Exception as exc:
        message = _expected_error(exc)
        if message is None or debug:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
