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


@pytest.fixture(scope="session")
def tiny_janus(tmp_path_factory) -> Path:
    """A tiny random Janus-Pro folder in the official transformers layout (read-only for tests)."""
    from blip3o_rl.policies.janus.testing import write_tiny_janus

    return write_tiny_janus(tmp_path_factory.mktemp("tiny_janus") / "ckpt")


SERVER_REWARDS = REPO / "tests" / "rewards" / "server_rewards.py"  # test rewards a reward server loads by path


class RewardServer:
    """A ``blip3o-rl serve-reward`` subprocess on 127.0.0.1 (see the `reward_server` fixture)."""

    def __init__(self, proc, port: int, log: Path, args: list[str]):
        self.proc, self.port, self.log, self.args = proc, port, log, args
        self.url = f"http://127.0.0.1:{port}"

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, in-flight requests are cut."""
        self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def reward_server(tmp_path):
    """``start(reward_spec, *cli_args, port=0)`` -> a running `RewardServer`, stopped after the test.

    Waits (bounded, 90 s) for ``/health``; a server that exits early fails the test with its log.
    """
    import subprocess
    import sys
    import time
    import urllib.request

    started: list[RewardServer] = []

    def start(reward: str, *args: str, port: int = 0, env: dict[str, str] | None = None) -> RewardServer:
        n = len(started)
        port_file, log = tmp_path / f"server{n}.port", tmp_path / f"server{n}.log"
        cmd = [sys.executable, "-m", "blip3o_rl.scripts.cli", "serve-reward", "--reward", reward, "--host",
               "127.0.0.1", "--port", str(port), "--port-file", str(port_file), *args]
        with log.open("w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **(env or {})}, cwd=REPO)
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"reward server exited ({proc.returncode}):\n{log.read_text()}")
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"reward server did not start in 90 s:\n{log.read_text()}")
            if port_file.is_file():
                try:
                    url = f"http://127.0.0.1:{int(port_file.read_text())}"
                    with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
            time.sleep(0.1)
        server = RewardServer(proc, int(port_file.read_text()), log, cmd)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.terminate()
            try:
                server.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait(timeout=15)
