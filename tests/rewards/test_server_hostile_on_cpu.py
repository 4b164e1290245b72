"""The reward server under hostile or broken input, against a real server on 127.0.0.1: the requests
that once gave 500s, memory pressure, a broken reward, secrets in kwargs, slow and vanishing clients.

Every wait is bounded (request timeouts, socket timeouts, polls with deadlines).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from pathlib import Path

import requests
from PIL import Image

from blip3o_rl.rewards.remote import RemoteReward, encode_image

SERVER_REWARDS = Path(__file__).with_name("server_rewards.py")
GREY = f"{SERVER_REWARDS}:grey"
TOKEN = "s3cret-token"


def _png(size=(8, 8), colour=(10, 20, 30)) -> bytes:
    return encode_image(Image.new("RGB", size, colour))[0]


def _post(url, text, pngs, token=TOKEN, rid=None, timeout=60):
    files = [("request", (None, text, "application/json"))]
    files += [("images", (f"{i}.png", png, "image/png")) for i, png in enumerate(pngs)]
    headers = {"X-Request-ID": rid or uuid.uuid4().hex, "Authorization": f"Bearer {token}"}
    return requests.post(f"{url}/score", files=files, headers=headers, timeout=timeout)


def _stats(url):
    return requests.get(f"{url}/stats", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()


def test_json_that_once_gave_500s_is_a_4xx_with_a_reason(reward_server):
    server = reward_server(GREY, "--token", TOKEN)
    png = _png()
    deep = '{"prompts": ["p"], "metadata": [' + "[" * 40 + "]" * 40 + "]}"
    cases = {
        "5,000-digit integer": ('{"prompts": ["p"], "metadata": [{"n": ' + "9" * 5000 + "}]}", 400, "digit"),
        "nested 100,000 deep": ("[" * 100_000 + "]" * 100_000, 400, "nested deeper"),
        "nested past the depth bound": (deep, 400, "nested deeper than 32"),
        "NaN": ('{"prompts": ["p"], "metadata": [{"x": NaN}]}', 400, "NaN is not a JSON number"),
        "a float out of range": ('{"prompts": ["p"], "metadata": [{"x": 1e999}]}', 400, "out of the float range"),
        "a lone surrogate": ('{"prompts": ["\\ud800"]}', 400, "UnicodeEncodeError"),
        "a lone surrogate in a key": ('{"prompts": ["p"], "metadata": [{"\\udfff": 1}]}', 400, "UnicodeEncodeError"),
        "JSON over its size bound": (json.dumps({"prompts": ["p"], "metadata": [{"x": "y" * (5 * 2**20)}]}), 413,
                                     "over the limit"),
    }
    for name, (text, status, reason) in cases.items():
        r = _post(server.url, text, [png])
        assert r.status_code == status, (name, r.status_code, r.text[:300])
        assert reason in r.json()["detail"], (name, r.json()["detail"][:300])
        assert _post(server.url, '{"prompts": ["p"]}', [png]).status_code == 200, name  # still serving
    assert "Traceback" not in server.log.read_text()


def test_pixel_counts_come_from_the_headers_before_any_decode(reward_server):
    server = reward_server(GREY, "--token", TOKEN, "--max-total-pixels", "15000", "--max-image-pixels", "12000")
    good = _png((100, 100))
    truncated = good[: len(good) // 2]  # a valid header, pixels that cannot be decoded
    r = _post(server.url, '{"prompts": ["a", "b"]}', [good, truncated])
    assert r.status_code == 413 and "add up to 20000 pixels" in r.json()["detail"]  # not 422: nothing decoded
    r = _post(server.url, '{"prompts": ["a"]}', [_png((120, 101))])
    assert r.status_code == 413 and r.json()["errors"] == [{"index": 0, "error": "12120 pixels > 12000"}]
    r = _post(server.url, '{"prompts": ["a"]}', [truncated])  # within the limits: decoded, and that fails
    assert r.status_code == 422 and "cannot be decoded" in r.json()["detail"]
    assert _stats(server.url)["scored_requests"] == 0


def test_a_full_worker_answers_503_with_retry_after_and_the_client_waits(reward_server):
    server = reward_server(f"{SERVER_REWARDS}:slow_grey", "--token", TOKEN, "--kwargs", '{"delay": 4.0}',
                           "--queue-timeout-s", "0.5")
    first: dict = {}
    worker = threading.Thread(target=lambda: first.update(r=_post(server.url, '{"prompts": ["a"]}', [_png()])),
                              daemon=True)
    worker.start()
    deadline = time.monotonic() + 60
    while _stats(server.url)["requests"] < 1:  # the first request is in (it scores for 4 s)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = _post(server.url, '{"prompts": ["b"]}', [_png()])
    assert r.status_code == 503 and r.headers["Retry-After"] == "2" and "scoring slots" in r.json()["detail"]
    worker.join(timeout=60)
    assert first["r"].status_code == 200
    client = RemoteReward(server.url, token=TOKEN, backoff_s=0.1)  # the default retry budget outlasts the queue
    assert client([Image.new("RGB", (8, 8))] * 2, ["a", "b"], [{}, {}]).scores[0] is not None
    assert _stats(server.url)["busy"] >= 1


def test_memory_error_is_503_and_a_broken_reward_is_not_retried(reward_server, caplog):
    oom = reward_server(f"{SERVER_REWARDS}:out_of_memory", "--token", TOKEN)
    r = _post(oom.url, '{"prompts": ["a"]}', [_png()])
    assert r.status_code == 503 and "Retry-After" in r.headers and "out of memory" in r.json()["detail"]

    broken = reward_server(f"{SERVER_REWARDS}:one_short", "--token", TOKEN)
    out = RemoteReward(broken.url, token=TOKEN)([Image.new("RGB", (8, 8))] * 3, ["a", "b", "c"], [{}] * 3)
    assert out.scores == [None, None, None]  # excluded, never 0, with the reason
    assert "HTTP 422" in out.details[0]["error"] and "2 scores" in out.details[0]["error"], out.details[0]
    assert out.details[0]["remote"]["attempts"] == 1 and _stats(broken.url)["requests"] == 1  # ran once

    client = RemoteReward(broken.url, token="wrong")
    out = client([Image.new("RGB", (8, 8))], ["a"], [{}])
    assert out.scores == [None] and "HTTP 403: wrong bearer token" in out.details[0]["error"]
    assert "failed after 1 attempt(s)" in out.details[0]["error"]  # a 4xx is not retried


def test_kwargs_never_leave_the_server(reward_server, tmp_path):
    secret = "sk-" + uuid.uuid4().hex
    kwargs_file = tmp_path / "kwargs.json"
    kwargs_file.write_text(json.dumps({"api_key": secret}))
    kwargs_file.chmod(0o600)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    server = reward_server(f"{SERVER_REWARDS}:keyed", "--kwargs-file", str(kwargs_file), "--token-file", str(token_file))
    info = requests.get(f"{server.url}/info", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    scored = _post(server.url, '{"prompts": ["a"]}', [_png()])
    assert info.status_code == scored.status_code == 200 and scored.json()["scores"] == [1.0]  # it had the key
    for text in (info.text, scored.text, server.log.read_text(), requests.get(f"{server.url}/openapi.json",
                                                                              timeout=30).text):
        assert secret not in text
    assert len(info.json()["reward"]["kwargs_sha256"]) == 64


def _raw(port: int, data: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(data)
    return s


def test_slow_and_vanishing_clients(reward_server):
    server = reward_server(GREY, "--header-timeout-s", "1", "--body-timeout-s", "1")
    with _raw(server.port, b"POST /score HTTP/1.1\r\nHost: x\r\n") as s:  # headers never finished
        assert s.recv(100) == b""  # closed by the server, well before the 60 s socket timeout
    head = (b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 1000\r\n\r\n")
    with _raw(server.port, head + b"--b\r\n") as s:  # a body that stops coming
        answer = b""
        while b"}" not in answer and (chunk := s.recv(4096)):  # the JSON refusal, then the server closes
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer
    s = _raw(server.port, head + b"--b\r\n")  # a client that goes away mid-body
    s.close()
    deadline = time.monotonic() + 60
    while "client disconnected" not in server.log.read_text():
        assert time.monotonic() < deadline, server.log.read_text()[-2000:]
        time.sleep(0.1)
    log = server.log.read_text()
    assert "Traceback" not in log and "ERROR" not in log
    assert requests.get(f"{server.url}/health", timeout=30).status_code == 200


def test_beyond_loopback_the_docs_need_the_token_too():
    """An app configured for 0.0.0.0 (strong token), served in-process on a 127.0.0.1 socket."""
    import secrets

    import uvicorn

    from blip3o_rl.rewards import load_reward
    from blip3o_rl.rewards.server import ServerSettings, bind, create_app

    token = secrets.token_urlsafe(32)
    settings = ServerSettings(reward=GREY, host="0.0.0.0", token=token)
    app = create_app(settings, load_reward(GREY))
    sock = bind("127.0.0.1", 0)  # the traffic stays on loopback; only the settings say "beyond"
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.05)
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert requests.get(url + path, timeout=30).status_code == 401, path
            assert requests.get(url + path, headers={"Authorization": "Bearer nope"}, timeout=30).status_code == 403
            assert requests.get(url + path, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code == 200
        assert requests.get(url + "/health", timeout=30).status_code == 200  # open, like /ready
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
