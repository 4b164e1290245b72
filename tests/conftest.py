"""Suite-wide settings and shared fixtures.

Tiny models are dominated by per-op overhead: on a shared 2-core machine, intra-op threading makes
them up to ~100x slower, so the tests run torch single-threaded.

Benchmark prompt files (the official GenEval metadata, the Flow-GRPO OCR test set) are not shipped: tests
that need one ask `shared_data_file` for it and are skipped, naming the file, where it is absent. They are
looked for in ``$BLIP3O_RL_SHARED_DATA``, else in ``shared/data`` beside the repository (as CI has it).

Tests marked ``gpu`` are skipped without a CUDA device.
"""

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BLIP3O_RL_SHARED_DATA") or REPO.parent / "shared" / "data")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def find_shared_data_file(relative: str) -> Path | None:
    """``SHARED_DATA / relative`` if that file exists, else None."""
    path = SHARED_DATA / relative
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def shared_data_file() -> Callable[..., Path | None]:
    """``shared_data_file("geneval/evaluation_metadata.jsonl")``: the path of that benchmark file, or a skip
    naming it when it is absent; ``required=False`` returns None instead of skipping."""

    def get(relative: str, required: bool = True) -> Path | None:
        path = find_shared_data_file(relative)
        if path is None and required:
            pytest.skip(f"benchmark file {relative} not found in {SHARED_DATA} (not shipped; "
                        "set BLIP3O_RL_SHARED_DATA to the folder holding it)")
        return path

    return get


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


@pytest.fixture(scope="session")
def tiny_blip3o_next(tmp_path_factory) -> Path:
    """A tiny random BLIP3o-NEXT checkpoint in the official layout, written by the project's script.

    Read-only for tests: copy it before changing anything.
    """
    from blip3o_rl.policies.blip3o_next.testing import write_tiny_checkpoint

    folder = tmp_path_factory.mktemp("tiny_blip3o_next") / "ckpt"
    write_tiny_checkpoint(folder)
    return folder
