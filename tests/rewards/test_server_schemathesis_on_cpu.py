"""schemathesis over the reward server's own OpenAPI schema (with the real ``request`` JSON shape and the
bearer scheme), against a real server on 127.0.0.1: no generated request may get a 5xx.

Bounded: a fixed seed, ``-n`` examples per operation, a per-request timeout and a subprocess timeout.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

SERVER_REWARDS = Path(__file__).with_name("server_rewards.py")
TOKEN = "s3cret-token-for-the-fuzzer"
ST = Path(sys.executable).with_name("st")  # schemathesis' CLI, a dev dependency


def test_schemathesis_finds_no_server_error(reward_server, tmp_path):
    if not ST.exists():
        pytest.fail(f"schemathesis is a dev dependency ({ST} missing): pip install -e '.[dev]'")
    server = reward_server(f"{SERVER_REWARDS}:grey", "--token", TOKEN)
    schema = requests.get(f"{server.url}/openapi.json", timeout=30).json()
    request = schema["paths"]["/score"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert request["properties"]["request"]["properties"]["prompts"]["type"] == "array"  # the real shape
    proc = subprocess.run(
        [str(ST), "run", f"{server.url}/openapi.json", "--header", f"Authorization: Bearer {TOKEN}",
         "--checks", "not_a_server_error", "--max-examples", "25", "--seed", "21", "--request-timeout", "30",
         "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "No issues found" in out, out[-3000:]
    log = server.log.read_text()
    assert "POST /score -> 200" in log and "POST /score -> 4" in log  # it reached both answers
    assert "-> 5" not in log and "Traceback" not in log
