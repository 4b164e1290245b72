"""OCR benchmark on images already on disk: mean OCR reward ("OCR accuracy"), exact-match rate, jsonl.

    python -m blip3o_rl.scripts.eval_ocr --images DIR --prompts test.txt --out results/

Images are named ``<prompt index>[_<sample>].png`` (0-based index among the prompt file's non-blank
lines), as the image dump of an OCR evaluation names them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from blip3o_rl.rewards.ocr.engines import REFERENCE_DET_LIMIT_SIDE_LEN
from blip3o_rl.rewards.ocr.evaluate import evaluate_image_dir
from blip3o_rl.rewards.ocr.reward import OCRReward


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """OCR engine options, shared by every command that builds the OCR reward."""
    parser.add_argument(
        "--engine",
        choices=["rapidocr", "paddleocr"],
        default="rapidocr",
        help="rapidocr: bundled PP-OCR ONNX models, offline (default); "
        "paddleocr: PaddleOCR 2.x, the engine of published numbers",
    )
    parser.add_argument(
        "--det-limit-side-len",
        type=int,
        default=REFERENCE_DET_LIMIT_SIDE_LEN,
        help="detector resize limit on the longer side (default: the reference's)",
    )
    parser.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="rapidocr: images read at once (default: this rank's share of the CPU cores)",
    )


def engine_kwargs(args: argparse.Namespace) -> dict:
    kwargs = {"det_limit_side_len": args.det_limit_side_len}
    if args.engine == "rapidocr" and args.num_workers:
        kwargs["num_workers"] = args.num_workers
    return kwargs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--images", required=True, help="folder of images named <prompt index>[_<sample>].png"
    )
    parser.add_argument("--prompts", required=True, help="OCR prompt file, one prompt per line")
    parser.add_argument("--out", default=None, help="folder for results.jsonl and summary.json")
    parser.add_argument("--batch-size", type=int, default=32)
    add_engine_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reward = OCRReward(args.engine, **engine_kwargs(args))
    _, summary = evaluate_image_dir(reward, args.images, args.prompts, args.out, batch_size=args.batch_size)
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
