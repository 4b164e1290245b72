import math

import torch

from blip3o_rl.rl.sampling import process_logits, sample_codes


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
    codes, logp = sample_codes(logits, 1.0, generator=g)
    freq = torch.bincount(codes, minlength=3).float() / codes.numel()
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)
    torch.testing.assert_close(logp, probs.log()[codes])
    again, _ = sample_codes(logits, 1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(codes, again)


def test_truncated_sampling_never_leaves_the_kept_set_and_logprobs_are_renormalised():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])).expand(5000, 4)
    codes, logp = sample_codes(logits, 1.0, top_k=2, generator=torch.Generator().manual_seed(1))
    assert codes.max() <= 1
    expected = torch.log(torch.tensor([0.5, 0.3]) / 0.8)
    torch.testing.assert_close(logp, expected[codes])


def test_greedy():
    codes, logp = sample_codes(torch.tensor([[0.0, 3.0, 1.0]]), 0.0)
    assert codes.item() == 1
    assert math.isclose(logp.item(), torch.log_softmax(torch.tensor([0.0, 3.0, 1.0]), 0)[1].item(), rel_tol=1e-6)
