"""The one truncation rule (rl/grpo/sampling.py): top-k and top-p closed under ties at the cut value, so the
kept set is a function of the logits alone and the trainer's rebuild from its size is exact.

The reference here is independent of `process_logits`: a code is kept by top-p when the probability
mass of the codes with a strictly larger logit is below ``top_p`` (float64), by top-k when fewer than k
codes have a strictly larger logit. The logits are bf16 values (spacing 0.0625 between 8 and 16), where
exact ties are routine.
"""

import pytest
import torch

from blip3o_rl.rl.grpo.logprobs import sequence_logprobs
from blip3o_rl.rl.grpo.sampling import process_logits, sample_codes, scored_logits
from blip3o_rl.rl.rollout.engines import KVCacheEngine, SamplingParams, StaticCacheEngine


def _reference_kept(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """``[B, K]`` bool: the kept set by the rule's definition, in float64 over the sampler's float32 scaled
    logits ``logits.float() / temperature`` (the distribution is defined on those)."""
    x = (logits.float() / temperature).double()
    above = (x[:, None, :] > x[:, :, None])  # [B, K(code), K(other)]: other strictly above code
    keep = torch.ones_like(x, dtype=torch.bool)
    if top_k:
        keep &= above.sum(-1) < top_k
    if top_p < 1:
        z = x.masked_fill(~keep, float("-inf"))
        p = torch.softmax(z, -1)
        mass_above = (above & keep[:, None, :]).double().mul(p[:, None, :]).sum(-1)
        keep &= mass_above < top_p
    return keep


def _reference_logprob(logits, codes, temperature, keep):
    x = (logits.float() / temperature).double()
    logp = torch.log_softmax(x.masked_fill(~keep, float("-inf")), -1)
    return logp.gather(-1, codes[:, None]).squeeze(-1)


def _bf16_logits(rows: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (8 + 4 * torch.randn(rows, k, generator=g)).to(torch.bfloat16)  # many values 8-16: ties


def test_ties_at_the_kth_value_are_all_kept_and_the_set_ignores_sort_order():
    x = torch.tensor([[9.0, 8.5, 8.5, 8.5, 3.0, 8.5]], dtype=torch.bfloat16)
    kept = torch.isfinite(process_logits(x, 1.0, top_k=2))
    assert kept.tolist() == [[True, True, True, True, False, True]]
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.isfinite(process_logits(x[:, perm], 1.0, top_k=2)), kept[:, perm])


def test_ties_straddling_the_top_p_cut_are_all_kept():
    # probabilities ~ [0.42, 0.155 x 3, 0.06, ...]: top_p 0.6 is reached inside the tied run, which the
    # sorted-order cut would split (keeping 2 of the 3 tied codes, chosen by sort order).
    x = torch.tensor([[10.0, 9.0, 9.0, 9.0, 8.0, 7.0]], dtype=torch.bfloat16)
    kept = torch.isfinite(process_logits(x, 1.0, top_p=0.6))
    assert kept.tolist() == [[True, True, True, True, False, False]]
    assert torch.equal(kept, _reference_kept(x, 1.0, 0, 0.6))


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, 20, 0.95), (1.0, 0, 0.9), (0.7, 50, 1.0),
                                                              (1.3, 10, 0.8)])
def test_sampled_codes_score_exactly_in_the_kept_set_on_bf16_logits(temperature, top_k, top_p):
    logits = _bf16_logits(512, 128, seed=top_k)
    keep = _reference_kept(logits, temperature, top_k, top_p)
    out = sample_codes(logits, temperature, top_k, top_p, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out.kept, keep.sum(-1))  # the sampler's set is the reference set
    assert keep.gather(-1, out.codes[:, None]).all()
    expected = _reference_logprob(logits, out.codes, temperature, keep)
    for kept in (out.kept, None):  # rebuilt from the sizes, and recomputed from the logits
        x = scored_logits(logits, out.codes, temperature, top_k, top_p, kept=kept)
        assert torch.equal(torch.isfinite(x), keep)
        trainer = torch.log_softmax(x, -1).gather(-1, out.codes[:, None]).squeeze(-1)
        assert (trainer.double() - expected).abs().max() <= 1e-6
    assert (out.logprobs.double() - expected).abs().max() <= 1e-6


