"""GenEval subcommands: ``blip3o-rl data geneval`` (training prompts) and ``blip3o-rl eval geneval``.

Each subcommand is a pair ``configure_*(parser)`` / ``run_*(args) -> int`` for the main CLI to mount.

``eval geneval`` generates ``--images-per-prompt`` images per metadata row with any policy
(``--model PATH --policy KIND``, or a training ``--run`` with its checkpoint applied) into GenEval's
folder layout, then scores the folder; ``--images DIR`` scores an existing folder instead.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections import Counter
from pathlib import Path

from ..rewards.geneval.metadata import (
    COLORS,
    GENEVAL_OBJECTS,
    TAGS,
    MetadataError,
    iter_metadata_file,
    load_metadata,
)
from .policy_args import GenerationArgsError, add_generation_arguments


class UsageError(ValueError):
    """Bad command-line arguments (printed as ``error: ...``, exit status 2)."""


def _report_errors(fn):
    """Run a subcommand; user errors (bad arguments or metadata, an existing --out) print and return 2."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (UsageError, GenerationArgsError, MetadataError, FileExistsError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return run


def configure_data(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write GenEval-format training prompts (JSONL) for the six tasks over the 80 COCO objects, "
        "deduplicated against an evaluation file."
    )
    parser.add_argument("--out", required=True, type=Path, help="output JSONL file (new, or --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--n", required=True, type=int, help="prompts per task (fewer when a task runs out)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument(
        "--exclude", type=Path, action="append", default=[],
        help="GenEval metadata JSONL whose requirements must not appear (e.g. the evaluation set); repeatable",
    )  # fmt: skip
    parser.add_argument("--tags", nargs="+", default=list(TAGS), choices=TAGS, help="tasks to generate (default all)")
    parser.add_argument("--max-count", type=int, default=4, help="largest count in counting prompts (default 4)")
    parser.add_argument("--objects", nargs="+", default=list(GENEVAL_OBJECTS), metavar="NAME",
                        help="object names to use (GenEval names; default all 80)")
    parser.add_argument("--colors", nargs="+", default=list(COLORS), choices=COLORS, metavar="COLOR",
                        help="colours to use (default GenEval's 10)")


@_report_errors
def run_data(args: argparse.Namespace) -> int:
    from ..rewards.geneval.prompts import generate_prompts
    from ..rl.run.run_dir import claim_output_file

    unknown = [o for o in args.objects if o not in GENEVAL_OBJECTS]
    if unknown:
        raise UsageError(f"--objects: {unknown} are not GenEval object names")
    claim_output_file(args.out, overwrite=args.overwrite)  # before any work; an existing file needs --overwrite
    excluded = [row for path in args.exclude for row in load_metadata(path)]
    rows = generate_prompts(args.n, seed=args.seed, exclude=excluded, tags=args.tags, max_count=args.max_count,
                            objects=args.objects, colours=args.colors)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    counts = Counter(row["tag"] for row in rows)
    print(f"wrote {len(rows)} prompts to {args.out}")
    for tag in args.tags:
        note = "" if counts[tag] == args.n else f"  (asked for {args.n}: no more distinct ones left)"
        print(f"  {tag:<14} {counts[tag]}{note}")
    return 0


def add_scorer_options(parser: argparse.ArgumentParser) -> None:
    """Detector/CLIP options shared by every command that scores GenEval images."""
    group = parser.add_argument_group("GenEval scorer")
    # Defaults (None) resolve in build_scorer, so building the parser does not import torch.
    group.add_argument("--detector", help="Mask2Former hub id or local folder "
                                          "(default: facebook/mask2former-swin-small-coco-instance)")
    group.add_argument("--clip", help="CLIP hub id or local folder, for colours (default: openai/clip-vit-large-patch14)")
    group.add_argument("--detector-backend", default="transformers",
                       help="transformers (Mask2Former + CLIP), mmdet, tiny_world (the built-in tiny objects "
                            "world, read from pixels, no models), or package.module:function")
    group.add_argument("--tile", type=int,
                       help="tiny_world cell size in pixels (default: the tiny policy's tile, else 8)")
    group.add_argument("--mmdet-config", help="mmdet config file (--detector-backend mmdet)")
    group.add_argument("--mmdet-checkpoint", help="mmdet .pth checkpoint (--detector-backend mmdet)")
    group.add_argument(
        "--mmdet-reference-channel-order", action="store_true",
        help="feed mmdet RGB arrays as the reference reward server does (default: BGR, as GenEval's benchmark)",
    )  # fmt: skip
    group.add_argument("--device", help="detector and CLIP device: cuda, cpu, ... (default: cuda when available)")
    group.add_argument("--scorer-dtype", choices=("float32", "bfloat16", "float16"),
                       help="detector and CLIP dtype (default float32)")
    group.add_argument("--scorer-batch-size", type=int, default=16, help="images per scoring batch")
    group.add_argument(
        "--detector-shortest-edge", type=int, default=800,
        help="resize images to this shortest side before detection (800 = GenEval's mmdet test resize); 0 = checkpoint's",
    )  # fmt: skip


