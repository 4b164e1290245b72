"""The engine-mismatch importance weights (TRL's four modes and bounds) and the policy ratio's level
(GSPO): worked values here, TRL's own code as the oracle in test_trl_oracle_on_cpu.py."""

import math

import pytest
import torch

from blip3o_rl.rl.config import ConfigError, load_config
from blip3o_rl.rl.grpo.is_correction import ISCorrection, log_importance_weights
from blip3o_rl.rl.grpo.loss import policy_loss

OLD = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -1.0]])
ENGINE = torch.tensor([[-1.5, -0.5, -0.5], [-0.2, -1.0, math.nan]])  # an unknown engine log-prob: Δ 0
MASK = torch.ones(2, 3)


def test_token_modes_truncate_or_mask_each_token():
    # Δ = [[0.5, -1.5, 0], [-0.8, 0, 0 (nan)]]
    d = torch.tensor([[0.5, -1.5, 0.0], [-0.8, 0.0, 0.0]])
    w = ISCorrection("token_truncate", clip_max=1.5, clip_min=0.5).weights(OLD, ENGINE, MASK)
    torch.testing.assert_close(w, d.exp().clamp(0.5, 1.5))
    w = ISCorrection("token_mask", clip_max=1.5, clip_min=0.5).weights(OLD, ENGINE, MASK)
    e = d.exp()
    torch.testing.assert_close(w, torch.where((e < 0.5) | (e > 1.5), torch.zeros_like(e), e))


def test_sequence_modes_weigh_a_whole_sample_and_the_defaults_are_trl_s():
    c = ISCorrection()  # TRL's defaults: sequence_mask, clip_max 3, no lower bound
    assert (c.mode, c.clip_max, c.clip_min) == ("sequence_mask", 3.0, None)
    # Σ Δ = [-1.0, -0.8]: exp inside [0, 3] -> kept
    torch.testing.assert_close(c.weights(OLD, ENGINE, MASK), torch.tensor([[math.exp(-1.0)], [math.exp(-0.8)]]))
    trunc = ISCorrection("sequence_truncate", clip_max=3.0, clip_min=0.4)
    torch.testing.assert_close(trunc.weights(OLD, ENGINE, MASK), torch.tensor([[0.4], [math.exp(-0.8)]]))  # 0.37 -> 0.4
    big = ENGINE - 0.5  # Δ = [[1, -1, 0.5], [-0.3, 0.5, 0 (nan)]]: Σ Δ = [0.5, 0.2]
    w = ISCorrection("sequence_mask", clip_max=1.5).weights(OLD, big, MASK)
    torch.testing.assert_close(w, torch.tensor([[0.0], [math.exp(0.2)]]))  # exp(0.5) = 1.65 > 1.5: masked


def test_excluded_rows_get_weight_one_whatever_they_hold():
    garbage = torch.tensor([[math.inf, math.nan, -math.inf]])
    w = ISCorrection("sequence_truncate").weights(garbage, torch.zeros(1, 3), torch.zeros(1, 3))
    assert w.tolist() == [[1.0]]


def test_stats_name_capped_or_masked_fractions():
    w = torch.tensor([[3.0, 1.0], [0.5, 2.0]])
    st = ISCorrection("token_truncate", clip_max=3.0, clip_min=0.5).stats(w, torch.tensor([True, True]))
    assert {k: float(v) for k, v in st.items()} == {"rollout/is_weight_mean": 1.625, "rollout/is_capped_fraction": 0.5}
    st = ISCorrection("token_mask").stats(torch.tensor([[0.0, 1.0]]), torch.tensor([True]))
    assert float(st["rollout/is_masked_fraction"]) == 0.5
    st = ISCorrection("token_mask").stats(torch.tensor([[0.0, 1.0], [0.0, 0.0]]), torch.tensor([True, False]))
    assert float(st["rollout/is_masked_fraction"]) == 0.5  # the excluded row's tokens are not counted


def test_bad_modes_and_bounds_are_refused():
    with pytest.raises(ValueError, match="must be one of"):
        ISCorrection("token")
    with pytest.raises(ValueError, match="clip_min <= 1 <= clip_max"):
        ISCorrection(clip_max=0.5)


def test_sequence_level_is_one_ratio_per_sample_the_mean_token_log_ratio():
    logp = torch.tensor([[-1.0, -2.0, -3.0, -4.0]])
    old = torch.tensor([[-1.5, -2.0, -2.0, -4.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    lr = log_importance_weights(logp, old, mask, "sequence")
    torch.testing.assert_close(lr, torch.full((1, 4), (0.5 + 0.0 - 1.0) / 3))
    torch.testing.assert_close(log_importance_weights(logp, old, mask, "token"), logp - old)


def test_gspo_clips_the_sample_s_ratio_as_a_whole():
    # one sample, A = 1: token ratios exp([0.5, -0.5]); their sequence ratio is exp(0) = 1 (no clipping)
    # and its gradient is the mean of the tokens' grads: d/dlogp_t of -ratio * A = -1/2 each.
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -1.5]])
    loss, st = policy_loss(logp, old, torch.tensor([1.0]), torch.tensor([True]), loss_type="grpo",
                           importance_sampling_level="sequence")
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(-1.0))
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.5, -0.5]]))
    assert st.ratio_min == st.ratio_max == pytest.approx(1.0)
    with pytest.raises(ValueError, match="importance_sampling_level"):
        policy_loss(logp, old, torch.tensor([1.0]), torch.tensor([True]), importance_sampling_level="seq")


def test_config_takes_trl_s_names_and_refuses_bad_values():
    cfg = load_config("demo", ["rollout.is_mode=token_truncate", "rollout.is_clip_max=2.0",
                               "grpo.importance_sampling_level=sequence"])
    assert (cfg.rollout.is_mode, cfg.rollout.is_clip_max, cfg.grpo.importance_sampling_level) == \
        ("token_truncate", 2.0, "sequence")
    assert load_config("demo").rollout.is_mode == "sequence_mask"
    with pytest.raises(ConfigError, match=r"rollout\.is_mode"):
        load_config("demo", ["rollout.is_mode=truncate"])
    with pytest.raises(ConfigError, match=r"grpo\.importance_sampling_level"):
        load_config("demo", ["grpo.importance_sampling_level=sample"])
    with pytest.raises(ConfigError, match=r"grpo\.scale_rewards"):
        load_config("demo", ["grpo.reward_aggregation=normalize_then_sum", "grpo.scale_rewards=none"])
