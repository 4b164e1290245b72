"""policy_loss against values worked out by hand.

The running example (B = 2 samples, L = 2 tokens, epsilon = 0.2)::

    ratio = [[1.1, 1.3], [0.7, 0.9]],  A = [2, -1]
    sample 0 (A = 2):  t0: min(2.2, 2.2) = 2.2 -> -2.2;  t1: min(2.6, clip 1.2 * 2 = 2.4) -> -2.4  (high clip)
    sample 1 (A = -1): t0: min(-0.7, clip 0.8 * -1 = -0.8) -> 0.8 (low clip);  t1: -0.9 -> 0.9
    per-token loss = [[-2.2, -2.4], [0.8, 0.9]], sum -2.9
"""

import math

import pytest
import torch

from blip3o_rl.rl.loss import loss_types, policy_loss

RATIO = torch.tensor([[1.1, 1.3], [0.7, 0.9]])
ADV = torch.tensor([2.0, -1.0])
OLD = torch.full((2, 2), -2.0)
LOGP = OLD + RATIO.log()
ALL = torch.ones(2, dtype=torch.bool)


def loss_of(loss_type, mask=ALL, **kw):
    return policy_loss(LOGP, OLD, ADV, mask, loss_type=loss_type, **kw)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_full_batch_all_types(loss_type):
    # Fixed-length sequences, one micro-batch: every type is sum / 4 tokens.
    loss, stats = loss_of(loss_type, global_valid_tokens=4)
    assert loss.item() == pytest.approx(-2.9 / 4, abs=1e-6)
    assert stats.clip_high == pytest.approx(0.25)
    assert stats.clip_low == pytest.approx(0.25)
    assert stats.ratio_max == pytest.approx(1.3, abs=1e-6)
    assert stats.ratio_min == pytest.approx(0.7, abs=1e-6)
    assert stats.valid_tokens == 4


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_excluded_sample_leaves_numerator_and_normaliser(loss_type):
    # Only sample 0 counts: (-2.2 - 2.4) / 2 tokens = -2.3, whatever its advantage/ratio garbage is.
    adv = torch.tensor([2.0, math.nan])
    mask = torch.tensor([True, False])
    loss, stats = policy_loss(LOGP, OLD, adv, mask, loss_type=loss_type, global_valid_tokens=2)
    assert loss.item() == pytest.approx(-2.3, abs=1e-6)
    assert stats.valid_tokens == 2
    assert stats.clip_low == 0.0  # the excluded sample's low clip is not counted


def test_uneven_micro_batches_weigh_micro_batches_or_tokens():
    # This micro-batch holds 4 of the step's 6 valid tokens (another micro-batch holds 2).
    # grpo / bnpo / dr_grpo: each micro-batch's mean counts equally: (-2.9 / 4) / 2 micro-batches.
    # dapo: every token counts equally: -2.9 / 6.
    for t in ("grpo", "bnpo", "dr_grpo"):
        loss, _ = loss_of(t, num_micro_batches=2, global_valid_tokens=6)
        assert loss.item() == pytest.approx(-2.9 / 8, abs=1e-6), t
    loss, _ = loss_of("dapo", num_micro_batches=2, global_valid_tokens=6)
    assert loss.item() == pytest.approx(-2.9 / 6, abs=1e-6)


def test_grpo_differs_from_bnpo_when_a_micro_batch_has_excluded_samples():
    # Micro-batch of 3 samples x 2 tokens, sample 2 excluded; ratio 1, advantages [1, 0, *]:
    # per-token [[-1, -1], [0, 0]]; grpo: mean of per-sample means = (-1 + 0) / 2 = -0.5
    # bnpo: -2 / 4 tokens = -0.5; dapo with 6 global tokens: -2 / 6
    logp = torch.zeros(3, 2)
    mask = torch.tensor([True, True, False])
    adv = torch.tensor([1.0, 0.0, 5.0])
    g, _ = policy_loss(logp, logp, adv, mask, loss_type="grpo")
    b, _ = policy_loss(logp, logp, adv, mask, loss_type="bnpo")
    d, _ = policy_loss(logp, logp, adv, mask, loss_type="dapo", global_valid_tokens=6)
    assert g.item() == pytest.approx(-0.5) and b.item() == pytest.approx(-0.5)
    assert d.item() == pytest.approx(-2 / 6)


