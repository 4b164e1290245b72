"""OCR prompt files: one prompt per line, the text to render in double quotes (Flow-GRPO's format)."""

from __future__ import annotations

from pathlib import Path

from .metric import OCRPromptError, extract_target


def load_ocr_prompts(path: str | Path) -> list[dict[str, str]]:
    """Read an OCR prompt file into rows ``{"prompt": ..., "target": ...}``, in file order.

    The file is UTF-8 text, one prompt per line; each prompt names its target text between its first
    pair of double quotes. Blank lines are skipped. A line without a usable quoted text raises
    `OCRPromptError` naming the file and the line number.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = data[: exc.start].count(b"\n") + 1
        raise OCRPromptError(f"{path}:{bad_line}: not valid UTF-8 ({exc.reason})") from None
    rows = []
    # split("\n"), not splitlines(): line numbers must match editors, whatever Unicode separators a line holds.
    for lineno, line in enumerate(text.split("\n"), start=1):
        prompt = line.strip()
        if not prompt:
            continue
        try:
            target = extract_target(prompt)
        except OCRPromptError as exc:
            raise OCRPromptError(f"{path}:{lineno}: {exc}") from None
        rows.append({"prompt": prompt, "target": target})
    if not rows:
        raise OCRPromptError(f"{path}: no prompts (the file is empty or blank)")
    return rows
