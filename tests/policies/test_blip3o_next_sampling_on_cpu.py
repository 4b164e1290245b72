"""The official sampler's values from a checkpoint folder (generation_config.json, else transformers' top-k 50)."""

from __future__ import annotations

import json
import shutil

import pytest

from blip3o_rl.policies.blip3o_next import Blip3oNextPolicy
from blip3o_rl.policies.blip3o_next.sampling import INFERENCE, checkpoint_sampling
from blip3o_rl.rl.config import load_config
from blip3o_rl.rl.presets import eval_sampling, rollout_sampling
from blip3o_rl.rl.rollout.engines import SamplingParams


def test_a_file_without_sampling_keys_gives_transformers_top_k_50(tiny_blip3o_next):
    raw = json.loads((tiny_blip3o_next / "generation_config.json").read_text())
    assert not {"top_k", "top_p", "temperature"} & set(raw)
    values = Blip3oNextPolicy.from_pretrained(tiny_blip3o_next).checkpoint_sampling
    assert (values.top_k, values.top_p, values.temperature) == (50, 1.0, 1.0)
    assert "no sampling keys" in values.source and "top-k 50" in values.source


def test_qwen3_sampling_keys_and_missing_file(tmp_path, tiny_blip3o_next):
    folder = tmp_path / "ckpt"
    (folder).mkdir()
    (folder / "generation_config.json").write_text(json.dumps({"do_sample": True, "top_k": 20, "top_p": 0.95,
                                                               "temperature": 0.6}))
    values = checkpoint_sampling(folder)
    assert (values.top_k, values.top_p, values.temperature) == (20, 0.95, 0.6)
    (folder / "generation_config.json").unlink()
    assert (checkpoint_sampling(folder).top_k, checkpoint_sampling(folder).top_p) == (50, 1.0)
    (folder / "generation_config.json").write_text(json.dumps({"top_k": None}))
    assert checkpoint_sampling(folder).top_k == 0  # explicitly disabled, as in transformers


def test_recipes_resolve_to_the_official_sampler_and_inference_eval(tmp_path, tiny_blip3o_next):
    folder = tmp_path / "qwen3_keys"
    shutil.copytree(tiny_blip3o_next, folder)
    (folder / "generation_config.json").write_text(json.dumps({"top_k": 20, "top_p": 0.95, "temperature": 0.6}))
    cfg = load_config("blip3o_next_ocr", [f"model.name_or_path={folder}"], check_inputs=False)  # no train file here
    for path, expected in ((tiny_blip3o_next, SamplingParams(1.0, 50, 1.0)), (folder, SamplingParams(1.0, 20, 0.95))):
        policy = Blip3oNextPolicy.from_pretrained(path)
        params, how = rollout_sampling(cfg.rollout, policy)
        assert params == expected and "checkpoint" in how  # the recipe's temperature 1.0, as the official call
        ev, ev_how = eval_sampling(cfg.eval, policy, params)
        assert ev == SamplingParams(INFERENCE.temperature, 1200, 0.95) and "inference" in ev_how


def test_tiny_demo_keeps_its_own_sampling(tiny_policy):
    cfg = load_config("demo")
    params, _ = rollout_sampling(cfg.rollout, tiny_policy)
    assert params == SamplingParams(1.0, 0, 1.0)
    assert eval_sampling(cfg.eval, tiny_policy, params)[0] is params  # eval samples like training (unchanged)
    with pytest.raises(ValueError, match="checkpoint_sampling"):
        rollout_sampling(load_config("demo", ["rollout.sampling_from=checkpoint"]).rollout, tiny_policy)
