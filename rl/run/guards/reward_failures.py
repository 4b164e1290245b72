"""The reward-failure guard: a run that learns nothing fails, after too many steps in a row in which every
sample's reward failed.

The trainer `record`s each step's scores (all of the step's samples on this process, however many
chunks the generation driver scored them in) and `check`s after the step, which closes it: the step
failed if no sample got a total reward. The run agrees on the verdict across processes
(rl/run/lifecycle.py): one process's stop stops every process.
"""

from __future__ import annotations

from ....rewards import CombinedScores
from ...errors import NothingLearnedError


class RewardFailureGuard:
    """`check` raises after ``max_steps`` fully failed steps in a row (0: never), or at the last step of a
    run that never scored a sample."""

    def __init__(self, max_steps: int):
        self.max_steps = max_steps
        self.in_a_row, self.steps, self.any_scored = 0, 0, False
        self.first: tuple[str, str] | None = None  # (reward name, first failure) of the current streak
        self._recorded, self._scored = False, False  # of the step not yet checked

    def record(self, scored: CombinedScores) -> None:
        """One step's scores (``[B]``; None: failed)."""
        self._recorded = True
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
        if self._recorded:
            self.steps += 1
            if self._scored:
                self.in_a_row, self.first, self.any_scored = 0, None, True
            else:
                self.in_a_row += 1
        self._recorded, self._scored = False, False
        never = last and self.steps > 0 and not self.any_scored
        if never or (self.max_steps and self.in_a_row >= self.max_steps):
            name, first = self.first or ("?", "?")
            raise NothingLearnedError(
                f"reward {name!r} failed every sample of {self.in_a_row} steps in a row (up to step {step}), so "
                f"nothing is being learned; first failure: {first}. Fix the reward (its kwargs, its server), "
                "or raise grpo.max_failed_reward_steps (0: never stop)")