def test_ties_at_the_top_p_cut_are_routine_in_bf16_and_the_sorted_order_cut_would_split_them():
    logits = _bf16_logits(2000, 256, seed=0)
    x = logits.float()
    sorted_x = torch.sort(x, -1, descending=True).values
    probs = sorted_x.softmax(-1)
    n_sorted = ((probs.cumsum(-1) - probs) < 0.95).sum(-1)  # the sorted-order cut of transformers / vLLM
    n_rule = torch.isfinite(process_logits(logits, 1.0, top_p=0.95)).sum(-1)
    assert (n_rule >= n_sorted).all()
    assert (n_rule > n_sorted).float().mean() > 0.05  # many rows: the old sizes did not name one set


def test_the_kept_set_is_the_same_whatever_the_column_order():
    logits = _bf16_logits(256, 96, seed=5)
    perm = torch.randperm(96, generator=torch.Generator().manual_seed(2))
    for top_k, top_p in ((20, 0.95), (0, 0.7), (7, 1.0)):
        a = torch.isfinite(process_logits(logits, 1.0, top_k, top_p))
        b = torch.isfinite(process_logits(logits[:, perm], 1.0, top_k, top_p))
        assert torch.equal(a[:, perm], b)


@pytest.mark.parametrize("engine_cls", [KVCacheEngine, StaticCacheEngine])
def test_our_engines_and_the_trainer_agree_exactly_on_bf16_valued_logits(tiny_policy, engine_cls):
    # The tiny world's image logits (16 codes, within about ±1), shifted into 11..13 and rounded to bf16
    # values (what a bf16 head gives: spacing 0.0625): the engine and the trainer both see them, and ties
    # straddle the top-k and top-p cuts in many positions.
    lm = tiny_policy.lm
    head = lm.image_logits
    seen: list[torch.Tensor] = []

    def bf16_head(hidden):
        out = (12 + head(hidden)).to(torch.bfloat16).float()
        seen.append(out.detach())
        return out

    lm.image_logits = bf16_head
    top_k, top_p = 12, 0.8
    params = SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p)
    engine = engine_cls()
    engine.setup(tiny_policy)
    captions = ["a red top and a blue bottom", "green"]
    ro = engine.generate(tiny_policy.prompt_batch(captions), 4, params, [0, 10])
    seen.clear()
    fwd = sequence_logprobs(lm, ro.prompts, ro.codes, 1.0, top_k, top_p, kept=ro.kept_sizes)
    logits = torch.cat(seen, 1).reshape(-1, seen[0].shape[-1])  # the trainer's logits by chunk, [B * N, K]
    codes = ro.codes.reshape(-1)
    keep = _reference_kept(logits, 1.0, top_k, top_p)
    assert torch.equal(ro.kept_sizes.reshape(-1), keep.sum(-1))  # the engine kept the reference set
    expected = _reference_logprob(logits, codes, 1.0, keep)
    assert (fwd.logprobs.reshape(-1).double() - expected).abs().max() <= 1e-6
    assert (ro.sampler_logprobs.reshape(-1).double() - expected).abs().max() <= 1e-6
    # ties at the cut are present: a sorted-order cut would have kept fewer codes in some positions
    sorted_x = torch.sort(logits, -1, descending=True).values
    probs = sorted_x.masked_fill(torch.arange(logits.shape[-1]) >= top_k, float("-inf")).softmax(-1)
    n_sorted = ((probs.cumsum(-1) - probs) < top_p).sum(-1)
    assert (keep.sum(-1) > n_sorted).float().mean() > 0.1
