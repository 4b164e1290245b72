"""OCR benchmark scoring: per-image records, a summary ("OCR accuracy" = mean OCR reward), and files.

The pieces stream, so a generation loop can score and write batch by batch::

    rows = load_ocr_prompts("test.txt")
    with OCREvalWriter(out_dir) as writer:
        for batch in ...:                                  # keys: (prompt_index, sample_index)
            records = score_ocr_batch(reward, images, rows, keys)
            writer.add(records, images)
        summary = writer.finish()

`evaluate_image_dir` scores images already on disk, named like the dump this module writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from PIL import Image

from ..base import Reward, run_reward
from .prompts import load_ocr_prompts

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_IMAGE_NAME = re.compile(r"^(\d+)(?:_(\d+))?$")


def image_name(prompt_index: int, sample_index: int) -> str:
    """File name of an image in the dump: ``<prompt line index>_<sample>.png`` (0-based)."""
    return f"{prompt_index:05d}_{sample_index:02d}.png"


def score_ocr_batch(
    reward: Reward,
    images: Sequence[Image.Image],
    rows: Sequence[dict[str, str]],
    keys: Sequence[tuple[int, int]],
) -> list[dict[str, Any]]:
    """Score ``images[j]`` against prompt ``rows[keys[j][0]]``; one JSON-ready record per image.

    A record holds the prompt, target, score (``None`` if the sample failed, with ``error``),
    ``exact`` (score == 1: the target appears verbatim, ignoring case and spaces), the recognised
    text and lines, and the engine and model names.
    """
    if len(images) != len(keys):
        raise ValueError(f"{len(images)} images but {len(keys)} keys")
    prompts = [rows[p]["prompt"] for p, _ in keys]
    out = run_reward(reward, "ocr", images, prompts, [dict(rows[p]) for p, _ in keys])  # checked scores
    records = []
    for (p, s), score, detail in zip(keys, out.scores, out.details, strict=True):
        records.append(
            {
                "prompt_index": p,
                "sample_index": s,
                "prompt": rows[p]["prompt"],
                "target": rows[p]["target"],
                "score": score,
                "exact": None if score is None else score == 1.0,
                **{k: v for k, v in detail.items() if k != "target"},
            }
        )
    return records


def summarize_ocr(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean OCR reward and exact-match rate over the scored images; failed images are counted apart."""
    scored = [r for r in records if r["score"] is not None]
    first = records[0] if records else {}
    return {
        "num_images": len(records),
        "num_prompts": len({r["prompt_index"] for r in records}),
        "num_scored": len(scored),
        "num_failed": len(records) - len(scored),
        "ocr_reward_mean": sum(r["score"] for r in scored) / len(scored) if scored else None,
        "exact_match_rate": sum(r["exact"] for r in scored) / len(scored) if scored else None,
        "engine": first.get("engine"),
        "engine_version": first.get("engine_version"),
        "models": first.get("models"),
    }


class OCREvalWriter:
    """Writes ``results.jsonl`` (one record per image), ``images/`` and ``summary.json`` under ``out_dir``."""

    def __init__(self, out_dir: str | Path, save_images: bool = True):
        self.out_dir = Path(out_dir)
        self.save_images = save_images
        if save_images:
            (self.out_dir / "images").mkdir(parents=True, exist_ok=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.records: list[dict[str, Any]] = []
        self._jsonl = (self.out_dir / "results.jsonl").open("w", encoding="utf-8")

    def add(self, records: Sequence[dict[str, Any]], images: Sequence[Image.Image] | None = None) -> None:
        """Append records (and save their images, when given and enabled)."""
        for j, record in enumerate(records):
            if images is not None and self.save_images:
                rel = Path("images") / image_name(record["prompt_index"], record["sample_index"])
                images[j].save(self.out_dir / rel)
                record = {**record, "image": str(rel)}
            self._jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.records.append(record)
        self._jsonl.flush()

    def finish(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Close the jsonl, write and return the summary (with ``extra`` fields, e.g. the model path)."""
        self._jsonl.close()
        summary = {**summarize_ocr(self.records), **(extra or {})}
        (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        return summary

    def __enter__(self) -> OCREvalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._jsonl.closed:
            self._jsonl.close()


def list_image_dir(images_dir: str | Path, num_prompts: int) -> list[tuple[int, int, Path]]:
    """Images named ``<prompt_index>[_<sample>].<png|jpg|jpeg|webp>`` as sorted (prompt, sample, path).

    The prompt index is the 0-based position among the prompt file's non-blank lines. Other files
    are ignored; an image with another name, or an index past the prompts, raises naming the file.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder {images_dir} does not exist")
    found = []
    for path in sorted(images_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        match = _IMAGE_NAME.match(path.stem)
        if not match:
            raise ValueError(
                f"{path}: image names must be <prompt index>[_<sample>]{path.suffix} "
                "(0-based index of the prompt in the prompt file), e.g. 00012_00.png"
            )
        p, s = int(match[1]), int(match[2] or 0)
        if p >= num_prompts:
            raise ValueError(f"{path}: prompt index {p} is past the {num_prompts} prompts of the prompt file")
        found.append((p, s, path))
    if not found:
        raise ValueError(f"{images_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return sorted(found)


def evaluate_image_dir(
    reward: Reward,
    images_dir: str | Path,
    prompts_path: str | Path,
    out_dir: str | Path | None = None,
    batch_size: int = 32,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score the images of ``images_dir`` against ``prompts_path``; write results when ``out_dir`` is set."""
    rows = load_ocr_prompts(prompts_path)
    entries = list_image_dir(images_dir, len(rows))
    extra = {"images": str(images_dir), "prompts": str(prompts_path)}
    records: list[dict[str, Any]] = []
    with nullcontext() if out_dir is None else OCREvalWriter(out_dir, save_images=False) as writer:
        for start in range(0, len(entries), batch_size):
            chunk = entries[start : start + batch_size]
            images = []
            for _, _, path in chunk:
                with Image.open(path) as im:
                    images.append(im.convert("RGB"))
            batch = score_ocr_batch(reward, images, rows, [(p, s) for p, s, _ in chunk])
            for record, (_, _, path) in zip(batch, chunk, strict=True):
                record["image"] = str(path)
            records.extend(batch)
            if writer is not None:
                writer.add(batch)
        summary = writer.finish(extra) if writer is not None else {**summarize_ocr(records), **extra}
    return records, summary
