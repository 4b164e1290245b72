"""The GenEval benchmark on a folder of images in the official layout.

Layout (as GenEval's generation scripts write it)::

    <outdir>/00000/metadata.jsonl      the prompt's metadata row (one JSON object)
    <outdir>/00000/samples/0000.png    images for that prompt (4 by default)
    <outdir>/00001/...

`score_folder` writes one JSON line per image (``results.jsonl``) and returns a `Summary`: the
fraction of correct images per task and overall = mean of the task means (GenEval's score).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from .metadata import TAGS, MetadataError, iter_metadata_file
from .scorer import GenEvalScorer

_SAMPLE = re.compile(r"\d+\.png")


def write_prompt_folder(outdir: str | Path, index: int, row: dict[str, Any], images: Sequence[Image.Image]) -> Path:
    """Write one prompt's metadata and images in the official layout; returns the prompt folder."""
    folder = Path(outdir) / f"{index:05d}"
    samples = folder / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    (folder / "metadata.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    for j, image in enumerate(images):
        image.save(samples / f"{j:04d}.png")
    return folder


@dataclass
class PromptFolder:
    path: Path
    metadata: dict[str, Any]
    images: list[Path]


def read_folder(outdir: str | Path) -> list[PromptFolder]:
    """The prompt folders of an official-layout directory (numeric names, in order), metadata validated."""
    outdir = Path(outdir)
    if not outdir.is_dir():
        raise FileNotFoundError(f"GenEval image folder {outdir} does not exist")
    folders = []
    for sub in sorted((p for p in outdir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        meta_file = sub / "metadata.jsonl"
        if not meta_file.is_file():
            raise MetadataError(f"{meta_file}: missing (every prompt folder needs its metadata)")
        rows = [row for _, row in iter_metadata_file(meta_file)]
        if len(rows) != 1:
            raise MetadataError(f"{meta_file}: expected exactly one metadata row, found {len(rows)}")
        sample_dir = sub / "samples"
        images = sorted(p for p in sample_dir.iterdir() if p.is_file() and _SAMPLE.fullmatch(p.name)) if sample_dir.is_dir() else []
        folders.append(PromptFolder(sub, rows[0], images))
    if not folders:
        raise FileNotFoundError(f"{outdir} holds no prompt folders (00000/metadata.jsonl, 00000/samples/0000.png, ...)")
    return folders


@dataclass
class Summary:
    """Per-task and overall GenEval scores of a results list."""

    tasks: dict[str, tuple[int, int]]  # tag -> (correct images, scored images)
    overall: float  # mean over the tasks present of the task means
    images: int
    prompts: int
    correct_prompts: int  # prompts with at least one correct image
    failed: int  # images that could not be scored (excluded from the means)
    missing_tasks: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "overall": self.overall,
            "tasks": {t: {"correct": c, "images": n, "score": c / n} for t, (c, n) in self.tasks.items()},
            "images": self.images,
            "prompts": self.prompts,
            "correct_prompts": self.correct_prompts,
            "failed": self.failed,
            "missing_tasks": self.missing_tasks,
        }


def summarize(results: Iterable[dict[str, Any]]) -> Summary:
    """GenEval's summary: per task the fraction of correct images; overall = mean of the task fractions."""
    per_task: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per_prompt: dict[str, bool] = {}
    images = failed = 0
    for r in results:
        images += 1
        if "error" in r:
            failed += 1
            continue
        per_task[r["tag"]][0] += bool(r["correct"])
        per_task[r["tag"]][1] += 1
        key = r.get("folder") or json.dumps(r.get("metadata"), sort_keys=True)
        per_prompt[key] = per_prompt.get(key, False) or bool(r["correct"])
    tasks = {t: (per_task[t][0], per_task[t][1]) for t in TAGS if t in per_task}
    overall = sum(c / n for c, n in tasks.values()) / len(tasks) if tasks else 0.0
    return Summary(
        tasks=tasks,
        overall=overall,
        images=images,
        prompts=len(per_prompt),
        correct_prompts=sum(per_prompt.values()),
        failed=failed,
        missing_tasks=[t for t in TAGS if t not in tasks],
    )


def format_summary(summary: Summary, detector: str | None = None) -> str:
    """A plain-text table: one row per task, then the overall score."""
    lines = []
    if detector:
        lines.append(f"detector: {detector}")
    lines += [f"{'task':<16}{'score':>8}{'correct':>10}{'images':>8}", "-" * 42]
    for tag, (correct, n) in summary.tasks.items():
        lines.append(f"{tag:<16}{correct / n:>8.4f}{correct:>10}{n:>8}")
    lines.append("-" * 42)
    lines.append(f"{'overall':<16}{summary.overall:>8.4f}  (mean of {len(summary.tasks)} task scores)")
    lines.append(f"prompts with a correct image: {summary.correct_prompts}/{summary.prompts}")
    if summary.failed:
        lines.append(f"WARNING: {summary.failed} of {summary.images} images could not be scored (see 'error' in the results)")
    if summary.missing_tasks:
        lines.append(f"WARNING: no scored images for {', '.join(summary.missing_tasks)}: overall is not GenEval's 6-task score")
    return "\n".join(lines)


def _batches(folders: Sequence[PromptFolder], size: int) -> Iterator[list[tuple[PromptFolder, Path]]]:
    batch = []
    for folder in folders:
        for image in folder.images:
            batch.append((folder, image))
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def _load(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def _score_batch(scorer: GenEvalScorer, batch: list[tuple[PromptFolder, Path]]) -> list[dict[str, Any]]:
    """Score a batch; an unreadable image gets an error result instead of stopping the run."""
    results: list[dict[str, Any]] = [{} for _ in batch]
    loaded, rows, where = [], [], []
    for i, (folder, path) in enumerate(batch):
        try:
            loaded.append(_load(path))
        except (OSError, ValueError) as exc:
            results[i] = {"error": f"cannot read image {path}: {exc}", "detector": scorer.detector.backend}
            continue
        rows.append(folder.metadata)
        where.append(i)
    for i, result in zip(where, scorer.score(loaded, rows) if loaded else [], strict=True):
        results[i] = result
    return results


def score_folder(
    outdir: str | Path, scorer: GenEvalScorer, *, results_path: str | Path | None = None, batch_size: int = 16
) -> Summary:
    """Score every image of an official-layout folder; write per-image results and the summary table.

    ``results_path`` defaults to ``<outdir>/results.jsonl``; ``<stem>_summary.txt`` (the table) and
    ``<stem>_summary.json`` go beside it.
    """
    folders = read_folder(outdir)
    results_path = Path(results_path) if results_path else Path(outdir) / "results.jsonl"
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results = []
    with results_path.open("w", encoding="utf-8") as fh:
        for batch in _batches(folders, batch_size):
            for (folder, path), result in zip(batch, _score_batch(scorer, batch), strict=True):
                row = {
                    "filename": str(path),
                    "folder": folder.path.name,
                    "prompt": folder.metadata["prompt"],
                    "tag": folder.metadata["tag"],
                    **result,
                    "metadata": folder.metadata,
                }
                fh.write(json.dumps(row) + "\n")
                results.append(row)
    summary = summarize(results)
    detector = getattr(scorer.detector, "backend", None)
    results_path.with_name(results_path.stem + "_summary.json").write_text(
        json.dumps({**summary.as_dict(), "detector": detector}, indent=2) + "\n", encoding="utf-8"
    )
    results_path.with_name(results_path.stem + "_summary.txt").write_text(format_summary(summary, detector) + "\n", encoding="utf-8")
    return summary
