"""The static-cache engine against the KV-cache engine (the oracle) and the trainer's forward.

Tolerances: float32 on the CPU; the engines and the trainer compute the same maths in different orders
(a static cache attends over masked columns too, a full forward over the whole sequence), so log-probs
and hidden states agree to ~1e-6; we assert 1e-5.
"""

import pytest
import torch
from scipy.stats import chi2_contingency, chisquare

from blip3o_rl.rl.grpo.logprobs import sequence_logprobs
from blip3o_rl.rl.rollout.engines import KVCacheEngine, SamplingParams, StaticCacheEngine, build_engine

CAPTIONS = ["a red top and a blue bottom", "green", "a very long caption with many more words than the others"]
TOL = {"atol": 1e-5, "rtol": 0}


def _engine(policy, cls=StaticCacheEngine, **kw):
    engine = cls(**kw)
    engine.setup(policy)
    return engine


def _generate(engine, policy, captions=CAPTIONS, g=3, params=SamplingParams(), seed=0, hidden=False):
    seeds = [seed * 1000 + 10 * j for j in range(len(captions))]
    return engine.generate(policy.prompt_batch(captions), g, params, seeds, return_hidden=hidden)


def test_registered_names():
    assert isinstance(build_engine("static"), StaticCacheEngine)
    assert isinstance(build_engine("hf"), KVCacheEngine)


def test_exact_length_range_groups_and_equal_to_kv_cache(tiny_policy):
    static, oracle = _engine(tiny_policy), _engine(tiny_policy, KVCacheEngine)
    a, b = _generate(static, tiny_policy, hidden=True), _generate(oracle, tiny_policy, hidden=True)
    n, k = tiny_policy.layout.tokens_per_image, tiny_policy.layout.num_codes
    assert a.codes.shape == (9, n) and a.codes.min() >= 0 and a.codes.max() < k
    assert torch.equal(a.prompts.input_ids, b.prompts.input_ids)
    # Same seeds, same noise order: the same codes (the logits differ only by float rounding).
    assert torch.equal(a.codes, b.codes)
    torch.testing.assert_close(a.sampler_logprobs, b.sampler_logprobs, **TOL)
    assert a.hidden_states.shape == b.hidden_states.shape == (9, n + 1, tiny_policy.model.config.hidden_size)
    torch.testing.assert_close(a.hidden_states, b.hidden_states, **TOL)
    assert _generate(static, tiny_policy).hidden_states is None


def test_logprobs_and_hidden_states_equal_the_trainer_s_forward(tiny_policy):
    ro = _generate(_engine(tiny_policy), tiny_policy, hidden=True)
    fwd = sequence_logprobs(tiny_policy.lm, ro.prompts, ro.codes, 1.0, return_hidden=True)
    torch.testing.assert_close(fwd.logprobs, ro.sampler_logprobs, **TOL)
    torch.testing.assert_close(fwd.hidden_states, ro.hidden_states, **TOL)


def test_truncated_sampling_kept_sizes_equal_kv_cache(tiny_policy):
    params = SamplingParams(temperature=0.7, top_k=5, top_p=0.9)
    a = _generate(_engine(tiny_policy), tiny_policy, params=params)
    b = _generate(_engine(tiny_policy, KVCacheEngine), tiny_policy, params=params)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.kept_sizes, b.kept_sizes)
    assert (a.kept_sizes >= 1).all() and (a.kept_sizes <= 5).all()
    exact = sequence_logprobs(tiny_policy.lm, a.prompts, a.codes, 0.7, top_k=5, top_p=0.9, kept=a.kept_sizes)
    torch.testing.assert_close(exact.logprobs, a.sampler_logprobs, **TOL)
    assert _generate(_engine(tiny_policy), tiny_policy).kept_sizes is None


def test_a_group_depends_only_on_its_seed(tiny_policy):
    engine = _engine(tiny_policy)
    batch = _generate(engine, tiny_policy, g=2)
    alone = engine.generate(tiny_policy.prompt_batch(["green"]), 2, SamplingParams(), [10])
    assert torch.equal(alone.codes, batch.codes[2:4])  # left-padded inside the batch, alone here
    torch.testing.assert_close(alone.sampler_logprobs, batch.sampler_logprobs[2:4], **TOL)
    assert torch.equal(_generate(engine, tiny_policy, seed=3).codes, _generate(engine, tiny_policy, seed=3).codes)
    assert not torch.equal(_generate(engine, tiny_policy, seed=3).codes, _generate(engine, tiny_policy, seed=4).codes)


def test_greedy_and_window_settings_agree(tiny_policy):
    greedy = SamplingParams(temperature=0.0)
    a = _generate(_engine(tiny_policy), tiny_policy, params=greedy)
    b = _generate(_engine(tiny_policy, KVCacheEngine), tiny_policy, params=greedy)
    assert torch.equal(a.codes, b.codes)
    # The attention window (eager default 64) and one fixed S_max shape give the same samples.
    full = _generate(_engine(tiny_policy, attention_window=None, length_bucket=16), tiny_policy, hidden=True)
    windowed = _generate(_engine(tiny_policy, attention_window=4), tiny_policy, hidden=True)
    assert torch.equal(full.codes, windowed.codes)
    torch.testing.assert_close(full.hidden_states, windowed.hidden_states, **TOL)


