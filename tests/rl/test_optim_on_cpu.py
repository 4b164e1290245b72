"""Optimizer and LR schedule by name: the defaults build exactly what the trainer built before (AdamW,
transformers' get_scheduler); keys the chosen optimizer or schedule would not read fail."""

from __future__ import annotations

import pytest
import torch
from transformers import get_scheduler

from blip3o_rl.policies import can_build, policy_class
from blip3o_rl.registry import ComponentError
from blip3o_rl.rl.config import ConfigError, OptimConfig
from blip3o_rl.rl.weights.optim import build_optimizer, build_scheduler


def _params():
    return [torch.nn.Parameter(torch.ones(3))]


def _lrs(scheduler, n=10):
    out = []
    for _ in range(n):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_default_optimizer_is_adamw_with_the_recipe_settings():
    o = OptimConfig(learning_rate=1e-3, weight_decay=0.1, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6)
    opt = build_optimizer(_params(), o)
    assert type(opt) is torch.optim.AdamW
    g = opt.param_groups[0]
    assert (g["lr"], g["weight_decay"], g["betas"], g["eps"]) == (1e-3, 0.1, (0.8, 0.95), 1e-6)


@pytest.mark.parametrize(("name", "warmup"), [("constant", 0), ("cosine", 0), ("cosine", 3), ("linear", 2)])
def test_schedules_match_transformers_get_scheduler(name, warmup):
    o = OptimConfig(lr_scheduler_type=name, warmup_steps=warmup)
    ours = build_scheduler(build_optimizer(_params(), o), o, num_training_steps=10)
    ref_opt = torch.optim.AdamW(_params(), lr=o.learning_rate)
    ref = get_scheduler(name, ref_opt, num_warmup_steps=warmup, num_training_steps=10)
    assert _lrs(ours) == _lrs(ref)


def test_keys_the_choice_does_not_read_fail():
    with pytest.raises(ConfigError, match=r"optim\.warmup_steps: lr_scheduler_type 'constant' has no warmup"):
        o = OptimConfig(warmup_steps=5)
        build_scheduler(build_optimizer(_params(), o), o, 10)
    with pytest.raises(ConfigError, match=r"optim\.adam_beta1: optimizer 'sgd' takes no betas/eps"):
        build_optimizer(_params(), OptimConfig(optimizer="sgd", adam_beta1=0.5))
    with pytest.raises(ComponentError, match="optimizer 'adamw' takes no argument 'momentum'"):
        build_optimizer(_params(), OptimConfig(optimizer_kwargs={"momentum": 0.9}))


def test_other_optimizers_and_their_kwargs():
    opt = build_optimizer(_params(), OptimConfig(optimizer="sgd", optimizer_kwargs={"momentum": 0.9}))
    assert type(opt) is torch.optim.SGD and opt.param_groups[0]["momentum"] == 0.9
    opt = build_optimizer(_params(), OptimConfig(optimizer="torch.optim:AdamW", optimizer_kwargs={"amsgrad": True}))
    assert opt.param_groups[0]["amsgrad"]


def test_only_policies_with_build_make_their_own_model_folder():
    assert can_build(policy_class("tiny"))
    assert not can_build(policy_class("blip3o_next"))


def test_trainer_asks_for_name_or_path_when_the_policy_cannot_build(tmp_path):
    from blip3o_rl.rl.config import config_from_dict
    from blip3o_rl.rl.trainer import GRPOTrainer

    cfg = config_from_dict({"output_dir": str(tmp_path), "model": {"policy": "blip3o_next"},
                            "rewards": [{"reward": "ocr"}], "data": {"train_file": "x.jsonl"}})
    with pytest.raises(ConfigError, match=r"model\.name_or_path is required: policy 'blip3o_next' cannot build"):
        GRPOTrainer(cfg)._model_path("blip3o_next", "x.jsonl")
