"""GRPO on the tiny Janus through the packaged demo recipe (LoRA and full fine-tuning, CFG on), then export.

Each run: 2 steps (rollout under CFG → official VQ decode → a real reward → update); the frozen parts
(VQ-VAE, understanding encoder) untouched; `blip3o-rl export` writes a folder that transformers'
``JanusForConditionalGeneration`` loads and whose CFG-mixed image logits equal the trained policy's.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import JanusForConditionalGeneration

from blip3o_rl.policies import load_policy
from blip3o_rl.rl.config import load_config
from blip3o_rl.rl.trainer import GRPOTrainer
from blip3o_rl.scripts.cli import main

from .janus_official import official_guided_logits

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "demo_janus.yaml"
FROZEN_PREFIXES = ("model.vqmodel.", "model.vision_model.", "model.aligner.")


@pytest.fixture(scope="module", params=["lora", "full"])
def trained(request, tiny_janus, tmp_path_factory):
    mode = request.param
    root = tmp_path_factory.mktemp(f"janus_{mode}")
    overrides = [f"output_dir={root / 'run'}", "max_steps=2", f"model.name_or_path={tiny_janus}", "model.build={}",
                 f"model.finetune={mode}", "grpo.num_generations=2", "grpo.batch_size=4", "grpo.micro_batch_size=2",
                 "grpo.beta=0.01",  # the KL term on the same CFG-mixed distribution (LoRA: adapter off)
                 "optim.learning_rate=1.0e-2", "eval.eval_every=0", "logging.tensorboard=false",
                 "logging.progress_bar=false", "logging.image_every=0", "checkpoint.save_every=2"]
    trainer = GRPOTrainer(load_config(str(RECIPE), overrides))
    trainer.setup()
    try:
        trainer.train()
    finally:
        trainer.cleanup()
    return mode, root / "run", trainer


def test_two_steps_with_finite_losses_and_frozen_parts_untouched(trained, tiny_janus):
    mode, run, trainer = trained
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert math.isfinite(r["loss"]) and math.isfinite(r["kl"]) and r["grad_norm"] > 0
        assert r["samples/excluded"] == 0 and r["rollout/logprob_diff_max"] < 1e-5
    source = load_file(tiny_janus / "model.safetensors")
    state = trainer.policy.model.state_dict()
    frozen = [k for k in source if k.startswith(FROZEN_PREFIXES)]
    assert len(frozen) > 50
    for key in frozen:
        ours = state.get(key, state.get(key.replace(".weight", ".base_layer.weight")))
        assert torch.equal(ours, source[key]), key
    if mode == "lora":
        adapted = [n for n, p in trainer.policy.model.named_parameters() if "lora_B" in n]
        assert adapted and not any(n.startswith(("model.vision_model", "model.vqmodel")) for n in adapted)
        assert any(p.abs().max() > 0 for n, p in trainer.policy.model.named_parameters() if "lora_B" in n)
    else:
        for key in ("model.language_model.layers.0.self_attn.q_proj.weight", "model.generation_head.vision_head.weight"):
            assert not torch.equal(state[key], source[key]), key


def test_export_reloads_in_the_official_class_with_the_same_logits(trained, tiny_janus, tmp_path):
    mode, run, trainer = trained
    out = tmp_path / "export"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "janus"
    official = JanusForConditionalGeneration.from_pretrained(out).eval()

    policy = trainer.policy
    if mode == "lora":
        policy = copy.copy(trainer.policy)
        policy.model = copy.deepcopy(trainer.trainable.peft_model).merge_and_unload()
    prompts = policy.prompt_batch(["a red image", "paint it blue"])
    codes = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    seen = []

    def score(logits, c, positions):
        seen.append(logits)
        return torch.zeros(c.shape), torch.zeros(c.shape)

    with torch.no_grad():
        policy.lm(prompts.input_ids, prompts.attention_mask, codes=codes, score=score)
        theirs = official_guided_logits(official, prompts.input_ids, prompts.attention_mask, codes)
        base = official_guided_logits(JanusForConditionalGeneration.from_pretrained(tiny_janus).eval(),
                                      prompts.input_ids, prompts.attention_mask, codes)
    ours = torch.cat(seen, 1)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    assert (ours - base).abs().max() > 1e-3  # the trained weights, not the base model's

    # The export is also a policy folder: `blip3o-rl generate` reads it.
    reloaded = load_policy("janus", out)
    assert reloaded.guidance == trainer.policy.guidance
    gen = tmp_path / "images"
    assert main(["generate", "--model", str(out), "--policy", "janus", "--out", str(gen), "--prompt", "a red image",
                 "--num-images", "2", "--seed", "1"]) == 0
    assert len(list(gen.glob("**/*.png"))) == 2
