"""The finite-update guard: a non-finite loss or gradient never reaches the weights or the optimizer."""

import copy
import logging
import math

import pytest
import torch
from transformers import get_scheduler

from blip3o_rl.rl.run.guard import FiniteUpdateGuard, NonFiniteUpdateError, nonfinite_cause


def _setup():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = get_scheduler("cosine", opt, num_warmup_steps=0, num_training_steps=10)
    return model, opt, sched


def _backward(model, scale=1.0):
    loss = model(torch.ones(2, 4)).sum() * scale
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf)
    return float(loss.detach()), float(norm)


def _state(model, opt, sched):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), copy.deepcopy(sched.state_dict())


def _assert_same(a, b):
    weights_a, opt_a, sched_a = a
    weights_b, opt_b, sched_b = b
    for k in weights_a:
        assert torch.equal(weights_a[k], weights_b[k]), k
    drop_lr = [{k: v for k, v in g.items() if k not in ("lr", "initial_lr")} for g in opt_a["param_groups"]]
    assert drop_lr == [{k: v for k, v in g.items() if k not in ("lr", "initial_lr")} for g in opt_b["param_groups"]]
    for i, st in opt_a["state"].items():
        for k, v in st.items():
            assert torch.equal(v, opt_b["state"][i][k]), (i, k)
    assert sched_b["last_epoch"] == sched_a["last_epoch"] + 1  # the LR schedule counts the attempted update


@pytest.mark.parametrize("bad", ["nan_loss", "inf_grad"])
def test_a_nonfinite_update_leaves_weights_and_optimizer_untouched_and_steps_the_schedule(bad, caplog):
    model, opt, sched = _setup()
    guard = FiniteUpdateGuard(max_consecutive=3)
    assert guard.step(opt, sched, *_backward(model))  # one real step: Adam moments and LR have moved
    before = _state(model, opt, sched)

    if bad == "nan_loss":
        loss, norm = _backward(model, scale=math.nan)  # NaN loss (and NaN gradients)
    else:
        loss, _ = _backward(model)
        model.weight.grad[0, 0] = math.inf  # a finite loss with an infinite gradient
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
    with caplog.at_level(logging.WARNING, logger="blip3o_rl.rl.run.guard"):
        assert guard.step(opt, sched, loss, norm) is False
    _assert_same(before, _state(model, opt, sched))
    assert all(p.grad is None for p in model.parameters())  # cleared for the next update
    assert guard.total_skipped == 1 and guard.consecutive == 1
    cause = "loss is nan" if bad == "nan_loss" else "gradient norm is inf"
    assert cause in caplog.text

    assert guard.step(opt, sched, *_backward(model))  # a finite update resets the streak
    assert guard.consecutive == 0 and guard.total_skipped == 1


def test_consecutive_nonfinite_updates_stop_the_run():
    _model, opt, sched = _setup()
    guard = FiniteUpdateGuard(max_consecutive=2)
    assert not guard.step(opt, sched, math.nan, 1.0)
    with pytest.raises(NonFiniteUpdateError, match=r"2 optimizer updates in a row.*max_nonfinite_steps=2"):
        guard.step(opt, sched, 1.0, math.inf)
    assert sched.state_dict()["last_epoch"] == 2  # the schedule still counts both attempted updates


def test_ranks_agree_to_skip():
    """A finite update on this rank is skipped when another rank's is not (``agree`` is the all-reduce)."""
    model, opt, sched = _setup()
    guard = FiniteUpdateGuard(max_consecutive=3)
    before = copy.deepcopy(model.state_dict())
    assert guard.step(opt, sched, *_backward(model), agree=lambda finite: False) is False
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert guard.step(opt, sched, *_backward(model), agree=lambda finite: finite)


def test_causes():
    assert nonfinite_cause(1.0, 2.0) is None
    assert nonfinite_cause(math.nan, math.inf) == "loss is nan, gradient norm is inf"
    assert nonfinite_cause(-math.inf, 0.0) == "loss is -inf"
