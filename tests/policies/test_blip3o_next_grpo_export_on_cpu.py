"""GRPO on the tiny BLIP3o-NEXT checkpoint through the packaged recipes (LoRA and full), then export.

Each run: 2 steps through the real refiner (rollout with hidden states → SANA decode → a real
reward), the refiner's weights untouched; `blip3o-rl export` writes an official-layout folder that
the public loader reads back and that generates the same images as the trained policy in memory.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from blip3o_rl.policies import load_policy
from blip3o_rl.policies.blip3o_next.loader import CONNECTOR_PREFIX, SANA_PREFIX, VAE_PREFIX
from blip3o_rl.rl.config import load_config
from blip3o_rl.rl.rollout.engines import SamplingParams
from blip3o_rl.rl.rollout.generate import generate_images
from blip3o_rl.rl.trainer import GRPOTrainer
from blip3o_rl.scripts.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
REWARD = Path(__file__).resolve().parent / "brightness_reward.py"
DECODER_PREFIXES = (CONNECTOR_PREFIX, SANA_PREFIX, VAE_PREFIX)
PROMPTS = ["a red cube", "two cats on a sofa", 'a sign that says "hello"']

# The packaged recipe, tiny-sized: two steps of 2 prompts x 2 samples (micro-batches of 2), two decode
# steps, a brightness reward, float32 so the export round trip is exact.
RECIPES = {
    "lora": "blip3o_next_geneval_lora_1gpu.yaml",
    "full": "blip3o_next_geneval.yaml",
}


def tiny_overrides(run_dir: Path, ckpt: Path, prompts: Path, decoder_dtype: str) -> list[str]:
    return [
        f"output_dir={run_dir}",
        "max_steps=2",
        f"model.name_or_path={ckpt}",
        "model.dtype=float32",
        # the full recipe computes in bf16 (autocast, a GPU setting); the bit-exact export checks need the
        # float32 forward on both sides
        "model.mixed_precision=none",
        f"model.policy_kwargs={{decode_settings: {{num_inference_steps: 2}}, decoder_dtype: {decoder_dtype}}}",
        "grpo.num_generations=2",
        "grpo.batch_size=4",
        "grpo.micro_batch_size=2",
        "optim.learning_rate=1.0e-3",  # large enough that two steps visibly move the weights
        f"rewards=[{{reward: '{REWARD}:brightness'}}]",
        f"data.train_file={prompts}",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        "logging.image_every=0",
    ]


@pytest.fixture(scope="module", params=["lora", "full"])
def trained(request, tiny_blip3o_next, tmp_path_factory):
    """(finetune mode, run folder, the trainer after its 2 steps)."""
    mode = request.param
    root = tmp_path_factory.mktemp(f"grpo_{mode}")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    # LoRA: float32 refiner; full: the recipe's split (float32 AR weights, bf16 refiner).
    decoder_dtype = "float32" if mode == "lora" else "bfloat16"
    cfg = load_config(
        str(CONFIGS / RECIPES[mode]), tiny_overrides(root / "run", tiny_blip3o_next, prompts, decoder_dtype)
    )
    assert cfg.model.finetune == mode
    trainer = GRPOTrainer(cfg)
    trainer.setup()
    try:
        trainer.train()
    finally:
        trainer.cleanup()
    return mode, root / "run", trainer


def images_of(policy, seed=3) -> list[np.ndarray]:
    groups = generate_images(policy, PROMPTS[:2], 2, SamplingParams(), seed=seed, progress=False)
    return [np.asarray(image) for group in groups for image in group]


def test_two_steps_with_finite_losses(trained):
    _, run, _ = trained
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0
        assert 0 < r["reward/mean"] < 1 and r["samples/excluded"] == 0
    assert (run / "checkpoints" / "step_000002" / "weights.safetensors").is_file()


def test_training_moved_the_language_model_but_not_the_refiner(trained, tiny_blip3o_next):
    mode, _, trainer = trained
    source = load_file(tiny_blip3o_next / "model.safetensors")
    decoder = trainer.policy.decoder
    assert not any(p.requires_grad for p in decoder.parameters())
    state = {CONNECTOR_PREFIX + k: v for k, v in decoder.connector.state_dict().items()}
    state |= {SANA_PREFIX + k: v for k, v in decoder.transformer.state_dict().items()}
    state |= {VAE_PREFIX + k: v for k, v in decoder.vae.state_dict().items()}
    assert len(state) > 50
    for key, value in state.items():
        assert torch.equal(value, source[key].to(value.dtype)), key

    if mode == "lora":
        lora_b = [p for n, p in trainer.policy.model.named_parameters() if "lora_B" in n]
        assert lora_b and any(p.abs().max() > 0 for p in lora_b)  # B starts at zero
    else:
        layer = "model.layers.0.self_attn.q_proj.weight"
        assert not torch.equal(trainer.policy.model.state_dict()[layer], source[layer].float())


def test_export_is_an_official_folder_that_reloads_with_identical_outputs(
    trained, tiny_blip3o_next, tmp_path
):
    mode, run, trainer = trained
    out = tmp_path / "export"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0

    # Official layout: blip3o_qwen config, tokenizer files, every source key, refiner tensors verbatim.
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "blip3o_qwen" and config["torch_dtype"] == "float32"
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).is_file()
    source, exported = load_file(tiny_blip3o_next / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(exported) == set(source)
    for key, value in source.items():
        if key.startswith(DECODER_PREFIXES):
            assert exported[key].dtype == value.dtype and torch.equal(exported[key], value), key

    # The exported language model is the trained one (LoRA: merged into the base weights).
    trained_policy = trainer.policy
    if mode == "lora":
        trained_policy = copy.copy(trainer.policy)
        trained_policy.model = copy.deepcopy(trainer.finetune.peft_model).merge_and_unload()
    for key, value in trained_policy.model.state_dict().items():
        if key != "lm_head.weight":  # tied to the embeddings: stored once
            assert torch.equal(exported[key], value), key
    layer = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(exported[layer], source[layer].float())

    # Loaded again through the public loader: the same images for a fixed seed, not the base model's.
    kwargs = trainer.cfg.model.policy_kwargs
    reloaded = load_policy("blip3o_next", out, "float32", **kwargs)
    base = load_policy("blip3o_next", tiny_blip3o_next, "float32", **kwargs)
    ours, theirs = images_of(trained_policy), images_of(reloaded)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(ours, images_of(base), strict=True))
    if mode == "lora":
        # The unmerged adapter computes the same function up to float rounding (~1e-4 of a grey level
        # here), which can flip a rare pixel by one level.
        unmerged = images_of(trainer.policy)
        assert all(np.abs(a.astype(int) - b).max() <= 1 for a, b in zip(unmerged, theirs, strict=True))


def test_export_errors_name_the_problem(trained, tmp_path, capsys):
    _, run, _ = trained
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    assert main(["export", "--run", str(run), "--out", str(busy)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "a"), "--checkpoint", "step_7"]) == 2
    assert "step_000002" in capsys.readouterr().err  # lists the checkpoints there are
    assert main(["export", "--run", str(tmp_path), "--out", str(tmp_path / "b")]) == 2
    assert "config.yaml" in capsys.readouterr().err


def test_engine_without_hidden_states_gets_them_from_one_trainer_forward(tiny_blip3o_next, tmp_path):
    """An engine like vLLM returns codes but no hidden states: the trainer's one no-grad forward
    supplies them, equal to what the KV-cache engine collects while sampling."""
    from blip3o_rl.rl.rollout.engines import KVCacheEngine, RolloutEngine

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    overrides = tiny_overrides(tmp_path / "run", tiny_blip3o_next, prompts, "float32")
    trainer = GRPOTrainer(load_config(str(CONFIGS / RECIPES["lora"]), [*overrides, "max_steps=1"]))
    trainer.setup()
    collected, decoded = [], []

    class CodesOnlyEngine(RolloutEngine):
        provides_hidden_states = False

        def _generate(self, prompts, num_generations, params, seeds, return_hidden, samples):
            inner = KVCacheEngine()
            inner.setup(self.policy)
            ro = inner.generate(prompts, num_generations, params, seeds, return_hidden, samples)
            collected.append(ro.hidden_states)
            ro.hidden_states = None
            return ro

    real_decode = trainer.policy.decode

    def spy_decode(codes, hidden_states=None, **kw):
        decoded.append(hidden_states)
        return real_decode(codes, hidden_states, **kw)

    trainer.engine = CodesOnlyEngine()
    trainer.engine.setup(trainer.policy)
    trainer.policy.decode = spy_decode
    metrics = trainer.step(1)
    trainer.cleanup()
    assert "time/hidden_states" in metrics and math.isfinite(metrics["loss"])
    assert decoded[0] is not None
    torch.testing.assert_close(decoded[0], collected[0], atol=1e-5, rtol=0)
