"""The update's step statistics: token-weighted means, minima and maxima over micro-batches and ranks, reduced
in one gather (worked values in the comments)."""

import math

import pytest
import torch

from blip3o_rl.rl.grpo.loss import GRPOLoss
from blip3o_rl.rl.parallel.distributed import Collectives
from blip3o_rl.rl.update import StepStats


class _TwoRanks:
    """`Collectives.gather_rows` of two ranks in one process: this rank's row, then ``other``'s."""

    def __init__(self, other: StepStats):
        self.other = other

    def gather_rows(self, row):
        o = self.other
        return torch.stack([row, torch.cat([o._sums, -o._min, o._max])])


def _stats(kl_means, tokens, ratio_min, ratio_max):
    s = StepStats(torch.device("cpu"))
    for m, n in zip(kl_means, tokens, strict=True):
        s.add(torch.tensor(n), {"kl": torch.tensor(m)})
    s.extremes(torch.tensor(ratio_min), torch.tensor(ratio_max))
    return s


def test_token_weighted_means_and_extremes_on_one_process():
    # kl: (0.5 * 2 + 0.2 * 8) / 10 = 0.26; an entropy never added (weight 0) is left out
    s = _stats([0.5, 0.2], [2, 8], 0.9, 1.1)
    out = s.result(Collectives(0, 1, torch.device("cpu")))
    assert out["kl"] == pytest.approx(0.26) and "entropy" not in out
    assert (out["ratio/min"], out["ratio/max"]) == pytest.approx((0.9, 1.1))


def test_two_ranks_add_their_sums_and_take_extremes():
    # rank 0: kl 0.5 over 2 tokens; rank 1: kl 0.1 over 6 tokens -> (1.0 + 0.6) / 8 = 0.2
    mine, other = _stats([0.5], [2], 0.8, 1.0), _stats([0.1], [6], 0.95, 1.3)
    out = mine.result(_TwoRanks(other))
    assert out["kl"] == pytest.approx(0.2)
    assert (out["ratio/min"], out["ratio/max"]) == pytest.approx((0.8, 1.3))


def test_a_micro_batch_without_valid_tokens_adds_nothing():
    s = StepStats(torch.device("cpu"))
    s.add(torch.tensor(0), {"entropy": torch.tensor(0.0)})
    out = s.result(Collectives(0, 1, torch.device("cpu")))
    assert "entropy" not in out and out["ratio/min"] == math.inf


def test_the_loss_object_is_built_from_the_config_and_refuses_an_unknown_type():
    from blip3o_rl.rl.config import GRPOConfig

    loss = GRPOLoss.from_config(GRPOConfig(loss_type="dr_grpo", epsilon=0.1, epsilon_high=0.3, beta=0.02))
    assert (loss.loss_type, loss.epsilon, loss.epsilon_high, loss.beta) == ("dr_grpo", 0.1, 0.3, 0.02)
    assert GRPOLoss.from_config(GRPOConfig(importance_sampling_level="sequence")).importance_sampling_level == "sequence"
    with pytest.raises(ValueError, match="loss_type must be one of"):
        GRPOLoss("nope")
