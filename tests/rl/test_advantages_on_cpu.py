import math

import pytest
import torch

from blip3o_rl.rl.grpo.advantages import count_groups_without_baseline, group_advantages

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


# --------------------------------------------------------------------------- several rewards
from blip3o_rl.rl.grpo.advantages import reward_advantages  # noqa: E402

E = 1e-4


def test_sum_aggregation_is_group_advantages_of_the_weighted_total():
    # weights [1, 2]: totals [1 + 0, 0 + 2] = [1, 2] -> as group_advantages([1, 2])
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(reward_advantages(scores, [1.0, 2.0], 2),
                               group_advantages(torch.tensor([1.0, 2.0]), 2))


def test_normalize_then_sum_worked_values():
    # one group of 3, two rewards in very different units:
    #   r_a = [0, 10, 20]: mean 10, std 10      -> z_a = [-1, 0, 1] · 10 / (10 + 1e-4)
    #   r_b = [1, 0, 0.5]: mean 0.5, std 0.5    -> z_b = [1, -1, 0] · 0.5 / (0.5 + 1e-4)
    # weights [1, 1]: s = z_a + z_b ≈ [0, -1, 1]; then group-normalised: mean 0, std ≈ 1 -> A ≈ s / (1 + 1e-4)
    scores = torch.tensor([[0.0, 1.0], [10.0, 0.0], [20.0, 0.5]])
    za = torch.tensor([-1.0, 0.0, 1.0]) * 10 / (10 + E)
    zb = torch.tensor([1.0, -1.0, 0.0]) * 0.5 / (0.5 + E)
    s = za + zb
    expected = (s - s.mean()) / (s.std() + E)
    torch.testing.assert_close(reward_advantages(scores, [1.0, 1.0], 3, aggregation="normalize_then_sum"), expected)
    # a plain sum would follow r_a alone: totals [1, 10, 20.5] rank the samples as r_a does
    plain = reward_advantages(scores, [1.0, 1.0], 3, aggregation="sum")
    assert plain.argsort().tolist() == [0, 1, 2]
    assert expected.argsort().tolist() == [1, 0, 2]


def test_normalize_then_sum_is_invariant_to_a_reward_s_units():
    torch.manual_seed(0)
    scores = torch.rand(8, 2)
    scaled = scores * torch.tensor([100.0, 1.0]) + torch.tensor([-3.0, 0.0])
    a = reward_advantages(scores, [1.0, 0.5], 4, aggregation="normalize_then_sum")
    b = reward_advantages(scaled, [1.0, 0.5], 4, aggregation="normalize_then_sum")
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)  # up to the 1e-4 in each std


def test_normalize_then_sum_weights_and_none_scaling():
    # group of 2: r_a = [0, 1] -> z_a = [-1, 1] · 0.5 / (0.7071 + 1e-4) = ∓0.70700; r_b constant -> z_b = [0, 0]
    # weights [2, 5]: s = 2 z_a = ∓1.41400; scale_rewards="none" only centres it (mean already 0)
    scores = torch.tensor([[0.0, 3.0], [1.0, 3.0]])
    z = 0.5 / (math.sqrt(0.5) + E)
    adv = reward_advantages(scores, [2.0, 5.0], 2, scale_rewards="none", aggregation="normalize_then_sum_per_group")
    torch.testing.assert_close(adv, torch.tensor([-2 * z, 2 * z]))
    with pytest.raises(ValueError, match="does not apply"):  # TRL's GDPO always standardises over the batch
        reward_advantages(scores, [2.0, 5.0], 2, scale_rewards="none", aggregation="normalize_then_sum")


def test_normalize_then_sum_standardises_over_the_batch_the_per_group_variant_within_groups():
    # two groups of 2, one reward: z1 = ∓0.70700, z2 = ∓0.70709 (as below). GDPO (TRL): the batch std of
    # the four (scale_rewards ignored); per group: each group's own std (sqrt(2) z).
    scores = torch.tensor([[0.0], [1.0], [0.0], [5.0]])
    z1, z2 = 0.5 / (math.sqrt(0.5) + E), 2.5 / (math.sqrt(12.5) + E)
    batch_sd = math.sqrt((2 * z1**2 + 2 * z2**2) / 3) + E
    gdpo = torch.tensor([-z1 / batch_sd, z1 / batch_sd, -z2 / batch_sd, z2 / batch_sd])
    for scale in ("group", "batch"):
        torch.testing.assert_close(reward_advantages(scores, [1.0], 2, scale, "normalize_then_sum"), gdpo)
    per_group = reward_advantages(scores, [1.0], 2, "group", "normalize_then_sum_per_group")
    g1, g2 = z1 / (math.sqrt(2) * z1 + E), z2 / (math.sqrt(2) * z2 + E)
    torch.testing.assert_close(per_group, torch.tensor([-g1, g1, -g2, g2]))


def test_a_sample_failed_by_one_reward_leaves_every_reward_s_statistics():
    # group of 3; sample 1 failed reward b. For reward a the statistics use samples 0 and 2 only:
    #   r_a = [0, (99), 2] -> mean 1, std sqrt(2) -> z_a = [-1, -, 1] / (sqrt(2) + 1e-4)
    #   r_b = [1, nan, 1]  -> constant -> z_b = [0, -, 0]
    # s = z_a; group-normalised over the two: ∓0.7071 / (std(s) + 1e-4); sample 1 gets 0
    scores = torch.tensor([[0.0, 1.0], [99.0, NAN], [2.0, 1.0]])
    adv = reward_advantages(scores, [1.0, 1.0], 3, aggregation="normalize_then_sum")
    za = 1 / (math.sqrt(2) + E)
    sd = math.sqrt(2) * za
    torch.testing.assert_close(adv, torch.tensor([-za / (sd + E), 0.0, za / (sd + E)]))
    # the same with sum: the failed sample's 99 never enters the mean either
    plain = reward_advantages(scores, [1.0, 1.0], 3, aggregation="sum")
    torch.testing.assert_close(plain, group_advantages(torch.tensor([1.0, NAN, 3.0]), 3))


def test_normalize_then_sum_batch_scaling():
    # two groups of 2, one reward: [0, 1] -> z1 = ∓0.5 / (0.70711 + 1e-4) = ∓0.70700;
    # [0, 5] -> z2 = ∓2.5 / (3.53553 + 1e-4) = ∓0.70709. s = z; batch std of [-z1, z1, -z2, z2]
    # (mean 0) = sqrt((2 z1² + 2 z2²) / 3) -> A = s / (that + 1e-4)
    scores = torch.tensor([[0.0], [1.0], [0.0], [5.0]])
    z1, z2 = 0.5 / (math.sqrt(0.5) + E), 2.5 / (math.sqrt(12.5) + E)
    sd = math.sqrt((2 * z1**2 + 2 * z2**2) / 3) + E
    adv = reward_advantages(scores, [1.0], 2, scale_rewards="batch", aggregation="normalize_then_sum")
    torch.testing.assert_close(adv, torch.tensor([-z1 / sd, z1 / sd, -z2 / sd, z2 / sd]))


def test_reward_advantages_checks_its_arguments():
    with pytest.raises(ValueError, match="reward_aggregation"):
        reward_advantages(torch.zeros(2, 1), [1.0], 2, aggregation="mean")
    with pytest.raises(ValueError, match="weights"):
        reward_advantages(torch.zeros(2, 2), [1.0], 2)
