"""``rollout.engine=vllm`` where vLLM is not installed (the project venv): the run stops before training with one
line naming the engine, the reason and what to use instead. (`tests/rl/test_vllm_blip3o_next_on_cpu.py` covers
the models vLLM is installed but cannot run, in the vLLM venv.)"""

import importlib.util

import pytest

from blip3o_rl.scripts.cli import main

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")


def test_missing_vllm_is_one_line_before_training(tiny_blip3o_next, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n")
    out, engine = tmp_path / "run", "vllm"
    code = main(["train", "blip3o_next_geneval_lora_1gpu", f"model.name_or_path={tiny_blip3o_next}", f"output_dir={out}",
            f"data.train_file={prompts}", f"rollout.engine={engine}", "model.dtype=float32", "grpo.num_generations=2",
            "grpo.batch_size=2", "grpo.micro_batch_size=2", "logging.progress_bar=false"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: rollout.engine={engine} needs vLLM"), lines
    assert "pip install 'blip3o-rl[vllm]'" in lines[0] and "make vllm-venv" in lines[0]
    assert "rollout.engine=static / kv_cache" in lines[0] and "Traceback" not in err
    assert not (out / "metrics.jsonl").exists()
