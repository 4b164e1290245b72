"""The Janus-Pro recipes sample as Janus-Pro's official generation (temperature 1, untruncated, CFG from the
folder) with an engine that has CFG, and train what they say."""

from __future__ import annotations

from pathlib import Path

import pytest

from blip3o_rl.rl.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(("recipe", "reward", "steps"), [("janus_pro_geneval", "geneval", 400), ("janus_pro_ocr", "ocr", 900)])
def test_janus_pro_recipes(recipe, reward, steps):
    cfg = load_config(str(CONFIGS / f"{recipe}.yaml"), check_inputs=False)
    assert cfg.model.policy == "janus" and cfg.model.finetune == "full" and cfg.max_steps == steps
    r = cfg.rollout
    assert (r.engine, r.sampling_from, r.temperature, r.top_k, r.top_p) == ("static", "config", 1.0, 0, 1.0)
    assert "guidance_scale" not in cfg.model.policy_kwargs  # the folder's generation_config.json (5)
    assert cfg.model.policy_kwargs["detach_uncond"] is False
    assert [x.reward for x in cfg.rewards] == [reward] and cfg.eval.sampling == "rollout"
    assert "--config_file configs/accelerate/zero3.yaml" in (CONFIGS / f"{recipe}.yaml").read_text()
