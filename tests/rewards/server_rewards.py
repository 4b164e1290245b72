"""Rewards for the reward-server tests, loaded by path (``server_rewards.py:name``) in and out of process."""

import os
import time

from blip3o_rl.rewards import RewardOutput


def grey(images, prompts, metadata, scale=1.0):
    """Mean grey level (x scale), with details; None for a prompt "skip" (a per-image failure)."""
    scores, details = [], []
    for image, prompt, meta in zip(images, prompts, metadata, strict=True):
        if prompt == "skip":
            scores.append(None)
            details.append({"error": "asked to skip"})
            continue
        pixels = image.convert("L").tobytes()
        scores.append(scale * sum(pixels) / (255 * len(pixels)))
        details.append({"size": list(image.size), "mode": image.mode, "id": meta.get("id")})
    return RewardOutput(scores, details)


def slow_grey(images, prompts, metadata, delay=0.05):
    """`grey` after ``delay`` seconds (so that a killed server is likely to be mid-request)."""
    time.sleep(delay)
    return grey(images, prompts, metadata)


def device(images, prompts, metadata):
    """1.0 per image; details name the worker's CUDA_VISIBLE_DEVICES and pid."""
    info = {"device": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}
    return RewardOutput([1.0] * len(images), [dict(info) for _ in images])


def out_of_memory(images, prompts, metadata):
    """Raises MemoryError (as a reward that cannot allocate would): the server answers 503."""
    raise MemoryError("cannot allocate the batch")


def one_short(images, prompts, metadata):
    """A broken reward: one score fewer than images."""
    return [0.5] * (len(images) - 1)


def keyed(images, prompts, metadata, api_key=None):
    """1.0 per image when given an ``api_key`` (a credential that must never leave the server)."""
    return RewardOutput([1.0 if api_key else None] * len(images), [{"keyed": bool(api_key)} for _ in images])
