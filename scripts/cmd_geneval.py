"""GenEval subcommands: ``blip3o-rl data geneval`` (training prompts) and scoring an image folder.

Each subcommand is a pair ``configure_*(parser)`` / ``run_*(args) -> int`` for the main CLI to mount.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from blip3o_rl.rewards.geneval.metadata import TAGS, load_metadata


def configure_data(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write GenEval-format training prompts (JSONL) for the six tasks over the 80 COCO objects, "
        "deduplicated against an evaluation file."
    )
    parser.add_argument("--out", required=True, type=Path, help="output JSONL file")
    parser.add_argument("--n", required=True, type=int, help="prompts per task (fewer when a task runs out)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument(
        "--exclude", type=Path, action="append", default=[],
        help="GenEval metadata JSONL whose requirements must not appear (e.g. the evaluation set); repeatable",
    )  # fmt: skip
    parser.add_argument("--tags", nargs="+", default=list(TAGS), choices=TAGS, help="tasks to generate (default all)")
    parser.add_argument("--max-count", type=int, default=4, help="largest count in counting prompts (default 4)")


def run_data(args: argparse.Namespace) -> int:
    from blip3o_rl.rewards.geneval.prompts import generate_prompts

    excluded = [row for path in args.exclude for row in load_metadata(path)]
    rows = generate_prompts(args.n, seed=args.seed, exclude=excluded, tags=args.tags, max_count=args.max_count)
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
    from blip3o_rl.rewards.geneval.color import DEFAULT_CLIP
    from blip3o_rl.rewards.geneval.detector import DEFAULT_DETECTOR

    group = parser.add_argument_group("GenEval scorer")
    group.add_argument("--detector", default=DEFAULT_DETECTOR, help="Mask2Former hub id or local folder")
    group.add_argument("--clip", default=DEFAULT_CLIP, help="CLIP hub id or local folder (colour)")
    group.add_argument("--detector-backend", default="transformers", choices=("transformers", "mmdet"))
    group.add_argument("--mmdet-config", help="mmdet config file (--detector-backend mmdet)")
    group.add_argument("--mmdet-checkpoint", help="mmdet .pth checkpoint (--detector-backend mmdet)")
    group.add_argument(
        "--mmdet-reference-channel-order", action="store_true",
        help="feed mmdet RGB arrays as the reference reward server does (default: BGR, as GenEval's benchmark)",
    )  # fmt: skip
    group.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    group.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="model dtype (default float32)")
    group.add_argument("--batch-size", type=int, default=16, help="images per scoring batch")
    group.add_argument(
        "--detector-shortest-edge", type=int, default=800,
        help="resize images to this shortest side before detection (800 = GenEval's mmdet test resize); 0 = checkpoint's",
    )  # fmt: skip


def build_scorer_from_args(args: argparse.Namespace):
    from blip3o_rl.rewards.geneval.scorer import build_scorer

    return build_scorer(
        detector=args.detector,
        clip=args.clip,
        detector_backend=args.detector_backend,
        device=args.device,
        dtype=args.dtype,
        detector_batch_size=args.batch_size,
        clip_batch_size=max(args.batch_size, 16),
        detector_shortest_edge=args.detector_shortest_edge or None,
        mmdet_config=args.mmdet_config,
        mmdet_checkpoint=args.mmdet_checkpoint,
        mmdet_reference_channel_order=args.mmdet_reference_channel_order,
    )


def configure_eval_images(parser: argparse.ArgumentParser) -> None:
    parser.description = "Score a folder of images in GenEval's layout (<dir>/00000/metadata.jsonl, samples/0000.png)."
    parser.add_argument("--images", required=True, type=Path, help="folder in GenEval's layout")
    parser.add_argument("--results", type=Path, help="per-image results JSONL (default <images>/results.jsonl)")
    add_scorer_options(parser)


def run_eval_images(args: argparse.Namespace) -> int:
    from blip3o_rl.rewards.geneval.benchmark import format_summary, score_folder

    scorer = build_scorer_from_args(args)
    results = args.results or args.images / "results.jsonl"
    summary = score_folder(args.images, scorer, results_path=results, batch_size=args.batch_size)
    print(format_summary(summary, scorer.detector.backend))
    print(f"per-image results: {results}")
    return 0
