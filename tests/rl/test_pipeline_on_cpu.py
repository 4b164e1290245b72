"""The pipelined step (rl/rollout/pipeline.py): same results as the sequential one, order kept, rewards that hang
or live on a reward server."""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from pathlib import Path

import pytest
import torch

from blip3o_rl.rewards import WeightedRewards
from blip3o_rl.rl.config import ConfigError, load_config
from blip3o_rl.rl.rollout.engines import KVCacheEngine, SamplingParams
from blip3o_rl.rl.rollout.pipeline import chunk_slices, generate_and_score
from blip3o_rl.rl.trainer import GRPOTrainer, train

QUIET = ["logging.progress_bar=false", "logging.tensorboard=false", "logging.image_every=0", "eval.eval_every=0",
         "checkpoint.save_final=false"]
SMALL = ["grpo.batch_size=16", "grpo.num_generations=4", "grpo.micro_batch_size=8", "model.build.sft_steps=10"]
SERVER_REWARDS = Path(__file__).resolve().parents[1] / "rewards" / "server_rewards.py"


def test_pipelined_and_sequential_steps_give_identical_rewards_advantages_and_updates(tmp_path):
    rewards = (f"rewards=[{{reward: tiny_layout}}, {{reward: '{SERVER_REWARDS}:grey', name: grey, weight: 0.5, "
               f"timeout_s: 30}}]")
    common = [*SMALL, rewards, "grpo.num_iterations=2", "grpo.beta=0.05", *QUIET]
    runs = {}
    base = None
    for mode, extra in (("sequential", []), ("pipelined", ["rollout.pipeline_rewards=true",
                                                           "rollout.decode_chunk_size=4",
                                                           "rollout.max_pending_chunks=2"])):
        model = [f"model.name_or_path={base}", "model.build={}"] if base else []
        trainer = GRPOTrainer(load_config("demo", [f"output_dir={tmp_path / mode}", *common, *model, *extra]))
        trainer.setup()
        base = base or tmp_path / mode / "base_model"
        metrics = [trainer.step(s) for s in (1, 2, 3)]
        runs[mode] = (metrics, [p.detach().clone() for p in trainer.params])
        trainer.cleanup()
    (seq, seq_params), (pipe, pipe_params) = runs["sequential"], runs["pipelined"]
    for a, b in zip(seq, pipe, strict=True):
        assert a["time/reward_wait"] == pytest.approx(a["time/reward"])  # sequential: all of it waited for
        assert "time/reward_wait" in b
        same = {k: v for k, v in a.items() if not k.startswith("time/")}
        assert same.keys() == {k for k in b if not k.startswith("time/")}
        for k, v in same.items():  # rewards, advantages, loss, KL, grad norm...: bit for bit
            assert v == b[k] or (math.isnan(v) and math.isnan(b[k])), (k, v, b[k])
    for p, q in zip(seq_params, pipe_params, strict=True):
        assert torch.equal(p, q)  # the same updates


def test_chunks_are_scored_in_order_and_none_is_dropped(tiny_policy):
    """Chunks finish out of order (random delays, 4 calls at once); results still come back in row order."""

    class Ids:
        max_concurrent_calls = 4

        def __call__(self, images, prompts, metadata):
            time.sleep(random.uniform(0, 0.05))
            return [float(m["id"]) for m in metadata]

    engine = KVCacheEngine()
    engine.setup(tiny_policy)
    captions = ["red", "green", "blue", "red", "green"]
    g = 2
    meta = [{"id": i} for i in range(len(captions) * g)]
    rewards = WeightedRewards([("ids", 1.0, Ids())])
    gen, scored = generate_and_score(tiny_policy, engine, captions, g, SamplingParams(), list(range(5)), rewards,
                                     [c for c in captions for _ in range(g)], meta, decode_chunk_size=2,
                                     pipelined=True, max_pending=2)
    assert scored.total == [float(i) for i in range(10)] and len(gen.images) == 10
    seq_gen, seq = generate_and_score(tiny_policy, engine, captions, g, SamplingParams(), list(range(5)), rewards,
                                      [c for c in captions for _ in range(g)], meta)
    assert seq.total == scored.total
    assert [im.tobytes() for im in seq_gen.images] == [im.tobytes() for im in gen.images]
    assert gen.timings["time/reward_wait"] <= gen.timings["time/reward"] + 1e-6


def test_chunk_sizes_must_keep_groups_whole():
    assert chunk_slices(8, None, 4) == [slice(0, 8)]
    assert chunk_slices(12, 8, 4) == [slice(0, 8), slice(8, 12)]
    with pytest.raises(ValueError, match="splits a group"):
        chunk_slices(8, 6, 4)
    with pytest.raises(ConfigError, match=r"rollout\.decode_chunk_size: must be a positive multiple"):
        load_config("demo", ["rollout.decode_chunk_size=12"])


HANG = """
import threading
calls = []

def sometimes_hangs(images, prompts, metadata):
    calls.append(len(images))
    if len(calls) % 2 == 0:  # every second call hangs (for a while: the test must not leave it forever)
        threading.Event().wait(4)
    return [0.5] * len(images)
"""


def test_training_with_a_remote_reward_and_one_that_hangs_goes_on(tmp_path, reward_server, caplog):
    """Two rewards by weights (tiny_layout in process, grey on a reward server) and a third that hangs on
    every second call: those calls' samples are excluded and counted, every step trains."""
    server = reward_server(f"{SERVER_REWARDS}:grey")
    hang = tmp_path / "hang.py"
    hang.write_text(HANG)
    rewards = (f"rewards=[{{reward: tiny_layout, weight: 1.0}}, {{reward: 'remote:{server.url}', name: grey, "
               f"weight: 0.5, kwargs: {{batch_size: 4, max_concurrency: 2}}}}, "
               f"{{reward: '{hang}:sometimes_hangs', name: hang, weight: 0.1, timeout_s: 1.0}}]")
    out = tmp_path / "run"
    cfg = load_config("demo", [f"output_dir={out}", "max_steps=3", *SMALL, rewards, "rollout.pipeline_rewards=true",
                               "rollout.decode_chunk_size=8", *QUIET])
    with caplog.at_level(logging.WARNING):
        train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in rows] == [1, 2, 3]  # training went on
    for m in rows:  # each step: 2 chunks of 8, the second call of each pair hangs
        assert m["reward/hang/failed"] == 8 and m["samples/excluded"] == 8
        assert m["reward/grey/failed"] == 0 and 0 <= m["reward/grey/mean"] <= 1
        assert math.isfinite(m["loss"]) and math.isfinite(m["reward/mean"])
    assert "timed out after 1 s" in caplog.text and "reward 'hang' failed on 8 of 16 samples" in caplog.text
    # the hung calls end on their own (4 s): wait, so no thread outlives the test by much
    deadline = time.monotonic() + 10
    while any(t.name == "reward-hang" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.1)
