"""The GenEval training reward, registered as ``"geneval"``.

``load_reward("geneval", score="partial", detector=..., clip=...)``. Each sample's metadata dict is
its GenEval metadata row (``tag``, ``include``, optional ``exclude``); the trainer's prompt files keep
``prompt`` apart from the metadata, so the prompt text passed in fills a missing ``prompt`` field. The
prompt text is never parsed: the requirements come from the metadata alone. ``score`` picks the number trained on:

- ``"partial"`` (default): the reference reward server's partial credit used by Flow-GRPO and
  BLIP3o-NEXT, quirks included (range [-14, 1]; see `blip3o_rl.rewards.geneval.rules`);
- ``"bounded"``: the quirk-free partial credit in [0, 1], equal to 1 exactly when GenEval says correct;
- ``"correct"``: the official GenEval verdict as 0/1.

Details per sample: ``correct``, ``strict_correct``, ``partial``, ``bounded``, ``reason``, ``tag``,
``detector`` (backend label: the transformers Mask2Former weights are not GenEval's mmdet weights)
and ``detections`` (kept objects per class). A sample whose metadata is invalid or whose detection
raised scores ``None`` with the reason in ``error``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from ..base import RewardOutput
from .scorer import GenEvalScorer, build_scorer

SCORES = ("partial", "bounded", "correct")


class GenEvalReward:
    """GenEval prompt-alignment reward; keyword arguments other than ``score`` go to `build_scorer`."""

    def __init__(self, score: str = "partial", *, scorer: GenEvalScorer | None = None, **scorer_kwargs: Any):
        if score not in SCORES:
            raise ValueError(f"unknown GenEval score {score!r} (one of {', '.join(SCORES)})")
        if scorer is not None and scorer_kwargs:
            raise ValueError(f"pass either a scorer or options to build one, not both (got {sorted(scorer_kwargs)})")
        self.score = score
        self.scorer = scorer or build_scorer(**scorer_kwargs)

    def __call__(
        self, images: Sequence[Image.Image], prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> RewardOutput:
        if not len(images) == len(prompts) == len(metadata):
            raise ValueError(f"GenEval reward got {len(images)} images, {len(prompts)} prompts, {len(metadata)} metadata")
        rows = [m if "prompt" in m else {**m, "prompt": p} for m, p in zip(metadata, prompts, strict=True)]
        results = self.scorer.score(images, rows)
        scores: list[float | None] = []
        for result in results:
            if "error" in result:
                scores.append(None)
            else:
                scores.append(float(result[self.score]))
        return RewardOutput(scores=scores, details=results)
