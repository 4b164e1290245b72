"""The over-optimisation guard and the best checkpoint: unit cases, and a tiny-world run whose training
reward is hackable (pays for red everywhere) while the held-out eval reward checks the prompt."""

import json
import math

import pytest

from blip3o_rl.rl.config import ConfigError, GuardSpec, load_config
from blip3o_rl.rl.run.best_checkpoint import BestCheckpoint
from blip3o_rl.rl.run.eval_guard import OverOptimisationGuard
from blip3o_rl.rl.trainer import GRPOTrainer, train

QUIET = ["logging.progress_bar=false", "logging.tensorboard=false", "logging.image_every=0"]


def _feed(guard, rows):
    """rows: (step, train reward or None, eval value or None) -> the guard metrics of each row."""
    out = []
    for step, train_r, eval_v in rows:
        m = {} if train_r is None else {"reward/mean": train_r}
        if eval_v is not None:
            m["eval/layout/mean"] = eval_v
        out.append(guard.observe(step, m))
    return out


def test_guard_triggers_only_when_eval_falls_and_training_rises():
    g = OverOptimisationGuard([GuardSpec("layout", margin=0.1)])
    res = _feed(g, [(0, None, 0.5), (1, 0.2, None), (2, 0.3, 0.6),   # eval best 0.6, train level 0.25
                    (3, 0.4, None), (4, 0.4, 0.55),                  # drop 0.05 <= margin: quiet
                    (5, 0.6, None), (6, 0.8, 0.3)])                  # drop 0.3, train 0.7 > 0.25: triggers
    assert res[2] == {"guard/layout/drop": 0.0, "guard/layout/triggered": 0.0}
    assert res[4]["guard/layout/drop"] == pytest.approx(0.05) and res[4]["guard/layout/triggered"] == 0.0
    assert res[6]["guard/layout/drop"] == pytest.approx(0.3) and res[6]["guard/layout/triggered"] == 1.0
    assert g.stop_reason is None  # stop: false warns only


def test_guard_is_quiet_when_training_falls_too_and_stops_when_asked():
    g = OverOptimisationGuard([GuardSpec("layout", margin=0.1, stop=True)])
    res = _feed(g, [(0, None, 0.6), (1, 0.5, None), (2, 0.5, 0.6), (3, 0.2, None), (4, 0.2, 0.3)])
    assert res[-1]["guard/layout/triggered"] == 0.0 and g.stop_reason is None  # both fell: not hacking
    res = _feed(g, [(5, 0.9, None), (6, 0.9, 0.2)])  # now training rose above its level at the best
    assert res[-1]["guard/layout/triggered"] == 1.0
    assert "eval/layout/mean is 0.2000 at step 6" in g.stop_reason


def test_a_best_before_training_compares_with_the_first_training_level():
    g = OverOptimisationGuard([GuardSpec("layout", margin=0.05)])
    res = _feed(g, [(0, None, 0.8), (1, 0.1, None), (2, 0.1, 0.7), (3, 0.5, None), (4, 0.5, 0.6)])
    assert res[2]["guard/layout/triggered"] == 0.0  # level 0.1 is the reference itself
    assert res[4]["guard/layout/triggered"] == 1.0  # 0.5 > 0.1 while eval is 0.2 below its best


