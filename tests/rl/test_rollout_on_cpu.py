"""The KV-cache engine on the tiny world: exact length, image range, padding, and the trainer's view."""

import torch

from blip3o_rl.rl.grpo.logprobs import sequence_logprobs
from blip3o_rl.rl.rollout.engines import KVCacheEngine, SamplingParams

CAPTIONS = ["a red top and a blue bottom", "green", "a very long caption with many more words than the others"]


def _generate(policy, captions=CAPTIONS, g=3, params=SamplingParams(), seed=0, hidden=False):
    engine = KVCacheEngine()
    engine.setup(policy)
    seeds = [seed * 1000 + 10 * j for j in range(len(captions))]
    return engine.generate(policy.prompt_batch(captions), g, params, seeds, return_hidden=hidden)


def test_exact_count_in_range_groups_contiguous(tiny_policy):
    ro = _generate(tiny_policy)
    n, k = tiny_policy.layout.tokens_per_image, tiny_policy.layout.num_codes
    assert ro.codes.shape == (len(CAPTIONS) * 3, n)
    assert ro.codes.min() >= 0 and ro.codes.max() < k
    # rows of one group share their prompt
    ids = ro.prompts.input_ids
    assert torch.equal(ids[0], ids[2]) and not torch.equal(ids[0], ids[3])


def test_sampler_and_trainer_logprobs_and_hidden_states_agree(tiny_policy):
    ro = _generate(tiny_policy, hidden=True)
    fwd = sequence_logprobs(tiny_policy.lm, ro.prompts, ro.codes, 1.0, return_hidden=True)
    torch.testing.assert_close(fwd.logprobs, ro.sampler_logprobs, atol=1e-5, rtol=0)
    n, h = tiny_policy.layout.tokens_per_image, tiny_policy.model.config.hidden_size
    assert ro.hidden_states.shape == (len(CAPTIONS) * 3, n + 1, h)
    torch.testing.assert_close(fwd.hidden_states, ro.hidden_states, atol=1e-5, rtol=0)


def test_truncated_sampling_matches_truncated_trainer_logprobs(tiny_policy):
    params = SamplingParams(temperature=0.7, top_k=5, top_p=0.9)
    ro = _generate(tiny_policy, params=params)
    fwd = sequence_logprobs(tiny_policy.lm, ro.prompts, ro.codes, 0.7, top_k=5, top_p=0.9)
    torch.testing.assert_close(fwd.logprobs, ro.sampler_logprobs, atol=1e-5, rtol=0)
    assert torch.isfinite(fwd.logprobs).all()
    # The engine reports its kept-set sizes; scoring against them gives the same log-probs.
    assert ro.kept_sizes.shape == ro.codes.shape and (ro.kept_sizes <= 5).all() and (ro.kept_sizes >= 1).all()
    exact = sequence_logprobs(tiny_policy.lm, ro.prompts, ro.codes, 0.7, top_k=5, top_p=0.9, kept=ro.kept_sizes)
    torch.testing.assert_close(exact.logprobs, ro.sampler_logprobs, atol=1e-5, rtol=0)
    assert _generate(tiny_policy).kept_sizes is None  # untruncated: no sizes


def test_left_padding_does_not_change_a_prompt_s_distribution(tiny_policy):
    # The short caption's log-probs must be the same alone and padded inside a batch.
    ro = _generate(tiny_policy, g=2, hidden=True)
    rows = slice(2, 4)  # the "green" group, left-padded in the batch
    alone = tiny_policy.prompt_batch(["green"]).repeat_interleave(2)
    assert alone.input_ids.shape[1] < ro.prompts.input_ids.shape[1]
    fwd = sequence_logprobs(tiny_policy.lm, alone, ro.codes[rows], 1.0, return_hidden=True)
    torch.testing.assert_close(fwd.logprobs, ro.sampler_logprobs[rows], atol=1e-5, rtol=0)
    torch.testing.assert_close(fwd.hidden_states, ro.hidden_states[rows], atol=1e-5, rtol=0)


def test_seeded_and_temperature_sensitive(tiny_policy):
    a, b = _generate(tiny_policy, seed=3), _generate(tiny_policy, seed=3)
    assert torch.equal(a.codes, b.codes)
    assert not torch.equal(a.codes, _generate(tiny_policy, seed=4).codes)
    # a near-zero temperature makes every sample of a group the argmax sequence
    cold = _generate(tiny_policy, params=SamplingParams(temperature=1e-4))
    assert (cold.codes[0] == cold.codes[1]).all() and (cold.codes[1] == cold.codes[2]).all()


def test_logprobs_come_from_image_rows_only(tiny_policy):
    # Masked softmax over the image ids of the full-vocabulary logits = our image-row log-probs.
    ro = _generate(tiny_policy, g=1)
    p = ro.prompts.input_ids.shape[1]
    layout = tiny_policy.layout
    ids = torch.cat([ro.prompts.input_ids, layout.to_token_ids(ro.codes)], 1)
    mask = torch.cat([ro.prompts.attention_mask, torch.ones_like(ro.codes)], 1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = tiny_policy.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    img = logits[:, p - 1 : -1, layout.image_token_start : layout.image_token_start + layout.num_codes]
    expected = torch.log_softmax(img, -1).gather(-1, ro.codes[..., None]).squeeze(-1)
    torch.testing.assert_close(ro.sampler_logprobs, expected, atol=1e-5, rtol=0)


def test_a_group_s_samples_depend_only_on_its_seed(tiny_policy):
    # The "green" group alone, and inside a batch (left-padded, other prompts around it): same codes.
    batch = _generate(tiny_policy, g=2)
    engine = KVCacheEngine()
    engine.setup(tiny_policy)
    alone = engine.generate(tiny_policy.prompt_batch(["green"]), 2, SamplingParams(), [10])
    assert torch.equal(alone.codes, batch.codes[2:4])
    torch.testing.assert_close(alone.sampler_logprobs, batch.sampler_logprobs[2:4], atol=1e-5, rtol=0)
