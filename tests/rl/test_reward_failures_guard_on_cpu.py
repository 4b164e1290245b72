"""The reward-failure guard counts steps, however many chunks (pipelined scoring) a step's scores came in,
and reads the scores the step was given; a broken reward future reaches the caller."""

from concurrent.futures import Future

import pytest

from blip3o_rl.rewards import CombinedScores, WeightedRewards
from blip3o_rl.rewards.base import RewardOutput
from blip3o_rl.rl.errors import NothingLearnedError
from blip3o_rl.rl.rollout.pipeline import Chunk, PipelinedScoring, SequentialScoring
from blip3o_rl.rl.run.guards.reward_failures import RewardFailureGuard


class Switch:
    """A reward that scores 1.0, or fails every sample while ``down``."""

    def __init__(self):
        self.down = True

    def __call__(self, images, prompts, metadata):
        if self.down:
            return RewardOutput([None] * len(images), [{"error": "server down"}] * len(images))
        return RewardOutput([1.0] * len(images))


def _step(rewards, chunks, scoring=None):
    """One step's scores: ``chunks`` chunks of 2 samples, scored as the generation driver scores them."""
    return (scoring or PipelinedScoring(max_pending=2)).score(
        (Chunk([None, None], ["p", "p"], [{}, {}]) for _ in range(chunks)), rewards, {})


def test_failed_steps_are_counted_per_step_not_per_chunk():
    reward = Switch()
    rewards = WeightedRewards([("remote", 1.0, reward)])
    guard = RewardFailureGuard(max_steps=3)
    for step in (1, 2):  # 4 failed chunks per step: still only 2 failed steps
        scored = _step(rewards, 4)
        assert len(scored.total) == 8
        guard.record(scored)
        guard.check(step)
    assert guard.in_a_row == 2
    reward.down = False
    scored_chunk = _step(rewards, 1)
    reward.down = True
    guard.record(CombinedScores.concat([scored_chunk, _step(rewards, 3)]))  # one scored chunk: the step scored
    guard.check(3)
    assert guard.in_a_row == 0 and guard.first is None
    for step in (4, 5):
        guard.record(_step(rewards, 2, SequentialScoring()))
        guard.check(step)
    guard.record(_step(rewards, 2))
    with pytest.raises(NothingLearnedError, match=r"reward 'remote' failed every sample of 3 steps in a row "
                                                  r"\(up to step 6\), .*first failure: server down"):
        guard.check(6)


def test_a_step_without_scores_is_not_counted():
    guard = RewardFailureGuard(max_steps=1)
    guard.check(1)  # nothing recorded (e.g. trainer.step not run): no failed step
    assert guard.steps == 0 and guard.in_a_row == 0


def test_a_run_that_never_scored_fails_at_its_last_step():
    rewards = WeightedRewards([("r", 1.0, Switch())])
    guard = RewardFailureGuard(max_steps=0)
    guard.record(_step(rewards, 2))
    guard.check(1)  # max_steps=0: never stops early
    guard.record(_step(rewards, 2))
    with pytest.raises(NothingLearnedError, match="failed every sample of 2 steps"):
        guard.check(2, last=True)


def test_a_raising_reward_fails_its_samples_and_a_broken_future_reaches_the_caller():
    class Broken:
        def __call__(self, images, prompts, metadata):
            raise RuntimeError("boom")

    guard = RewardFailureGuard(max_steps=1)
    scored = _step(WeightedRewards([("b", 1.0, Broken())]), 1)
    assert scored.total == [None, None]  # reported, samples excluded
    guard.record(scored)
    with pytest.raises(NothingLearnedError, match="first failure: RuntimeError: boom"):
        guard.check(1)

    class Failing:  # rewards whose future itself fails (not a per-sample failure): the caller sees the error
        def submit(self, images, prompts, metadata):
            f = Future()
            f.set_exception(ConnectionResetError("lost"))
            return f

    for scoring in (PipelinedScoring(), SequentialScoring()):
        with pytest.raises(ConnectionResetError, match="lost"):
            _step(Failing(), 2, scoring)