def test_best_checkpoint_keeps_the_best_and_survives_pruning(tmp_path):
    root = tmp_path / "checkpoints"

    def save(step):
        p = root / f"step_{step:06d}"
        p.mkdir(parents=True)
        (p / "weights.safetensors").write_text(f"weights of {step}")
        return p

    best = BestCheckpoint(root, "eval/x/mean")
    assert best.observe(0, {"reward/mean": 1.0}, save) == {}  # no eval metric: nothing
    best.observe(5, {"eval/x/mean": 0.4}, save)
    best.observe(10, {"eval/x/mean": 0.7}, save)
    assert best.observe(15, {"eval/x/mean": 0.5}, save) == {}  # worse: no save
    assert best.observe(20, {"eval/x/mean": math.nan}, save) == {}
    for p in root.glob("step_*"):  # keep_last pruning removes step folders...
        for f in p.iterdir():
            f.unlink()
        p.rmdir()
    assert (root / "best" / "weights.safetensors").read_text() == "weights of 10"  # ...not best/
    assert json.loads((root / "best" / "best.json").read_text())["step"] == 10
    again = BestCheckpoint(root, "eval/x/mean")  # a resumed run compares with the recorded best
    assert again.best == 0.7 and again.best_step == 10
    low = BestCheckpoint(tmp_path / "low", "eval/x/mean", mode="min")
    low.observe(1, {"eval/x/mean": 0.7}, lambda s: None)
    assert low.observe(2, {"eval/x/mean": 0.9}, lambda s: None) == {}


def test_guard_and_best_metric_config_is_checked(tmp_path):
    base = [f"output_dir={tmp_path}", *QUIET]
    with pytest.raises(ConfigError, match=r"eval.guard.0.reward: 'nope' is not an eval reward"):
        load_config("demo", [*base, "eval.guard=[{reward: nope}]"])
    with pytest.raises(ConfigError, match=r"checkpoint.best_metric: 'eval/nope/mean' is not an eval metric"):
        load_config("demo", [*base, "checkpoint.best_metric=eval/nope/mean"])
    with pytest.raises(ConfigError, match=r"eval.guard: needs evaluations"):
        load_config("demo", [*base, "eval.eval_every=0", "eval.guard=[{reward: tiny_layout}]"])
    cfg = load_config("demo", [*base, "eval.guard=[{reward: tiny_layout, margin: 0.1, stop: true}]",
                               "checkpoint.best_metric=eval/tiny_layout/mean"])
    assert cfg.eval.guard == (GuardSpec("tiny_layout", 0.1, True),)


HACKABLE = [
    "max_steps=40", "eval.eval_every=4", "checkpoint.save_every=4", "checkpoint.keep_last=1",
    "rewards=[{reward: tiny_colour, name: red, kwargs: {colour: red}}]",   # pays for red, whatever the prompt
    "eval.rewards=[{reward: tiny_layout, name: layout}]",                   # checks the prompt
    "eval.guard=[{reward: layout, margin: 0.05, stop: true}]",
    "checkpoint.best_metric=eval/layout/mean", *QUIET,
]


def test_a_hackable_reward_triggers_the_guard_and_best_metric_keeps_the_right_checkpoint(tmp_path):
    out = tmp_path / "run"
    cfg = load_config("demo", [f"output_dir={out}", *HACKABLE])
    summary = train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = {m["step"]: m["eval/layout/mean"] for m in rows if "eval/layout/mean" in m}
    last = rows[-1]
    assert last["guard/layout/triggered"] == 1.0, rows
    assert last["step"] < 40 and summary["stopped_by_guard_at_step"] == last["step"]  # stopped early
    train_red = [m["reward/mean"] for m in rows if "reward/mean" in m]
    assert train_red[-1] > train_red[0] + 0.2  # the hack worked on the training reward
    best_step = max(evals, key=lambda s: evals[s])
    record = json.loads((out / "checkpoints" / "best" / "best.json").read_text())
    assert record["step"] == best_step and record["value"] == evals[best_step]
    assert summary["best_checkpoint_step"] == best_step
    # the kept weights are that step's: evaluating them again gives the best value (fixed eval seeds)
    again = GRPOTrainer(load_config("demo", [f"output_dir={out}", *HACKABLE]))
    again.setup(resume=str(out / "checkpoints" / "best"))
    try:
        assert again.start_step == best_step
        assert again.evaluate()["eval/layout/mean"] == pytest.approx(evals[best_step], abs=1e-6)
    finally:
        again.cleanup()
