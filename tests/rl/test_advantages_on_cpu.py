import math

import pytest
import torch

from blip3o_rl.rl.advantages import count_groups_without_baseline, group_advantages

NAN = math.nan


def test_group_scaling_matches_hand_values():
    # group [1, 2]: mean 1.5, Bessel std sqrt(0.5) = 0.707107 -> ±0.5 / (0.707107 + 1e-4)
    # group [3, 5]: mean 4,   std sqrt(2)   = 1.414214 -> ±1.0 / (1.414214 + 1e-4)
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0, 5.0]), 2)
    a, b = 0.5 / (math.sqrt(0.5) + 1e-4), 1.0 / (math.sqrt(2) + 1e-4)
    torch.testing.assert_close(adv, torch.tensor([-a, a, -b, b]))


def test_batch_scaling_uses_group_mean_and_global_std():
    # group means 0.5 and 1.5; batch std over [0, 1, 0, 3]: mean 1, var (1 + 0 + 1 + 4) / 3 = 2
    adv = group_advantages(torch.tensor([0.0, 1.0, 0.0, 3.0]), 2, scale_rewards="batch")
    s = math.sqrt(2) + 1e-4
    torch.testing.assert_close(adv, torch.tensor([-0.5 / s, 0.5 / s, -1.5 / s, 1.5 / s]))


def test_no_scaling_only_centres():
    adv = group_advantages(torch.tensor([0.0, 1.0, 0.0, 3.0]), 2, scale_rewards="none")
    torch.testing.assert_close(adv, torch.tensor([-0.5, 0.5, -1.5, 1.5]))


def test_failed_samples_leave_group_statistics_and_get_zero():
    # group [0, nan, 1]: stats over [0, 1] -> mean 0.5, std 0.707107; the failed sample gets 0
    adv = group_advantages(torch.tensor([0.0, NAN, 1.0]), 3)
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    torch.testing.assert_close(adv, torch.tensor([-a, 0.0, a]))


def test_groups_with_fewer_than_two_valid_get_zero_and_are_counted():
    rewards = torch.tensor([1.0, NAN, NAN, NAN, 3.0, 5.0])
    adv = group_advantages(rewards, 2)
    assert adv[:4].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert adv[4] < 0 < adv[5]
    assert count_groups_without_baseline(rewards, 2) == 2


def test_batch_std_ignores_failed_samples():
    # valid rewards [0, 1, 0, 3] as above, plus one NaN in a third group that still has 2 valid
    r = torch.tensor([0.0, 1.0, 0.0, 3.0, NAN, 2.0, 2.0])
    with pytest.raises(ValueError):
        group_advantages(r, 2, "batch")  # 7 does not split into groups of 2
    adv = group_advantages(torch.tensor([0.0, 1.0, 0.0, 3.0, NAN, NAN]), 2, "batch")
    s = math.sqrt(2) + 1e-4
    torch.testing.assert_close(adv, torch.tensor([-0.5 / s, 0.5 / s, -1.5 / s, 1.5 / s, 0.0, 0.0]))


def test_equal_rewards_give_zero_not_nan():
    adv = group_advantages(torch.tensor([0.7, 0.7, 0.7, 0.7]), 4)
    assert torch.equal(adv, torch.zeros(4))


@pytest.mark.parametrize(
    ("rewards", "g", "scale"),
    [(torch.zeros(2, 2), 2, "group"), (torch.zeros(4), 1, "group"), (torch.zeros(4), 2, "mean")],
)
def test_bad_arguments_raise(rewards, g, scale):
    with pytest.raises(ValueError):
        group_advantages(rewards, g, scale)