def test_the_step_compiles_as_one_graph(tiny_policy):
    # fullgraph=True: a graph break would raise. The "eager" backend checks the trace without inductor's
    # minute-long C++ compile (measured separately: docs/benchmarks.md).
    torch._dynamo.reset()
    engine = _engine(tiny_policy, compile=True, compile_backend="eager")
    a = _generate(engine, tiny_policy, hidden=True)
    b = _generate(_engine(tiny_policy), tiny_policy, hidden=True)
    assert torch.equal(a.codes, b.codes)
    torch.testing.assert_close(a.hidden_states, b.hidden_states, **TOL)


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(temperature=0.8, top_k=6)])
def test_first_code_distribution_matches_kv_cache_and_the_model(tiny_policy, params):
    """Chi-square tests over the first code of 2,400 samples per engine (one prompt, 60 seeds x G=40),
    disjoint seeds for the two engines: homogeneity static vs kv_cache, and goodness of fit of static
    against the exact first-position distribution. Rejection at p < 1e-3: a false failure rate of 0.1%
    per test if the samplers were right and the seeds random; the seeds are fixed, so the test is
    deterministic (it cannot flake: it passes or fails the same way every run)."""
    g, p = 40, 60
    prompts = tiny_policy.prompt_batch(["a red top and a blue bottom"] * p)
    static, oracle = _engine(tiny_policy), _engine(tiny_policy, KVCacheEngine)
    a = static.generate(prompts, g, params, [1_000_003 * j for j in range(p)]).codes[:, 0]
    b = oracle.generate(prompts, g, params, [7 + 1_000_003 * j for j in range(p)]).codes[:, 0]
    k = tiny_policy.layout.num_codes
    ca, cb = torch.bincount(a, minlength=k), torch.bincount(b, minlength=k)
    seen = (ca + cb) > 0
    assert chi2_contingency(torch.stack([ca[seen], cb[seen]]).numpy()).pvalue > 1e-3
    with torch.no_grad():
        logits = tiny_policy.lm(prompts.input_ids[:1], prompts.attention_mask[:1], cache=tiny_policy.lm.new_cache()).logits
    from blip3o_rl.rl.grpo.sampling import process_logits

    probs = torch.softmax(process_logits(logits, params.temperature, params.top_k, params.top_p), -1)[0]
    support = probs > 0
    assert ca[~support].sum() == 0  # never outside the kept set
    q = probs[support].double()
    expected = q / q.sum() * float(ca.sum())
    assert chisquare(ca[support].double().numpy(), expected.numpy()).pvalue > 1e-3


@pytest.mark.parametrize("cls", [KVCacheEngine, StaticCacheEngine])
@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(temperature=0.7, top_k=5, top_p=0.9)],
                         ids=["untruncated", "truncated"])
def test_a_slice_of_each_group_is_those_rows_of_the_whole_group(tiny_policy, cls, params):
    """samples=range(2, 4) of G=4 (a group split over 2 processes): each prompt's generator still draws the
    whole group's noise, so the slice gets exactly rows 2..3 of every group, on 2 rows per prompt."""
    engine = _engine(tiny_policy, cls)
    seeds = [7, 1007, 2007]
    batch = tiny_policy.prompt_batch(CAPTIONS)
    full = engine.generate(batch, 4, params, seeds, return_hidden=True)
    part = engine.generate(batch, 4, params, seeds, return_hidden=True, samples=range(2, 4))
    rows = [4 * j + i for j in range(len(CAPTIONS)) for i in (2, 3)]  # [0..2] x samples 2, 3
    assert part.codes.shape == (6, tiny_policy.layout.tokens_per_image)
    assert (part.first_sample, part.samples_per_prompt, full.first_sample) == (2, 2, 0)
    assert torch.equal(part.codes, full.codes[rows])
    assert torch.equal(part.prompts.input_ids, full.prompts.input_ids[rows])
    torch.testing.assert_close(part.sampler_logprobs, full.sampler_logprobs[rows], **TOL)
    torch.testing.assert_close(part.hidden_states, full.hidden_states[rows], **TOL)
    if full.kept_sizes is not None:
        assert torch.equal(part.kept_sizes, full.kept_sizes[rows])
    first = engine.generate(batch, 4, params, seeds, samples=range(0, 2))  # the other half: the rest of the group
    assert torch.equal(first.codes, full.codes[[4 * j + i for j in range(len(CAPTIONS)) for i in (0, 1)]])


def test_generate_checks_its_arguments_once_for_every_engine(tiny_policy):
    for engine in (_engine(tiny_policy), _engine(tiny_policy, KVCacheEngine)):
        batch = tiny_policy.prompt_batch(CAPTIONS[:2])
        with pytest.raises(ValueError, match="got 1 seeds for 2 prompts"):
            engine.generate(batch, 4, SamplingParams(), [0])
        for bad in (range(3, 5), range(0, 4, 2), range(2, 2), range(-1, 1)):
            with pytest.raises(ValueError, match="is not a non-empty contiguous part of a group of 4"):
                engine.generate(batch, 4, SamplingParams(), [0, 100], samples=bad)
