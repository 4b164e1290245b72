"""Fixtures for the GenEval tests: paths to the shared official data and tiny models saved to disk."""

from __future__ import annotations

from pathlib import Path

import pytest

# tests/rewards/geneval/conftest.py -> repository root is parents[3]; shared/ sits beside the repository.
SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "geneval"


@pytest.fixture(scope="session")
def geneval_data() -> Path:
    if not (SHARED / "evaluation_metadata.jsonl").is_file():
        pytest.fail(f"official GenEval data not found at {SHARED} (expected ../shared beside the repository)")
    return SHARED


@pytest.fixture(scope="session")
def tiny_detector_dir(tmp_path_factory) -> Path:
    """A tiny random Mask2Former whose queries mostly see dogs (so detections exist)."""
    from blip3o_rl.rewards.geneval.tiny_models import save_tiny_detector

    return save_tiny_detector(tmp_path_factory.mktemp("m2f"), object_bias={"dog": 8.0, "cat": 5.0})


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    from blip3o_rl.rewards.geneval.tiny_models import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("clip"))
