"""A run that learns nothing fails: too many steps in a row where every sample's reward failed.

`RewardFailureWatch` wraps the training rewards (anything with ``submit(images, prompts, metadata)``
returning a future of `CombinedScores`) and notes, as each batch's scores arrive, whether any sample got
a total reward. A step may submit several batches (the decoded chunks of a pipelined step); the trainer
calls `check()` after every step, which closes the step: it failed if none of its batches scored a sample.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

from ..errors import NothingLearnedError


class RewardFailureWatch:
    """Delegates to ``rewards``; `check` raises after ``max_steps`` fully failed steps in a row (0: never)."""

    def __init__(self, rewards: Any, max_steps: int):
        self.rewards, self.max_steps = rewards, max_steps
        self.in_a_row, self.steps, self.any_scored = 0, 0, False
        self.first: tuple[str, str] | None = None  # (reward name, first failure) of the current streak
        self._lock = threading.Lock()  # batches are observed on the rewards' threads
        self._batches, self._scored = 0, False  # of the step not yet checked

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rewards, name)

    def submit(self, images, prompts, metadata) -> Future:
        """The rewards' future, resolved only after its scores were observed (so `check` sees every batch
        its caller waited for)."""
        inner = self.rewards.submit(images, prompts, metadata)
        outer: Future = Future()

        def relay(done: Future) -> None:
            exc = done.exception()
            if exc is not None:
                outer.set_exception(exc)
                return
            scored = done.result()
            self._observe(scored)
            outer.set_result(scored)

        inner.add_done_callback(relay)
        return outer

    def _observe(self, scored) -> None:
        with self._lock:
            self._batches += 1
            if any(s is not None for s in scored.total) or not scored.total:
                self._scored = True
                return
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
        """Close ``step``; raise `NothingLearnedError` after ``max_steps`` failed steps in a row, or at the
        ``last`` step of a run in which no sample was ever scored."""
        with self._lock:
            if self._batches:
                self.steps += 1
                if self._scored:
                    self.in_a_row, self.first, self.any_scored = 0, None, True
                else:
                    self.in_a_row += 1
            self._batches, self._scored = 0, False
        never = last and self.steps > 0 and not self.any_scored
        if never or (self.max_steps and self.in_a_row >= self.max_steps):
            name, first = self.first or ("?", "?")
            raise NothingLearnedError(
                f"reward {name!r} failed every sample of {self.in_a_row} steps in a row (up to step {step}), so "
                f"nothing is being learned; first failure: {first}. Fix the reward (its kwargs, its server), "
                "or raise grpo.max_failed_reward_steps (0: never stop)")
