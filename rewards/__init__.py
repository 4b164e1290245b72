"""Rewards: `load_reward(spec, **kwargs)` builds any registered or user-supplied reward."""

from .base import (
    CombinedScores,
    FunctionReward,
    Reward,
    RewardOutput,
    ScoreCountError,
    WeightedRewards,
    check_scores,
    load_reward,
    register_reward,
    registered_rewards,
    score_batch,
)

__all__ = [
    "CombinedScores",
    "FunctionReward",
    "Reward",
    "RewardOutput",
    "ScoreCountError",
    "WeightedRewards",
    "check_scores",
    "load_reward",
    "register_reward",
    "registered_rewards",
    "score_batch",
]
