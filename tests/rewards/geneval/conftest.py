"""Fixtures for the GenEval tests: tiny models saved to disk (the official files: `shared_data_file`)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_detector_dir(tmp_path_factory) -> Path:
    """A tiny random Mask2Former whose queries mostly see dogs (so detections exist)."""
    from blip3o_rl.rewards.geneval.testing import save_tiny_detector

    return save_tiny_detector(tmp_path_factory.mktemp("m2f"), object_bias={"dog": 8.0, "cat": 5.0})


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    from blip3o_rl.rewards.geneval.testing import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("clip"))
