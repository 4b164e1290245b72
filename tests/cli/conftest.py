"""Helpers for the end-to-end tests of the `blip3o-rl` command (this folder holds all of them).

Most tests call the command's `main(argv)` in process (fast, `capsys` reads its output); `cli` runs it as
a user does, in a subprocess of the installed package.
"""

import subprocess
import sys
from collections.abc import Callable

import pytest

COMMAND = [sys.executable, "-m", "blip3o_rl.scripts.cli"]


@pytest.fixture(scope="session")
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cli("train", "demo", ..., cwd=None)``: `blip3o-rl ARGS` in a subprocess; returns the finished
    process (exit code, text stdout and stderr)."""

    def run(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*COMMAND, *args], capture_output=True, text=True, cwd=cwd, timeout=300)

    return run
