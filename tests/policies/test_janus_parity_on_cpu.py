"""Janus-Pro through its official classes: the policy against transformers' own Janus code on a tiny random
folder in the official format (prompt ids, image logits, CFG mixing, greedy generation, decoding, errors)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import JanusForConditionalGeneration, JanusProcessor

from blip3o_rl.policies import load_policy
from blip3o_rl.policies.janus import JanusConfigError, JanusPolicy
from blip3o_rl.policies.janus.testing import BOS
from blip3o_rl.rl.rollout.engines import KVCacheEngine, SamplingParams
from blip3o_rl.rl.rollout.engines.static import StaticCacheEngine

from .janus_official import official_guided_logits, official_image_logits

CAPTIONS = ["a red square", "a blue circle on a long table"]


@pytest.fixture(scope="module")
def official(tiny_janus):
    return (JanusForConditionalGeneration.from_pretrained(tiny_janus).eval(),
            JanusProcessor.from_pretrained(tiny_janus))


@pytest.fixture(scope="module")
def policy(tiny_janus):
    return load_policy("janus", tiny_janus)


def official_prompts(processor, captions):
    """As transformers' Janus docs build an image-generation prompt."""
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": c}]}],
                                           add_generation_prompt=True) for c in captions]
    return processor(text=texts, generation_mode="image", padding=True, return_tensors="pt")


def test_prompt_ids_are_the_official_ones(policy, official):
    _, processor = official
    ours = policy.prompt_batch(CAPTIONS)
    theirs = official_prompts(processor, CAPTIONS)
    assert torch.equal(ours.input_ids, theirs["input_ids"])
    assert torch.equal(ours.attention_mask, theirs["attention_mask"])
    # DeepSeek's format: BOS + "<|User|>: {caption}\n\n<|Assistant|>:" + <begin_of_image>, left padded.
    assert policy.prompt_text("a red square") == "<|User|>: a red square\n\n<|Assistant|>:<begin_of_image>"
    tok = policy.tokenizer
    literal = tok(f"<|User|>: {CAPTIONS[1]}\n\n<|Assistant|>:<begin_of_image>")["input_ids"]
    assert literal[0] == tok.convert_tokens_to_ids(BOS) and ours.input_ids[1].tolist() == literal
    assert ours.input_ids[0, 0].item() == tok.pad_token_id and ours.attention_mask[0, 0].item() == 0


def captured_logits(lm, prompts, codes):
    seen = []

    def score(logits, c, positions):
        seen.append(logits.detach())
        return torch.zeros(c.shape), torch.zeros(c.shape)

    lm(prompts.input_ids, prompts.attention_mask, codes=codes, score=score, chunk_size=5)
    return torch.cat(seen, 1)


