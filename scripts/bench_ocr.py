"""OCR reward throughput (images/s) on rendered text, batched over a thread pool vs one image at a time.

    python -m blip3o_rl.scripts.bench_ocr [--sizes 512 1024] [--num-images 16] [--repeats 3]

Rows, per image size:
- ``rapidocr defaults``: rapidocr out of the box (angle classifier on, detector enlarging to 736 px
  on the shorter side), one image at a time: what a naive integration runs.
- ``sequential``: the reward's engine settings (reference configuration), one image at a time,
  onnxruntime using all cores inside each run: the baseline for the thread pool.
- ``batched``: `OCRReward` as used in training: the batch spread over ``--num-workers`` threads,
  one onnxruntime thread each.
Times are the median of ``--repeats`` interleaved passes after a warm-up. CPU s/image is the
process's CPU time (all threads) per image, a cost that load from other processes barely changes.
The mean reward shows that every row reads the same text.
"""

from __future__ import annotations

if not __package__:  # run as a file (python scripts/NAME.py): run it as the module it is
    from blip3o_rl.scripts import run_as_module

    run_as_module(__file__)

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from ..rewards.ocr.engines import REFERENCE_DET_LIMIT_SIDE_LEN, RapidOCREngine, available_cpus
from ..rewards.ocr.metric import text_reward
from ..rewards.ocr.prompts import load_ocr_prompts
from ..rewards.ocr.synthetic import render_text

OCR_TEST_FILE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ocr" / "test.txt"
FALLBACK_TARGETS = [
    "Hello World",
    "OPEN 24 HOURS",
    "Fresh Bread Daily",
    "Gate B12",
    "Quantum Leap",
    "Eat Your Greens!",
]


def targets(n: int, prompts: Path | None) -> list[str]:
    path = prompts or OCR_TEST_FILE
    pool = [r["target"] for r in load_ocr_prompts(path)] if path.is_file() else FALLBACK_TARGETS
    return [pool[i % len(pool)] for i in range(n)]


def one_at_a_time(engine: RapidOCREngine) -> Callable[[Sequence[Image.Image]], list]:
    return lambda images: [engine.read(image) for image in images]


def timed(
    runs: Sequence[Callable], images: Sequence[Image.Image], repeats: int
) -> list[tuple[float, float, list]]:
    """Per run: median wall seconds and median CPU seconds (all threads) of ``repeats`` passes over
    ``images``, and the last output.

    Passes are interleaved (in rotating order) so that load from other processes hits every run alike;
    CPU time is the cost that load barely changes.
    """
    for run in runs:
        run(images)  # warm-up: first runs allocate onnxruntime buffers
    wall: list[list[float]] = [[] for _ in runs]
    cpu: list[list[float]] = [[] for _ in runs]
    outs: list[list] = [[] for _ in runs]
    for rep in range(repeats):
        for k in range(len(runs)):
            j = (k + rep) % len(runs)
            start, start_cpu = time.perf_counter(), time.process_time()
            outs[j] = runs[j](images)
            wall[j].append(time.perf_counter() - start)
            cpu[j].append(time.process_time() - start_cpu)
    return [
        (statistics.median(w), statistics.median(c), out) for w, c, out in zip(wall, cpu, outs, strict=True)
    ]


def mean_reward(texts: Sequence[str], results: Sequence) -> float:
    return sum(text_reward(t, r) for t, r in zip(texts, results, strict=True)) / len(texts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=None, help="default: available CPU cores")
    parser.add_argument("--det-limit-side-len", type=int, default=REFERENCE_DET_LIMIT_SIDE_LEN)
    parser.add_argument("--prompts", type=Path, default=None, help="OCR prompt file for the texts to render")
    args = parser.parse_args(argv)

    limit = args.det_limit_side_len
    naive = RapidOCREngine(
        num_workers=1,
        intra_op_threads=-1,
        det_limit_type="min",
        det_limit_side_len=736,
        params={"Global.use_cls": True},
    )
    sequential = RapidOCREngine(num_workers=1, intra_op_threads=-1, det_limit_side_len=limit)
    batched = RapidOCREngine(num_workers=args.num_workers, intra_op_threads=1, det_limit_side_len=limit)
    texts = targets(args.num_images, args.prompts)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())  # other processes on the machine skew timings
    print(
        f"{available_cpus()} CPU cores available (load average {load}); {batched.num_workers} workers; "
        f"{len(texts)} images per pass; det limit {limit} px; models {batched.describe()['models']}"
    )
    runs = [
        ("rapidocr defaults, one at a time", one_at_a_time(naive)),
        ("sequential, one at a time", one_at_a_time(sequential)),
        (f"batched, {batched.num_workers} threads x 1", batched.read_batch),
    ]
    print(
        f"{'size':>5} {'engine run':<36} {'images/s':>9} {'vs sequential':>14} {'CPU s/image':>12} "
        f"{'mean reward':>12}"
    )
    for size in args.sizes:
        images = [render_text(t, size) for t in texts]
        timings = timed([fn for _, fn in runs], images, args.repeats)
        base = timings[1][0]
        for (name, _), (seconds, cpu_seconds, out) in zip(runs, timings, strict=True):
            print(
                f"{size:>5} {name:<36} {len(images) / seconds:>9.2f} {base / seconds:>13.2f}x "
                f"{cpu_seconds / len(images):>12.3f} {mean_reward(texts, out):>12.3f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
