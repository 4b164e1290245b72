"""The failed-reward stop counts steps, however many batches (pipelined chunks) a step submits, and sees
every batch its caller waited for."""

from concurrent.futures import Future

import pytest

from blip3o_rl.rewards import WeightedRewards
from blip3o_rl.rewards.base import RewardOutput
from blip3o_rl.rl.errors import NothingLearnedError
from blip3o_rl.rl.run.reward_watch import RewardFailureWatch


class Switch:
    """A reward that scores 1.0, or fails every sample while ``down``."""

    def __init__(self):
        self.down = True

    def __call__(self, images, prompts, metadata):
        if self.down:
            return RewardOutput([None] * len(images), [{"error": "server down"}] * len(images))
        return RewardOutput([1.0] * len(images))


def _step(watch, chunks):
    for _ in range(chunks):  # the caller waits for each chunk's scores, as rl/rollout/pipeline.py does
        watch.submit([None, None], ["p", "p"], [{}, {}]).result()


def test_failed_steps_are_counted_per_step_not_per_chunk():
    reward = Switch()
    watch = RewardFailureWatch(WeightedRewards([("remote", 1.0, reward)]), max_steps=3)
    for step in (1, 2):  # 4 failed chunks per step: still only 2 failed steps
        _step(watch, 4)
        watch.check(step)
    assert watch.in_a_row == 2
    reward.down = False
    _step(watch, 1)
    reward.down = True
    _step(watch, 3)  # one scored chunk: the step scored, the streak ends
    watch.check(3)
    assert watch.in_a_row == 0 and watch.first is None
    for step in (4, 5):
        _step(watch, 2)
        watch.check(step)
    _step(watch, 2)
    with pytest.raises(NothingLearnedError, match=r"reward 'remote' failed every sample of 3 steps in a row "
                                                  r"\(up to step 6\), .*first failure: server down"):
        watch.check(6)


def test_a_run_that_never_scored_fails_at_its_last_step():
    watch = RewardFailureWatch(WeightedRewards([("r", 1.0, Switch())]), max_steps=0)
    _step(watch, 2)
    watch.check(1)  # max_steps=0: never stops early
    _step(watch, 2)
    with pytest.raises(NothingLearnedError, match="failed every sample of 2 steps"):
        watch.check(2, last=True)


def test_a_raising_reward_fails_its_samples_and_a_broken_future_reaches_the_caller(caplog):
    class Broken:
        def __call__(self, images, prompts, metadata):
            raise RuntimeError("boom")

    watch = RewardFailureWatch(WeightedRewards([("b", 1.0, Broken())]), max_steps=1)
    assert watch.submit([None], ["p"], [{}]).result(timeout=30).total == [None]  # reported, sample excluded
    with pytest.raises(NothingLearnedError, match="first failure: RuntimeError: boom"):
        watch.check(1)

    class Failing:  # rewards whose future itself fails (not a per-sample failure): the caller sees the error
        def submit(self, images, prompts, metadata):
            f = Future()
            f.set_exception(ConnectionResetError("lost"))
            return f

    with pytest.raises(ConnectionResetError, match="lost"):
        RewardFailureWatch(Failing(), max_steps=1).submit([None], ["p"], [{}]).result(timeout=30)
