"""``blip3o-rl bench step``: both modes in one run, same rewards, the stage table and the JSON summary."""

import json

from blip3o_rl.scripts.cli import main


def test_bench_step_runs_both_modes_with_the_same_rewards(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "step", "demo", "model.build.sft_steps=5", "grpo.batch_size=16", "grpo.num_generations=4",
               "--steps", "2", "--warmup", "1", "--chunk-size", "4", "--out-dir", str(tmp_path / "runs"),
               "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "| pipelined |" in text and "| sequential |" in text and "reward mismatches: 0" in text
    summary = json.loads(out.read_text())
    assert summary["reward_mismatches"] == 0 and summary["decode_chunk_size"] == 4
    for mode in ("pipelined", "sequential"):
        r = summary["modes"][mode]
        assert r["images_per_s"] > 0 and 0.0 <= r["reward_hidden_fraction"] <= 1.0
        assert {"rollout", "decode", "reward", "reward_wait", "update", "step"} <= set(r["mean_stage_s"])
    assert summary["modes"]["sequential"]["reward_hidden_fraction"] == 0.0
    assert summary["paired_step_diff_s"]["of"] == 2
