import math

import torch

from blip3o_rl.rl.grpo.sampling import process_logits, sample_codes


def test_top_k_and_top_p_truncate():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    x = process_logits(logits, 1.0, top_k=2)
    assert torch.isinf(x[0, 2:]).all() and torch.isfinite(x[0, :2]).all()
    # top_p 0.7: 0.5 alone < 0.7, 0.5 + 0.3 reaches it -> keep the first two
    x = process_logits(logits, 1.0, top_p=0.7)
    assert torch.isinf(x[0, 2:]).all() and torch.isfinite(x[0, :2]).all()
    # top_p 0.5: the first code alone reaches it
    assert torch.isfinite(process_logits(logits, 1.0, top_p=0.5)[0]).sum() == 1


def test_temperature_scales():
    logits = torch.tensor([[1.0, 2.0]])
    torch.testing.assert_close(process_logits(logits, 0.5), torch.tensor([[2.0, 4.0]]))


def test_sampling_follows_the_distribution_and_seed():
    probs = torch.tensor([0.6, 0.3, 0.1])
    logits = probs.log().expand(20000, 3)
    g = torch.Generator().manual_seed(0)
    codes, logp, _ = sample_codes(logits, 1.0, generator=g)
    freq = torch.bincount(codes, minlength=3).float() / codes.numel()
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)
    torch.testing.assert_close(logp, probs.log()[codes])
    again = sample_codes(logits, 1.0, generator=torch.Generator().manual_seed(0)).codes
    assert torch.equal(codes, again)


def test_truncated_sampling_never_leaves_the_kept_set_and_logprobs_are_renormalised():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])).expand(5000, 4)
    codes, logp, _ = sample_codes(logits, 1.0, top_k=2, generator=torch.Generator().manual_seed(1))
    assert codes.max() <= 1
    expected = torch.log(torch.tensor([0.5, 0.3]) / 0.8)
    torch.testing.assert_close(logp, expected[codes])


def test_greedy():
    codes, logp, _ = sample_codes(torch.tensor([[0.0, 3.0, 1.0]]), 0.0)
    assert codes.item() == 1
    assert math.isclose(logp.item(), torch.log_softmax(torch.tensor([0.0, 3.0, 1.0]), 0)[1].item(), rel_tol=1e-6)


# --------------------------------------------------------------------- exact truncated log-probs
from blip3o_rl.rl.grpo.sampling import scored_logits  # noqa: E402


def test_sampler_reports_kept_set_sizes_only_when_truncating():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.7, 0.1, 0.1, 0.1]]))
    assert sample_codes(logits, 1.0).kept is None
    assert sample_codes(logits, 0.0, top_k=2).kept is None  # greedy: generation only
    # top_p 0.7: row 0 keeps 0.5 + 0.3; row 1 keeps 0.7 alone (its mass reaches 0.7)
    out = sample_codes(logits, 1.0, top_p=0.7, generator=torch.Generator().manual_seed(0))
    assert out.kept.tolist() == [2, 1]
    assert sample_codes(logits, 1.0, top_k=3).kept.tolist() == [3, 4]  # row 1: ties at 0.1 are all kept


def test_untruncated_scoring_is_bit_identical_to_logits_over_temperature():
    logits = torch.randn(3, 5, 17, dtype=torch.bfloat16)
    codes = torch.randint(0, 17, (3, 5))
    assert torch.equal(scored_logits(logits, codes, 0.7), logits.float() / 0.7)
    assert torch.equal(scored_logits(logits, codes, 1.0), process_logits(logits, 1.0))


def test_scoring_with_the_samplers_sizes_reproduces_its_logprobs():
    logits = torch.randn(2000, 64)
    out = sample_codes(logits, 0.8, top_k=10, top_p=0.9, generator=torch.Generator().manual_seed(3))
    x = scored_logits(logits, out.codes, 0.8, 10, 0.9, kept=out.kept)
    assert torch.equal(torch.isfinite(x).sum(-1), out.kept)
    torch.testing.assert_close(torch.log_softmax(x, -1).gather(-1, out.codes[:, None]).squeeze(-1), out.logprobs)


def test_a_code_the_trainers_rounding_would_drop_keeps_a_finite_logprob():
    # The sampler kept {0, 1} (top_k 2) and drew code 1; in the trainer's forward code 1 fell just below
    # code 2 (a rounding difference). Re-deriving the truncation gives -inf (NaN ratio downstream);
    # scoring against the sampler's set size, the sampled code is forced in and stays finite.
    sampler = torch.tensor([[2.0, 1.0, 0.999, -3.0]])
    trainer = torch.tensor([[2.0, 0.999, 1.0, -3.0]])
    out = sample_codes(sampler, 1.0, top_k=2, generator=torch.Generator().manual_seed(0))
    code = torch.tensor([1])
    assert out.kept.tolist() == [2]
    rederived = torch.log_softmax(process_logits(trainer, 1.0, top_k=2), -1)[0, 1]
    assert torch.isinf(rederived)
    for kept in (out.kept, None):  # with the sampler's size, and recomputed without one
        logp = torch.log_softmax(scored_logits(trainer, code, 1.0, top_k=2, kept=kept), -1)
        assert torch.isfinite(logp[0, 1])
        assert torch.isfinite(logp).sum() == 3  # the top 2 of this forward, plus the sampled code


def test_gradients_flow_only_through_the_kept_logits():
    logits = torch.randn(4, 8, requires_grad=True)
    out = sample_codes(logits.detach(), 1.0, top_k=3, generator=torch.Generator().manual_seed(0))
    x = scored_logits(logits, out.codes, 1.0, top_k=3, kept=out.kept)
    torch.log_softmax(x, -1).gather(-1, out.codes[:, None]).sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert ((logits.grad != 0).sum(-1) <= 3).all()