@torch.no_grad()
def test_image_logits_and_cfg_mixing_equal_the_official(tiny_janus, official):
    model, _ = official
    unguided = JanusPolicy.from_pretrained(tiny_janus, guidance_scale=1.0)
    guided = JanusPolicy.from_pretrained(tiny_janus)
    assert unguided.lm.rows_per_sample == 1 and guided.lm.rows_per_sample == 2
    assert guided.guidance.scale == 5.0  # generation_config.json's guidance_scale
    prompts = guided.prompt_batch(CAPTIONS)
    codes = torch.randint(0, guided.layout.num_codes, (2, guided.layout.tokens_per_image), generator=torch.Generator().manual_seed(0))
    cond = official_image_logits(model, prompts.input_ids, prompts.attention_mask, codes)
    torch.testing.assert_close(captured_logits(unguided.lm, prompts, codes), cond, rtol=0, atol=1e-5)

    # The unconditional row of the official generate (all but BOS and <begin_of_image> masked to pad),
    # mixed by transformers' ClassifierFreeGuidanceLogitsProcessor.
    expected = official_guided_logits(model, prompts.input_ids, prompts.attention_mask, codes)
    torch.testing.assert_close(captured_logits(guided.lm, prompts, codes), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("engine", [KVCacheEngine, StaticCacheEngine])
def test_greedy_generation_equals_the_official_generate(policy, official, engine):
    """Greedy decoding takes the argmax of the CFG-mixed logits at every step: the whole official image
    path (prompt, doubled batch, masked unconditional row, cache, embeddings, head, mixing) must agree."""
    model, processor = official
    inputs = official_prompts(processor, CAPTIONS)
    theirs = model.generate(**inputs, generation_mode="image", do_sample=False)
    e = engine()
    e.setup(policy)
    ours = e.generate(policy.prompt_batch(CAPTIONS), 1, SamplingParams(temperature=0.0), seeds=[0, 1])
    assert torch.equal(ours.codes, theirs)


def test_decode_equals_the_official_decode(policy, official):
    model, processor = official
    codes = torch.randint(0, policy.layout.num_codes, (3, policy.layout.tokens_per_image), generator=torch.Generator().manual_seed(1))
    ours = policy.decode(codes)
    with torch.no_grad():
        pixels = model.decode_image_tokens(codes)  # [B, H, W, 3]
    # (The processor cannot tell a 16 x 16 x 3 image's channel axis: give it channels first.)
    theirs = processor.postprocess(list(pixels.permute(0, 3, 1, 2).float()),
                                   return_tensors="PIL.Image.Image")["pixel_values"]
    ip = processor.image_processor
    mean, std = np.asarray(ip.image_mean), np.asarray(ip.image_std)
    by_hand = ((pixels.float().numpy() * std + mean) / ip.rescale_factor).clip(0, 255).astype(np.uint8)
    assert [im.size for im in ours] == [(16, 16)] * 3 and all(im.mode == "RGB" for im in ours)
    for a, b, c in zip(ours, theirs, by_hand, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b)) and np.array_equal(np.asarray(a), c)
    assert len({np.asarray(im).tobytes() for im in ours}) == 3  # different codes, different images


def test_frozen_parts_and_inference_sampling(policy):
    frozen = {id(p) for p in policy.frozen_parameters()}
    inner = policy.model.model
    assert all(id(p) in frozen for p in inner.vqmodel.parameters())
    assert all(id(p) in frozen for p in inner.vision_model.parameters())
    assert not any(id(p) in frozen for p in inner.generation_head.parameters())
    assert not any(id(p) in frozen for p in inner.language_model.parameters())
    # generate(do_sample=True) with this generation_config.json: temperature 1, transformers' top-k 50.
    assert policy.inference_sampling == SamplingParams(1.0, 50, 1.0)
    assert policy.layout.num_codes == 64 and policy.layout.tokens_per_image == 16


def test_bad_folders_fail_naming_file_and_field(tiny_janus, tmp_path):
    with pytest.raises(JanusConfigError, match=r"config\.json: not found"):
        JanusPolicy.from_pretrained(tmp_path)
    other = tmp_path / "other"
    shutil.copytree(tiny_janus, other)
    raw = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**raw, "model_type": "llama"}))
    with pytest.raises(JanusConfigError, match="model_type is 'llama'"):
        JanusPolicy.from_pretrained(other)
    with pytest.raises(JanusConfigError, match="guidance_scale must be >= 1"):
        JanusPolicy.from_pretrained(tiny_janus, guidance_scale=0.5)


def test_non_finite_weights_are_refused_naming_the_file(tiny_janus, tmp_path):
    from safetensors.torch import load_file, save_file

    from blip3o_rl.policies.weights import NonFiniteWeightsError

    broken = tmp_path / "broken"
    shutil.copytree(tiny_janus, broken)
    tensors = load_file(broken / "model.safetensors")
    key = "model.generation_head.vision_head.weight"
    tensors[key][0, 0] = float("nan")
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(NonFiniteWeightsError, match=rf"model\.safetensors: tensor '{key}'"):
        JanusPolicy.from_pretrained(broken)


def test_a_non_finite_decode_is_a_marked_failure(policy):
    from blip3o_rl.policies.base import decode_error

    vq = policy.model.model.vqmodel
    codes = torch.zeros(2, policy.layout.tokens_per_image, dtype=torch.long)
    codes[1] = 1
    saved = vq.quantize.embedding.weight.data[1].clone()
    try:
        vq.quantize.embedding.weight.data[1] = float("nan")
        first, second = policy.decode(codes)
    finally:
        vq.quantize.embedding.weight.data[1] = saved
    assert decode_error(first) is None and "non-finite" in decode_error(second)
