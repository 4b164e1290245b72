"""The packaged BLIP3o-NEXT recipes carry the official runs' settings (REFERENCE §2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from blip3o_rl.rl.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(
    ("recipe", "finetune", "lr", "steps", "reward"),
    [
        ("blip3o_next_geneval", "full", 5e-6, 400, "geneval"),
        ("blip3o_next_ocr", "full", 1e-6, 900, "ocr"),
        ("blip3o_next_geneval_lora_1gpu", "lora", None, 400, "geneval"),
        ("blip3o_next_geneval_lora_8gpu", "lora", None, 400, "geneval"),
    ],
)
def test_recipes_follow_the_official_runs(recipe, finetune, lr, steps, reward):
    cfg = load_config(str(CONFIGS / f"{recipe}.yaml"), check_inputs=False)  # their data files are the user's
    g, o = cfg.grpo, cfg.optim
    assert cfg.model.policy == "blip3o_next" and cfg.model.finetune == finetune
    assert cfg.model.name_or_path is None  # the user's local checkpoint, given on the command line
    assert (g.num_generations, g.beta, g.epsilon, g.loss_type, g.scale_rewards) == (
        16,
        0.001,
        0.2,
        "bnpo",
        "group",
    )
    assert g.num_iterations == 1 and g.batch_size % 16 == 0
    assert (o.lr_scheduler_type, o.warmup_steps) == ("cosine", 0)
    assert cfg.max_steps == steps and [r.reward for r in cfg.rewards] == [reward]
    # The official sampler: generate(do_sample=True, temperature=1.0), top-k/top-p from the checkpoint.
    assert cfg.rollout.sampling_from == "checkpoint" and cfg.rollout.temperature == 1.0
    assert (cfg.rollout.top_k, cfg.rollout.top_p) == (0, 1.0)  # unset: the checkpoint's values apply
    assert cfg.eval.sampling == "inference"  # held-out numbers comparable with published ones
    if recipe == "blip3o_next_ocr":
        # official text run: no max_steps, cosine over TrainingArguments' default 3 epochs
        assert (o.schedule_epochs, o.schedule_steps) == (3, None)
    else:
        assert (o.schedule_epochs, o.schedule_steps) == (None, None)  # cosine over max_steps
    decode = cfg.model.policy_kwargs["decode_settings"]
    assert (decode["num_inference_steps"], decode["guidance_scale"]) == (30, 2.0)
    if finetune == "full":
        assert o.learning_rate == lr and g.batch_size == 16  # one prompt group per GPU
        # float32 master weights (bf16 would round lr-sized updates away); the frozen refiner in bf16
        assert cfg.model.dtype == "float32" and cfg.model.policy_kwargs["decoder_dtype"] == "bfloat16"
    else:
        assert cfg.model.dtype == "bfloat16"


def test_ocr_recipe_lr_horizon_matches_the_official_text_run():
    """TRL: floor(prompts / prompts per step) steps per epoch, x 3 epochs. The released run: 8 GPUs x one
    prompt group of 16 = 8 prompts per step; on ~20K prompts that is 7,500 steps (LR ~97% of peak at 900)."""
    import math

    from blip3o_rl.rl.batch_layout import BatchLayout
    from blip3o_rl.rl.presets import lr_schedule_steps

    cfg = load_config(str(CONFIGS / "blip3o_next_ocr.yaml"), check_inputs=False)
    ranks = 8
    per_step = BatchLayout(cfg.grpo.batch_size, cfg.grpo.num_generations, ranks, 0).prompts_per_step
    assert per_step == 8
    assert lr_schedule_steps(cfg.optim, cfg.max_steps, 20_000, per_step) == 7_500
    assert lr_schedule_steps(cfg.optim, cfg.max_steps, 20_003, per_step) == 3 * (20_003 // 8)  # floor per epoch
    lr_at_900 = 0.5 * (1 + math.cos(math.pi * 900 / 7_500))
    assert lr_at_900 > 0.96
    geneval = load_config(str(CONFIGS / "blip3o_next_geneval.yaml"), check_inputs=False)
    assert lr_schedule_steps(geneval.optim, geneval.max_steps, 50_000, 16) == 400


def test_ocr_recipe_selects_the_official_paddleocr_with_the_offline_rapidocr_variant():
    cfg = load_config(str(CONFIGS / "blip3o_next_ocr.yaml"), check_inputs=False)
    assert cfg.rewards[0].kwargs == {"engine": "paddleocr"}  # PaddleOCR 3.x, as the official text run
    offline = load_config(str(CONFIGS / "blip3o_next_ocr.yaml"), ["rewards.0.kwargs.engine=rapidocr"],
                          check_inputs=False)
    assert offline.rewards[0].kwargs == {"engine": "rapidocr"}
    assert "rewards.0.kwargs.engine=rapidocr" in (CONFIGS / "blip3o_next_ocr.yaml").read_text()


@pytest.mark.parametrize(("recipe", "gpus", "images"), [("blip3o_next_geneval", 16, 256), ("blip3o_next_ocr", 32, 512)])
def test_recipes_carry_a_launch_line_at_the_official_scale(recipe, gpus, images):
    import re

    text = (CONFIGS / f"{recipe}.yaml").read_text()
    line = next(x for x in text.splitlines() if f"--num_processes {gpus} " in x)
    assert f"--num_machines {gpus // 8} " in line and f"-m blip3o_rl train {recipe}" in line
    cfg = load_config(str(CONFIGS / f"{recipe}.yaml"), check_inputs=False)
    assert gpus * cfg.grpo.batch_size == images  # grpo.batch_size is per process
    assert re.search(rf"sbatch --nodes {gpus // 8} scripts/slurm/train.sbatch", text.replace("\n#", ""))
