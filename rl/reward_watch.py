"""A run that learns nothing fails: too many steps in a row where every sample's reward failed.

`RewardFailureWatch` wraps the training rewards (anything with ``submit(images, prompts, metadata)``
returning a future of `CombinedScores`) and counts, as each batch's scores arrive, the batches in
which no sample got a total reward. The trainer calls `check()` after every step.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from .errors import NothingLearnedError


class RewardFailureWatch:
    """Delegates to ``rewards``; `check` raises after ``max_steps`` fully failed batches in a row (0: never)."""

    def __init__(self, rewards: Any, max_steps: int):
        self.rewards, self.max_steps = rewards, max_steps
        self.in_a_row, self.batches, self.any_scored = 0, 0, False
        self.first: tuple[str, str] | None = None  # (reward name, first failure) of the current streak

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rewards, name)

    def submit(self, images, prompts, metadata) -> Future:
        future = self.rewards.submit(images, prompts, metadata)
        future.add_done_callback(self._observe)
        return future

    def _observe(self, future: Future) -> None:
        if future.exception() is not None:
            return
        scored = future.result()
        self.batches += 1
        if any(s is not None for s in scored.total) or not scored.total:
            self.in_a_row, self.first, self.any_scored = 0, None, True
            return
        self.in_a_row += 1
        if self.first is None:
            for name, out in scored.outputs.items():
                failed = [d for s, d in zip(out.scores, out.details, strict=True) if s is None]
                if len(failed) == len(out.scores):
                    detail = failed[0].get("error", failed[0]) if isinstance(failed[0], dict) else failed[0]
                    self.first = (name, str(detail))
                    break
            else:
                self.first = ("(combined)", "every sample failed at least one of the rewards")

    def check(self, step: int, last: bool = False) -> None:
        """Raise `NothingLearnedError` after ``max_steps`` failed batches in a row, or at the ``last`` step
        of a run in which no sample was ever scored."""
        never = last and self.batches > 0 and not self.any_scored
        if never or (self.max_steps and self.in_a_row >= self.max_steps):
            name, first = self.first or ("?", "?")
            raise NothingLearnedError(
                f"reward {name!r} failed every sample of {self.in_a_row} steps in a row (up to step {step}), so "
                f"nothing is being learned; first failure: {first}. Fix the reward (its kwargs, its server), "
                "or raise grpo.max_failed_reward_steps (0: never stop)")
