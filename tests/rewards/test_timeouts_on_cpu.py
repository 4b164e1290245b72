"""Reward timeouts (in-process rewards included) and the asynchronous `WeightedRewards.submit`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest
from PIL import Image

from blip3o_rl.rewards import WeightedRewards, score_batch
from blip3o_rl.rewards import base as reward_base

IMAGES = [Image.new("RGB", (4, 4), (i, i, i)) for i in range(4)]
PROMPTS, META = ["p"] * 4, [{}] * 4


def ones(images, prompts, metadata):
    return [1.0] * len(images)


def test_a_hung_call_fails_its_samples_with_the_reason_and_returns_in_time(caplog):
    release = threading.Event()

    def hangs(images, prompts, metadata):
        release.wait(60)
        return [1.0] * len(images)

    start = time.perf_counter()
    with caplog.at_level("ERROR"):
        out = score_batch(hangs, "hangs", IMAGES, PROMPTS, META, timeout_s=0.3)
    assert time.perf_counter() - start < 5
    assert out.scores == [None] * 4  # failed, never 0
    assert "timed out after 0.3 s" in out.details[0]["error"] and "timed out" in caplog.text
    release.set()
    assert score_batch(ones, "ones", IMAGES, PROMPTS, META, timeout_s=5).scores == [1.0] * 4
    boom = score_batch(lambda *a: 1 / 0, "boom", IMAGES, PROMPTS, META, timeout_s=5)
    assert boom.scores == [None] * 4 and "ZeroDivisionError" in boom.details[0]["error"]


def test_a_reward_with_too_many_hung_calls_is_not_called_again(monkeypatch):
    monkeypatch.setattr(reward_base, "MAX_HUNG_CALLS", 2)
    release, calls = threading.Event(), []

    def hangs(images, prompts, metadata):
        calls.append(1)
        release.wait(60)
        return [1.0] * len(images)

    for _ in range(3):
        out = score_batch(hangs, "hangs", IMAGES, PROMPTS, META, timeout_s=0.1)
        assert out.scores == [None] * 4
    assert len(calls) == 2 and "still running past" in out.details[0]["error"]
    release.set()
    deadline = time.monotonic() + 10
    while reward_base._HUNG.count(hangs) and time.monotonic() < deadline:  # the hung calls return
        time.sleep(0.02)
    assert score_batch(hangs, "hangs", IMAGES, PROMPTS, META, timeout_s=5).scores == [1.0] * 4


def test_submit_returns_at_once_and_rewards_score_in_parallel():
    started = {"a": threading.Event(), "b": threading.Event()}
    release = threading.Event()

    def waiting(name):
        def reward(images, prompts, metadata):
            started[name].set()
            assert release.wait(30)
            return [1.0] * len(images)
        return reward

    rewards = WeightedRewards([("a", 1.0, waiting("a")), ("b", 2.0, waiting("b"), 30.0)])
    future = rewards.submit(IMAGES, PROMPTS, META)
    assert not future.done()  # the caller goes on while the rewards score
    assert started["a"].wait(10) and started["b"].wait(10)  # both at once, each in its own thread
    release.set()
    combined = future.result(timeout=30)
    assert combined.total == [3.0] * 4 and combined.finished >= combined.started
    rewards.close()


def test_a_hung_reward_does_not_block_the_process_exit(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(textwrap.dedent("""
        import threading
        from PIL import Image
        from blip3o_rl.rewards import WeightedRewards

        def hangs(images, prompts, metadata):
            threading.Event().wait()  # forever
        def forever_without_timeout(images, prompts, metadata):
            threading.Event().wait()

        rewards = WeightedRewards([("hangs", 1.0, hangs, 0.5), ("ones", 1.0, lambda i, p, m: [1.0] * len(i))])
        out = rewards(images=[Image.new("RGB", (2, 2))], prompts=["p"], metadata=[{}])
        print("scores", out.total, out.outputs["hangs"].details[0]["error"], flush=True)
        stuck = WeightedRewards([("stuck", 1.0, forever_without_timeout)])
        stuck.submit([Image.new("RGB", (2, 2))], ["p"], [{}])  # never finishes: its thread is a daemon
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "scores [None] reward timeout: timed out after 0.5 s" in proc.stdout


def test_bad_timeouts_are_refused():
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        WeightedRewards([("a", 1.0, ones, 0)])
    from blip3o_rl.rl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"rewards.0.timeout_s: must be > 0"):
        load_config("demo", ["rewards.0.timeout_s=-1"])
    assert load_config("demo", ["rewards.0.timeout_s=2.5"]).rewards[0].timeout_s == 2.5
