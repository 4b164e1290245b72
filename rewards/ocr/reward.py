"""`OCRReward`: the Flow-GRPO text-rendering reward as a batch reward (registered as ``"ocr"``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from ..base import RewardOutput
from .engines import get_ocr_engine
from .metric import OCRPromptError, extract_target, recognized_text, text_reward


class OCRReward:
    """Scores how well each image renders the double-quoted text of its prompt (see `ocr_reward`).

    ``load_reward("ocr", engine="rapidocr" | "paddleocr" | "paddleocr2", **engine_kwargs)`` builds it; the engine
    is created once per process and configuration (`get_ocr_engine`) and ``engine_kwargs`` go to it
    (e.g. ``num_workers``, ``det_limit_side_len``).

    A sample gets ``None`` (never 0) when its prompt has no quoted text or the engine fails on its
    image; ``details[i]["error"]`` says why. Every details dict records the target, the engine, its
    version and its model names; scored samples add the recognised text and the raw
    ``(text, confidence)`` lines.
    """

    def __init__(self, engine: str = "rapidocr", **engine_kwargs: Any):
        self.engine = get_ocr_engine(engine, **engine_kwargs)
        # Calls WeightedRewards may overlap (chunks of a pipelined step): what the engine allows.
        self.max_concurrent_calls = int(getattr(self.engine, "max_concurrent_calls", 1))
        info = self.engine.describe()
        self._identity = {
            "engine": info["engine"],
            "engine_version": info["version"],
            "models": info["models"],
        }

    def __call__(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        metadata: Sequence[dict[str, Any]] | None = None,
    ) -> RewardOutput:
        if len(images) != len(prompts):
            raise ValueError(f"OCR reward got {len(images)} images but {len(prompts)} prompts")
        scores: list[float | None] = [None] * len(images)
        details: list[dict[str, Any]] = [
            {**self._identity, "models": dict(self._identity["models"])} for _ in images
        ]
        targets: dict[int, str] = {}
        for i, prompt in enumerate(prompts):
            try:
                targets[i] = extract_target(prompt)
            except OCRPromptError as exc:
                details[i]["error"] = str(exc)
        todo = sorted(targets)
        results = self.engine.read_batch([images[i] for i in todo])
        for i, lines in zip(todo, results, strict=True):
            details[i]["target"] = targets[i]
            if isinstance(lines, Exception):
                details[i]["error"] = f"OCR failed: {type(lines).__name__}: {lines}"
                continue
            details[i]["recognized"] = recognized_text(lines, sep=" ")
            details[i]["lines"] = [[text, confidence] for text, confidence in lines]
            scores[i] = text_reward(targets[i], lines)
        return RewardOutput(scores=scores, details=details)
