"""Suite-wide settings and shared fixtures.

Tiny models are dominated by per-op overhead: on a shared 2-core machine, intra-op threading makes
them up to ~100x slower, so the tests run torch single-threaded.
"""

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def tiny_world_dir(tmp_path_factory) -> Path:
    """A random tiny-world model folder, written once per test session by the project's own code."""
    from blip3o_rl.tiny import make_tiny_world

    return make_tiny_world(tmp_path_factory.mktemp("tiny_world"), seed=0)


@pytest.fixture
def tiny_policy(tiny_world_dir):
    from blip3o_rl.tiny import TinyWorldPolicy

    return TinyWorldPolicy.from_pretrained(tiny_world_dir)
