"""Benchmarks of a policy: generate for a prompt file, score, and write the results folder.

`evaluate_ocr` is ``blip3o-rl eval ocr``: the OCR reward of images generated for OCR prompts, written by
the OCR benchmark's own writer (``results.jsonl``, ``images/``, ``summary.json``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ...policies.base import ImageTokenPolicy, SamplingParams
from ...rewards.base import Reward
from ...rewards.ocr.evaluate import OCREvalWriter, score_ocr_batch
from ..rollout.generate import generate_images


def evaluate_ocr(
    policy: ImageTokenPolicy,
    reward: Reward,
    rows: Sequence[dict[str, str]],
    out_dir: str | Path,
    *,
    images_per_prompt: int = 1,
    sampling: SamplingParams | None = None,
    seed: int = 0,
    batch_size: int = 16,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate ``images_per_prompt`` images for each OCR prompt row, score them with ``reward`` and write
    ``results.jsonl``, ``images/`` and ``summary.json`` to ``out_dir``; returns the summary.

    ``rows`` come from `load_ocr_prompts`. Images are generated and scored ``batch_size`` at a time (at
    most one batch is held in memory); prompt ``i`` is sampled from ``(seed, i)``, so a run repeats
    exactly for the same seed, whatever the batch size.
    """
    sampling = sampling or policy.inference_sampling
    per_call = max(1, batch_size // images_per_prompt)
    settings = {"images_per_prompt": images_per_prompt, "seed": seed, "batch_size": batch_size,
                "sampling": dataclasses.asdict(sampling)}
    with OCREvalWriter(out_dir) as writer:
        for start in tqdm(range(0, len(rows), per_call), desc="eval ocr", disable=not progress, unit="batch"):
            chunk = rows[start : start + per_call]
            groups = generate_images(policy, [r["prompt"] for r in chunk], images_per_prompt, sampling,
                                     seed=seed, batch_size=batch_size, progress=False, first_index=start)
            images = [image for group in groups for image in group]
            keys = [(start + i, j) for i in range(len(chunk)) for j in range(images_per_prompt)]
            writer.add(score_ocr_batch(reward, images, rows, keys), images)
        return writer.finish({**settings, **(extra or {})})
