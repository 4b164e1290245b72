"""SIGINT / SIGTERM (issue 12, item 10): finish the step, save, stop; the resumed run equals an uninterrupted one."""

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from blip3o_rl.rl.config import load_config
from blip3o_rl.rl.errors import TrainingStopped
from blip3o_rl.rl.run.signals import StopSignals
from blip3o_rl.rl.trainer import train

TINY = ["model.build.sft_steps=5", "grpo.batch_size=8", "grpo.num_generations=4", "grpo.micro_batch_size=8",
        "eval.eval_every=0", "logging.progress_bar=false", "logging.tensorboard=false", "logging.image_every=0",
        "max_steps=6", "checkpoint.save_every=4", "optim.lr_scheduler_type=cosine"]

# tiny_layout's score, and SIGTERM to this very process on the call named by $SIGTERM_AT_CALL
REWARD = '''
import os, signal
from blip3o_rl.tiny.layout_reward import TinyLayoutReward
_inner, _calls = TinyLayoutReward(), [0]
def reward(images, prompts, metadata):
    _calls[0] += 1
    if str(_calls[0]) == os.environ.get("SIGTERM_AT_CALL"):
        os.kill(os.getpid(), signal.SIGTERM)
    return _inner(images, prompts, metadata)
'''


def test_first_signal_is_recorded_and_the_second_stops_at_once():
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == signal.SIGTERM and stop.name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt, match="second SIGINT: stopped at once"):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_sigterm_saves_and_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    f = tmp_path / "layout.py"
    f.write_text(REWARD)
    common = [*TINY, f"rewards=[{{reward: '{f}:reward'}}]"]
    ref, out = tmp_path / "ref", tmp_path / "stopped"
    train(load_config("demo", [f"output_dir={ref}", *common]))

    monkeypatch.setenv("SIGTERM_AT_CALL", "3")  # during step 3, between checkpoints (save_every=4)
    with pytest.raises(TrainingStopped, match=r"stopped by SIGTERM after step 3; checkpoint saved: .*step_000003"):
        train(load_config("demo", [f"output_dir={out}", *common]))
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert not (out / ".lock").exists()
    monkeypatch.delenv("SIGTERM_AT_CALL")

    train(load_config("demo", [f"output_dir={out}", *common]), resume=True)
    a, b = (load_file(d / "checkpoints/step_000006/weights.safetensors") for d in (ref, out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def rows(d):
        return [{k: v for k, v in json.loads(x).items() if not k.startswith("time/")}
                for x in (d / "metrics.jsonl").read_text().splitlines()]

    assert rows(out) == rows(ref)
