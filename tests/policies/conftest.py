"""Fixtures shared by the BLIP3o-NEXT tests."""

from pathlib import Path

import pytest

from blip3o_rl.scripts.make_tiny_blip3o_next import main as make_tiny


@pytest.fixture(scope="session")
def tiny_blip3o_next(tmp_path_factory) -> Path:
    """A tiny random BLIP3o-NEXT checkpoint in the official layout, written by the project's script.

    Read-only for tests: copy it before changing anything.
    """
    folder = tmp_path_factory.mktemp("tiny_blip3o_next") / "ckpt"
    assert make_tiny([str(folder)]) == 0
    return folder
