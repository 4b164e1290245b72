"""With AR-level CFG on, the trainer scores exactly the distribution the rollout sampled from.

For every sampled code: the trainer's log-prob (`sequence_logprobs` through the guided `ImageTokenLM`)
equals the log of its probability under the CFG-mixed, tempered, truncated distribution, computed
independently from transformers' own processors (CFG, temperature, top-k, top-p) over the official
modules' logits, to 1e-5 in float32; before an update (ratio 1) and after one (ratio != 1). The
``detach_uncond`` option changes the gradient, never the values.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    ClassifierFreeGuidanceLogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from blip3o_rl.policies.janus import JanusPolicy
from blip3o_rl.rl.grpo.logprobs import sequence_logprobs
from blip3o_rl.rl.rollout.engines import KVCacheEngine, SamplingParams
from blip3o_rl.rl.rollout.engines.static import StaticCacheEngine

CAPTIONS = ["a red square", "a green field at dawn"]


def oracle_logprobs(policy, prompts, codes, params: SamplingParams, kept: torch.Tensor | None = None) -> torch.Tensor:
    """log p(code) under transformers' processors applied to the official modules' cond / uncond logits.

    ``kept [B, N]`` (scoring codes sampled by other weights): instead of top-k / top-p, each row keeps its
    ``kept`` largest logits and the sampled code, the project's rule for scoring a truncated sample
    (`rl/grpo/sampling.py`)."""
    model = policy.model
    gen = model.generation_config
    ids = prompts.input_ids
    keep = (ids == gen.bos_token_id) | (ids == gen.generation_kwargs["boi_token_id"])
    rows = {"cond": ids, "uncond": ids.masked_fill(~keep, gen.pad_token_id)}
    mask = torch.cat([prompts.attention_mask, torch.ones_like(codes)], 1)
    logits = {}
    for name, row_ids in rows.items():
        embeds = torch.cat([model.get_input_embeddings()(row_ids), model.prepare_embeddings_for_image_generation(codes)], 1)
        hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=mask,
                                            position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).last_hidden_state
        logits[name] = model.model.generation_head(hidden[:, ids.shape[1] - 1 : -1])  # [B, N, K]
    chain = LogitsProcessorList([ClassifierFreeGuidanceLogitsProcessor(policy.guidance.scale)])
    if params.temperature != 1.0:
        chain.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k and kept is None:
        chain.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1.0 and kept is None:
        chain.append(TopPLogitsWarper(params.top_p))
    out = []
    for j in range(codes.shape[1]):
        mixed = chain(ids, torch.cat([logits["cond"][:, j], logits["uncond"][:, j]]).float())
        if kept is not None:
            rows = [TopKLogitsWarper(int(kept[b, j]))(ids[b : b + 1], mixed[b : b + 1]) for b in range(len(ids))]
            truncated = torch.cat(rows)
            truncated[torch.arange(len(ids)), codes[:, j]] = mixed[torch.arange(len(ids)), codes[:, j]]
            mixed = truncated
        out.append(torch.log_softmax(mixed, -1).gather(-1, codes[:, j, None]).squeeze(-1))
    return torch.stack(out, 1)


def trainer_logprobs(policy, ro, params: SamplingParams) -> torch.Tensor:
    return sequence_logprobs(policy.lm, ro.prompts, ro.codes, params.temperature, params.top_k, params.top_p,
                             chunk_size=6, kept=ro.kept_sizes).logprobs


def perturb(policy, seed: int) -> None:
    """One optimizer-like update of every trained weight (what a GRPO step would move)."""
    g = torch.Generator().manual_seed(seed)
    frozen = {id(p) for p in policy.frozen_parameters()}
    with torch.no_grad():
        for p in policy.lm.parameters():
            if id(p) not in frozen:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("engine", [KVCacheEngine, StaticCacheEngine])
@pytest.mark.parametrize("params", [SamplingParams(1.0, 0, 1.0), SamplingParams(0.8, 12, 0.9)],
                         ids=["untruncated", "top_k_top_p"])
def test_trainer_logprob_is_the_log_of_the_mixed_probability_sampled_from(tiny_janus, engine, params):
    policy = JanusPolicy.from_pretrained(tiny_janus)
    e = engine()
    e.setup(policy)
    prompts = policy.prompt_batch(CAPTIONS)
    with torch.no_grad():
        ro = e.generate(prompts, 3, params, seeds=[11, 12])
        ours, oracle = trainer_logprobs(policy, ro, params), oracle_logprobs(policy, ro.prompts, ro.codes, params)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, oracle, rtol=0, atol=1e-5)
    torch.testing.assert_close(ro.sampler_logprobs, oracle, rtol=0, atol=1e-5)  # what the sampler drew from

    # After an update: the ratio's numerator for the old samples, and a fresh rollout, both exact.
    perturb(policy, seed=5)
    with torch.no_grad():
        new = trainer_logprobs(policy, ro, params)
        oracle_new = oracle_logprobs(policy, ro.prompts, ro.codes, params, kept=ro.kept_sizes)
        torch.testing.assert_close(new, oracle_new, rtol=0, atol=1e-5)
        assert (new - ours).abs().max() > 1e-2  # ratio != 1
        fresh = e.generate(prompts, 3, params, seeds=[21, 22])
        oracle_fresh = oracle_logprobs(policy, fresh.prompts, fresh.codes, params)
        torch.testing.assert_close(trainer_logprobs(policy, fresh, params), oracle_fresh, rtol=0, atol=1e-5)
        torch.testing.assert_close(fresh.sampler_logprobs, oracle_fresh, rtol=0, atol=1e-5)


def test_detach_uncond_changes_the_gradient_not_the_values(tiny_janus):
    both = JanusPolicy.from_pretrained(tiny_janus)
    detached = JanusPolicy.from_pretrained(tiny_janus, detach_uncond=True)
    params = SamplingParams()
    e = KVCacheEngine()
    e.setup(both)
    with torch.no_grad():
        ro = e.generate(both.prompt_batch(CAPTIONS), 2, params, seeds=[3, 4])
    grads = {}
    for name, policy in (("both", both), ("detached", detached)):
        lp = trainer_logprobs(policy, ro, params)
        lp.sum().backward()
        grads[name] = (lp.detach(), body_weight(policy).grad.clone(), head_weight(policy).grad.clone())
    torch.testing.assert_close(grads["both"][0], grads["detached"][0], rtol=0, atol=1e-6)
    for i in (1, 2):
        assert (grads["both"][i] - grads["detached"][i]).abs().max() > 1e-4

    # Detached: exactly the gradient of log softmax(uncond.detach() + s (cond - uncond.detach())).
    policy = JanusPolicy.from_pretrained(tiny_janus, guidance_scale=1.0)
    s = both.guidance.scale
    with torch.no_grad():
        uncond = oracle_uncond_logits(both, ro)
    seen = []

    def score(logits, codes, positions):
        mixed = uncond[:, positions] + (logits.float() - uncond[:, positions]) * s
        logp = torch.log_softmax(mixed, -1).gather(-1, codes[..., None]).squeeze(-1)
        seen.append(logp)
        return logp, torch.zeros_like(logp)

    policy.lm(ro.prompts.input_ids, ro.prompts.attention_mask, codes=ro.codes, score=score).logprobs.sum().backward()
    torch.testing.assert_close(body_weight(policy).grad, grads["detached"][1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(head_weight(policy).grad, grads["detached"][2], rtol=1e-4, atol=1e-6)


def body_weight(policy):
    return policy.model.model.language_model.layers[0].self_attn.q_proj.weight


def head_weight(policy):
    return policy.model.model.generation_head.vision_head.weight


def oracle_uncond_logits(policy, ro) -> torch.Tensor:
    model, gen, ids = policy.model, policy.model.generation_config, ro.prompts.input_ids
    keep = (ids == gen.bos_token_id) | (ids == gen.generation_kwargs["boi_token_id"])
    uncond_ids = ids.masked_fill(~keep, gen.pad_token_id)
    mask = torch.cat([ro.prompts.attention_mask, torch.ones_like(ro.codes)], 1)
    embeds = torch.cat([model.get_input_embeddings()(uncond_ids), model.prepare_embeddings_for_image_generation(ro.codes)], 1)
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=mask,
                                        position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).last_hidden_state
    return model.model.generation_head(hidden[:, ids.shape[1] - 1 : -1]).float()


def test_vllm_engines_refuse_a_guided_policy(tiny_janus):
    from blip3o_rl.rl.rollout.engines.vllm import VLLMEngine

    with pytest.raises(ValueError, match=r"VLLMEngine has no classifier-free guidance.*kv_cache or static"):
        VLLMEngine().setup(JanusPolicy.from_pretrained(tiny_janus))


def test_full_vocabulary_scoring_is_refused_for_janus_guided_or_not(tiny_janus):
    from blip3o_rl.rl.grpo.score_space import OfficialSpace

    for scale in (None, 1.0):  # the recipe's CFG, and no guidance: Janus's codes are no rows of a text lm_head
        policy = JanusPolicy.from_pretrained(tiny_janus) if scale is None else \
            JanusPolicy.from_pretrained(tiny_janus, guidance_scale=scale)
        assert not policy.lm.scores_full_vocabulary
        prompts = policy.prompt_batch(CAPTIONS[:1])
        codes = torch.zeros(1, 3, dtype=torch.long)
        with pytest.raises(ValueError, match=r"full-vocabulary scoring|no full-vocabulary"):
            sequence_logprobs(policy.lm, prompts, codes, 1.0, space=OfficialSpace())


def test_the_official_score_space_with_a_janus_recipe_is_a_config_error(tiny_janus, tmp_path):
    from pathlib import Path

    from blip3o_rl.rl.config import ConfigError, load_config
    from blip3o_rl.rl.trainer import GRPOTrainer

    recipe = Path(__file__).resolve().parents[2] / "configs" / "demo_janus.yaml"
    trainer = GRPOTrainer(load_config(str(recipe), [f"output_dir={tmp_path / 'run'}", f"model.name_or_path={tiny_janus}",
                                                    "model.build={}", "grpo.score_space=official",
                                                    "logging.tensorboard=false", "logging.progress_bar=false"]))
    try:
        with pytest.raises(ConfigError, match=r"grpo\.score_space: 'official'.*JanusImageTokenLM.*kept_set"):
            trainer.setup()
    finally:
        trainer.cleanup()
