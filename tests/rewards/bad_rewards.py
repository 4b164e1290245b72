"""Rewards that return the wrong shape or type, loaded by path (``bad_rewards.py:name``) in and out of process."""


def wrong_len(images, prompts, metadata):
    """One score too few."""
    return [0.5] * (len(images) - 1)


def strings_and_bools(images, prompts, metadata):
    """A number, a numeric string, a bool, None, then numbers: only the numbers are scores."""
    bad = [0.25, "0.51", True, None]
    return [bad[i] if i < len(bad) else 0.75 for i in range(len(images))]
