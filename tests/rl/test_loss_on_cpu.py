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

from blip3o_rl.rl.grpo.loss import loss_types, policy_loss

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


def test_micro_batch_share_uses_the_whole_steps_counts():
    # This micro-batch holds 4 of the step's 6 valid tokens (3 valid samples of 2 tokens in all).
    # bnpo / dapo: every token of the step counts equally: -2.9 / 6.
    # grpo: per-sample means [-2.3, 0.85] summed, / 3 valid samples of the step.
    # dr_grpo: sum / (3 valid samples * 2 tokens) = -2.9 / 6.
    for t in ("bnpo", "dapo", "dr_grpo"):
        loss, _ = loss_of(t, global_valid_tokens=6, global_valid_samples=3)
        assert loss.item() == pytest.approx(-2.9 / 6, abs=1e-6), t
    loss, _ = loss_of("grpo", global_valid_tokens=6, global_valid_samples=3)
    assert loss.item() == pytest.approx((-2.3 + 0.85) / 3, abs=1e-6)


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


class LinearPolicy:
    """Log-probs of fixed codes under ``log_softmax(h @ W)``: a parametric stand-in for the trainer's forward."""

    def __init__(self, b=16, n=6, h=5, k=7, seed=0):
        g = torch.Generator().manual_seed(seed)
        dt = torch.float64
        self.hidden = torch.randn(b, n, h, generator=g, dtype=dt)
        self.codes = torch.randint(0, k, (b, n), generator=g)
        self.w = torch.randn(h, k, generator=g, dtype=dt)
        self.w_old = self.w + 0.3 * torch.randn(h, k, generator=g, dtype=dt)  # μ > 1: ratios away from 1
        self.w_ref = self.w + 0.3 * torch.randn(h, k, generator=g, dtype=dt)
        self.adv = torch.randn(b, generator=g, dtype=dt)

    def logprobs(self, w, rows):
        logits = self.hidden[rows] @ w  # [b, n, k]
        return torch.log_softmax(logits, -1).gather(-1, self.codes[rows, :, None]).squeeze(-1)

    def grad(self, loss_type, mask, splits):
        """dL/dW accumulated over micro-batches ``splits`` (row slices), as the trainer does."""
        w = self.w.clone().requires_grad_(True)
        n = self.codes.shape[1]
        s_valid = int(mask.sum())
        adv = torch.where(mask, self.adv, torch.full_like(self.adv, math.nan))  # NaN on excluded rows
        for sl in splits:
            loss, _ = policy_loss(
                self.logprobs(w, sl), self.logprobs(self.w_old, sl), adv[sl], mask[sl], loss_type=loss_type,
                epsilon=0.2, beta=0.04, ref_logprobs=self.logprobs(self.w_ref, sl),
                global_valid_tokens=s_valid * n, global_valid_samples=s_valid,
            )
            loss.backward()
        return w.grad


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_micro_batch_size_is_a_memory_setting_only(loss_type):
    """The update for micro_batch_size 16 equals that of an uneven split (5 + 7 + 4) with excluded samples.

    float64, so the tolerance (rtol 1e-10, atol 1e-12) bounds only summation-order rounding; the old
    per-micro-batch normalisation differed by up to 0.51 relative (issue 10).
    """
    pol = LinearPolicy()
    mask = torch.ones(16, dtype=torch.bool)
    mask[[1, 2, 6, 13]] = False  # 4 excluded samples: 2 / 3 / 1 valid-sample gaps across the split
    whole = pol.grad(loss_type, mask, [slice(0, 16)])
    split = pol.grad(loss_type, mask, [slice(0, 5), slice(5, 12), slice(12, 16)])
    assert torch.isfinite(whole).all() and whole.abs().max() > 1e-3
    torch.testing.assert_close(split, whole, rtol=1e-10, atol=1e-12)


def test_nan_inputs_of_excluded_rows_give_finite_gradients():
    # NaN advantage, log-probs and reference on an excluded row: zeroed before any arithmetic.
    logp = torch.tensor([[-1.0, -2.0], [math.nan, math.inf]], requires_grad=True)
    old = torch.tensor([[-1.1, -2.0], [math.nan, 0.0]])
    ref = torch.tensor([[-1.0, -1.5], [math.inf, math.nan]])
    mask = torch.tensor([True, False])
    for t in loss_types():
        logp.grad = None
        loss, st = policy_loss(logp, old, torch.tensor([1.0, math.nan]), mask, loss_type=t, beta=0.1,
                               ref_logprobs=ref)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logp.grad).all(), t
        assert (logp.grad[1] == 0).all() and st.valid_tokens == 2


def test_unknown_loss_type():
    with pytest.raises(ValueError, match="loss_type"):
        loss_of("ppo")
