"""The `blip3o-rl` command as a user runs it (a subprocess of the installed package)."""

import json

import pytest

FAST = ["max_steps=3", "model.build.sft_steps=5", "eval.eval_every=2", "logging.image_every=2",
        "checkpoint.save_every=2", "grpo.batch_size=16", "grpo.num_generations=4", "logging.progress_bar=false"]


def test_train_demo_writes_every_artefact_and_resumes(cli, tmp_path):
    out = tmp_path / "run"
    r = cli("train", "demo", f"output_dir={out}", *FAST, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "mean reward, first fifth of steps" in r.stdout and "before ->" in r.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in rows] == [0, 1, 2, 3]
    assert all("reward/mean" in m and "time/rollout" in m for m in rows[1:])
    for path in ("reward_curve.png", "summary.json", "config.yaml", "samples/step_000002.png",
                 "checkpoints/step_000002/weights.safetensors", "checkpoints/step_000003/optimizer.pt",
                 "base_model/model.safetensors"):
        assert (out / path).is_file(), path
    assert any((out / "tensorboard").iterdir())

    # continue the finished run for two more steps
    r = cli("train", "demo", f"output_dir={out}", *FAST[1:], "max_steps=5", "--resume")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in rows] == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "demo", "grpo.betta=1"], "unknown key 'grpo.betta'"),
        (["train", "demo", "grpo.batch_size=7"], "one must divide the other"),
        (["train", "no_such_recipe"], "no recipe 'no_such_recipe'"),
        (["train", "demo", "data.train_file=missing.jsonl"], "missing.jsonl does not exist"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(cli, tmp_path, args, message):
    r = cli(*args, f"output_dir={tmp_path / 'o'}", cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_config_prints_the_resolved_recipe(cli):
    r = cli("config", "demo", "grpo.beta=0.02")
    assert r.returncode == 0
    assert "beta: 0.02" in r.stdout