def build_scorer_from_args(args: argparse.Namespace):
    from .. import registry
    from ..rewards.geneval.scorer import build_scorer

    options = {
        "detector": args.detector,
        "clip": args.clip,
        "device": args.device,
        "dtype": args.scorer_dtype,
        "detector_batch_size": args.scorer_batch_size,
        "clip_batch_size": max(args.scorer_batch_size, 16),
        "detector_shortest_edge": args.detector_shortest_edge or None,  # None: the checkpoint's own
        "mmdet_config": args.mmdet_config,
        "mmdet_checkpoint": args.mmdet_checkpoint,
        "mmdet_reference_channel_order": args.mmdet_reference_channel_order,
        "tile": args.tile,
    }
    # These options cover every built-in backend: each gets those it takes (a builder with **kwargs gets
    # all); an option left unset (None) keeps the backend's default.
    accepted = registry.parameters(registry.resolve("detector", args.detector_backend))
    kwargs = {k: v for k, v in options.items()
              if (accepted is None or k in accepted) and (v is not None or k == "detector_shortest_edge")}
    return build_scorer(args.detector_backend, **kwargs)


def configure_eval(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "GenEval: generate images for a metadata file with a policy (--model or --run) into GenEval's "
        "folder layout (<out>/00000/metadata.jsonl, samples/0000.png) and score them; or score an "
        "existing folder (--images)."
    )
    parser.add_argument("--images", type=Path, help="score this existing folder in GenEval's layout; no generation")
    parser.add_argument("--metadata", type=Path, help="GenEval metadata JSONL to generate for")
    parser.add_argument("--images-per-prompt", type=int, default=4, help="images per prompt (GenEval: 4)")
    parser.add_argument("--out", type=Path, default=Path("geneval_images"),
                        help="new (or empty) folder for the images and results (default ./geneval_images)")
    parser.add_argument("--results", type=Path, help="per-image results JSONL (default <folder>/results.jsonl)")
    add_generation_arguments(parser, runs=True)
    add_scorer_options(parser)


def _check_eval_args(args: argparse.Namespace) -> None:
    generating = args.model is not None or args.run is not None
    if generating == (args.images is not None):
        raise UsageError("eval geneval: give --images DIR (score a folder) or --model/--run (generate and score)")
    if generating:
        if args.metadata is None:
            raise UsageError("eval geneval: --metadata FILE is needed to generate images")
        if args.images_per_prompt < 1:
            raise UsageError("eval geneval: --images-per-prompt must be >= 1")
        if args.out.exists() and any(args.out.iterdir()):
            raise FileExistsError(f"--out {args.out} is not empty: choose a new folder, or rescore it with --images")


def generate_folder(policy, sampling, rows: list[dict], out: Path, args: argparse.Namespace) -> None:
    """Generate ``args.images_per_prompt`` images per metadata row into GenEval's layout under ``out``."""
    from ..policies.base import decode_error
    from ..rewards.geneval.benchmark import write_prompt_folder
    from ..rl.errors import RunError
    from ..rl.rollout.generate import generate_images

    images = generate_images(policy, [r["prompt"] for r in rows], args.images_per_prompt, sampling,
                             seed=args.seed, batch_size=args.batch_size)
    for index, (row, imgs) in enumerate(zip(rows, images, strict=True)):
        failed = [(j, why) for j, why in enumerate(map(decode_error, imgs)) if why is not None]
        if failed:  # GenEval scores every sample of the layout: a placeholder would be scored as an image
            raise RunError(f"eval geneval: image {failed[0][0]} of prompt {index} ({row['prompt']!r}) could not be "
                           f"decoded: {failed[0][1]}; the {index} prompt folders before it are in {out}")
        write_prompt_folder(out, index, row, imgs)


@_report_errors
def run_eval(args: argparse.Namespace) -> int:
    from ..rewards.geneval.benchmark import format_summary, score_folder
    from ..rl.data import PromptRow, check_policy_prompts
    from .policy_args import generation_policy

    _check_eval_args(args)
    folder = args.images
    if folder is None:
        rows = load_metadata(args.metadata)
        policy, sampling = generation_policy(args, "eval geneval")
        check_policy_prompts(policy, [PromptRow(row["prompt"], {}, line) for line, row in
                                      iter_metadata_file(args.metadata)], args.metadata)  # as train refuses them
        if args.tile is None:  # the tiny world knows its own cell size
            args.tile = getattr(getattr(policy, "renderer", None), "tile", None)
        generate_folder(policy, sampling, rows, args.out, args)
        folder = args.out
        print(f"wrote {len(rows)} prompts x {args.images_per_prompt} images to {folder}")
    scorer = build_scorer_from_args(args)
    results = args.results or folder / "results.jsonl"
    summary = score_folder(folder, scorer, results_path=results, batch_size=args.scorer_batch_size)
    print(format_summary(summary, scorer.detector.backend))
    print(f"per-image results: {results}")
    return 0