def test_epsilon_high_widens_only_the_upper_clip():
    # ratio 1.3, A = 1: eps_high 0.28 clips at 1.28 -> loss -1.28; symmetric 0.2 clips at 1.2
    logp, old = torch.tensor([[math.log(1.3)]]), torch.zeros(1, 1)
    adv, mask = torch.ones(1), torch.ones(1, dtype=torch.bool)
    hi, st = policy_loss(logp, old, adv, mask, epsilon=0.2, epsilon_high=0.28)
    sym, _ = policy_loss(logp, old, adv, mask, epsilon=0.2)
    assert hi.item() == pytest.approx(-1.28) and sym.item() == pytest.approx(-1.2)
    assert st.clip_high == 1.0
    # ratio 0.7, A = -1: the lower clip still uses epsilon (0.8), not epsilon_high
    lo, _ = policy_loss(torch.tensor([[math.log(0.7)]]), old, -adv, mask, epsilon=0.2, epsilon_high=0.28)
    assert lo.item() == pytest.approx(0.8)


def test_kl_term_value_and_gradient():
    # delta = ref - logp = -0.5: k3 = e^-0.5 + 0.5 - 1 = 0.106531; d k3 / d logp = 1 - e^-0.5 = 0.393469
    logp = torch.tensor([[-1.0]], requires_grad=True)
    ref = torch.tensor([[-1.5]])
    loss, st = policy_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, dtype=torch.bool), beta=0.1,
                           ref_logprobs=ref)
    assert st.kl == pytest.approx(math.exp(-0.5) - 0.5, abs=1e-6)
    assert loss.item() == pytest.approx(0.1 * (math.exp(-0.5) - 0.5), abs=1e-7)
    loss.backward()
    assert logp.grad.item() == pytest.approx(0.1 * (1 - math.exp(-0.5)), abs=1e-6)


def test_beta_needs_reference():
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(LOGP, OLD, ADV, ALL, beta=0.1)


def test_on_policy_gradient_is_minus_advantage_over_tokens():
    # μ = 1: old = current detached, ratio 1, d(-ratio * A)/d logp = -A; bnpo divides by 4 tokens
    logp = torch.zeros(2, 2, requires_grad=True)
    loss, st = policy_loss(logp, logp.detach(), ADV, ALL, loss_type="bnpo")
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.5, -0.5], [0.25, 0.25]]))
    assert st.clip_fraction == 0.0


def test_multi_iteration_ratio_clips_gradient():
    # μ > 1: a token already past the clip (ratio 1.3 > 1.2 with A > 0) gets no gradient
    logp = LOGP.clone().requires_grad_(True)
    loss, _ = policy_loss(logp, OLD, ADV, ALL, loss_type="bnpo")
    loss.backward()
    g = logp.grad
    assert g[0, 1] == 0.0 and g[1, 0] == 0.0  # both clipped tokens
    assert g[0, 0].item() == pytest.approx(-2 * 1.1 / 4, abs=1e-6)  # d(-r A)/d logp = -r A, / 4 tokens
    assert g[1, 1].item() == pytest.approx(0.9 / 4, abs=1e-6)


def test_gradient_accumulation_over_micro_batches_equals_full_batch():
    torch.manual_seed(0)
    logp = torch.randn(6, 5)
    old = logp + 0.1 * torch.randn(6, 5)
    adv = torch.randn(6)
    mask = torch.tensor([True, True, False, True, True, True])
    for t in loss_types():
        full = logp.clone().requires_grad_(True)
        lf, _ = policy_loss(full, old, adv, mask, loss_type=t, global_valid_tokens=25)
        lf.backward()
        acc = logp.clone().requires_grad_(True)
        for sl in (slice(0, 3), slice(3, 6)):  # two micro-batches with 2 and 3 valid samples
            lm, _ = policy_loss(acc[sl], old[sl], adv[sl], mask[sl], loss_type=t, num_micro_batches=2,
                                global_valid_tokens=25)
            lm.backward()
        if t == "dapo":  # token-level normalisation is exact under accumulation
            torch.testing.assert_close(acc.grad, full.grad)
        else:
            # Each micro-batch's mean counts 1/2: micro-batch 1 has 10 valid tokens, micro-batch 2 has 15,
            # the full batch 25, so the tokens weigh 25/20 and 25/30 of their full-batch weight.
            torch.testing.assert_close(acc.grad[:3], full.grad[:3] * 25 / 20)
            torch.testing.assert_close(acc.grad[3:], full.grad[3:] * 25 / 30)


def test_unknown_loss_type():
    with pytest.raises(ValueError, match="loss_type"):
        loss_of("ppo")
