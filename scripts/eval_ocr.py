"""OCR benchmark: mean OCR reward ("OCR accuracy"), exact-match rate, per-image jsonl.

Of a model (``blip3o-rl eval ocr``, built on `blip3o_rl.rl.benchmarks.ocr.evaluate_ocr`), or of images already
on disk::

    blip3o-rl eval ocr --model PATH --prompts test.txt --out results/
    python -m blip3o_rl.scripts.eval_ocr --images DIR --prompts test.txt --out results/

Images on disk are named ``<prompt index>[_<sample>].png`` (0-based index among the prompt file's
non-blank lines), as the image dump of a model evaluation names them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import yaml

from ..rewards.ocr.engines import REFERENCE_DET_LIMIT_SIDE_LEN, REFERENCE_DET_LIMIT_TYPE
from ..rewards.ocr.evaluate import evaluate_image_dir
from ..rewards.ocr.reward import OCRReward

if TYPE_CHECKING:  # torch-heavy; the CLI builds its parser from this module without them
    pass


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """OCR engine options, shared by every command that builds the OCR reward."""
    parser.add_argument(
        "--engine",
        choices=["rapidocr", "paddleocr", "paddleocr2"],
        default="rapidocr",
        help="rapidocr: bundled PP-OCR ONNX models, offline (default); "
        "paddleocr: PaddleOCR 3.x, the engine of BLIP3o-NEXT's text RL run (pip install 'blip3o-rl[paddle]'); "
        "paddleocr2: PaddleOCR 2.x, Flow-GRPO's reference engine",
    )
    parser.add_argument(
        "--det-limit-side-len",
        type=int,
        default=None,
        help=f"detector resize limit (default: {REFERENCE_DET_LIMIT_SIDE_LEN}, Flow-GRPO's reference; "
        "PaddleOCR 3.x's own default with --engine paddleocr)",
    )
    parser.add_argument(
        "--det-limit-type",
        choices=["max", "min"],
        default=None,
        help="max: shrink images whose longer side exceeds the limit (the reference); "
        f"min: enlarge images whose shorter side is below it (default: {REFERENCE_DET_LIMIT_TYPE}; "
        "PaddleOCR 3.x's own with --engine paddleocr)",
    )
    parser.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="rapidocr: images read at once (default: this rank's share of the CPU cores)",
    )
    parser.add_argument(
        "--engine-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a raw engine setting, value in YAML (repeatable), e.g. Rec.rec_img_shape=[3,48,240] "
        "(rapidocr), device=gpu:0 (paddleocr) or use_gpu=true (paddleocr2)",
    )


def engine_kwargs(args: argparse.Namespace) -> dict:
    """The OCR engine's keyword arguments from the options of `add_engine_arguments`."""
    side, kind = args.det_limit_side_len, args.det_limit_type
    if args.engine == "paddleocr":  # PaddleOCR 3.x names; unset: its own defaults, as the official text run
        kwargs: dict[str, Any] = {k: v for k, v in (("text_det_limit_side_len", side), ("text_det_limit_type", kind))
                                  if v is not None}
    else:
        kwargs = {"det_limit_side_len": side or REFERENCE_DET_LIMIT_SIDE_LEN,
                  "det_limit_type": kind or REFERENCE_DET_LIMIT_TYPE}
    if args.engine == "rapidocr" and args.num_workers:
        kwargs["num_workers"] = args.num_workers
    params = {}
    for item in args.engine_param:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--engine-param {item!r}: expected KEY=VALUE, e.g. Rec.rec_img_shape=[3,48,240]")
        try:
            params[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ValueError(f"--engine-param {item!r}: cannot parse the value: {exc}") from None
    if params:
        kwargs["params"] = params
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
