"""The reward server and `RemoteReward` against a real uvicorn server on 127.0.0.1 (a subprocess per test).

Every wait is bounded: server start-up (90 s, the fixture), request timeouts, thread joins.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import secrets
import struct
import threading
import time
import uuid
import zlib
from pathlib import Path

import pytest
import requests
from PIL import Image

from blip3o_rl.rewards import load_reward, score_batch
from blip3o_rl.rewards.remote import RemoteReward, encode_image
from blip3o_rl.rewards.server import ServerSettings, check_settings, is_loopback, kwargs_digest

SERVER_REWARDS = Path(__file__).with_name("server_rewards.py")  # test rewards, loaded by path
GREY = f"{SERVER_REWARDS}:grey"
TOKEN = "s3cret-token"


def _images(n: int, start: int = 0, size: int = 8) -> list[Image.Image]:
    """Distinct small images: grey level i (mod 256), plus a mode mix (RGB, L, RGBA)."""
    modes = ("RGB", "L", "RGBA")
    out = []
    for i in range(start, start + n):
        v = i % 256
        mode = modes[i % 3]
        colour = v if mode == "L" else (v, v, v) if mode == "RGB" else (v, v, v, 255)
        out.append(Image.new(mode, (size, size), colour))
    return out


def _multipart(images: list[Image.Image], prompts=None, metadata=None, request_text=None):
    prompts = prompts if prompts is not None else ["p"] * len(images)
    text = request_text if request_text is not None else json.dumps({"prompts": prompts, "metadata": metadata})
    files = [("request", (None, text, "application/json"))]
    files += [("images", (f"{i}.png", encode_image(im)[0], "image/png")) for i, im in enumerate(images)]
    return files


def _post(url, files=None, token=TOKEN, rid=None, **kw):
    headers = {"X-Request-ID": rid or uuid.uuid4().hex}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(f"{url}/score", files=files, headers=headers, timeout=30, **kw)


def test_remote_scores_equal_in_process_scores(reward_server):
    server = reward_server(GREY, "--kwargs", '{"scale": 2.0}')
    images = _images(11)
    prompts = [f"p{i}" if i != 4 else "skip" for i in range(11)]
    metadata = [{"id": i} for i in range(11)]
    remote = load_reward(f"remote:{server.url}", batch_size=3, max_concurrency=2)
    assert isinstance(remote, RemoteReward)
    got = score_batch(remote, "remote", images, prompts, metadata)
    want = score_batch(load_reward(GREY, scale=2.0), "local", images, prompts, metadata)
    assert got.scores == want.scores  # PNG is lossless: exactly the same numbers, None where skipped
    assert got.scores[4] is None and got.details[4]["error"] == "asked to skip"
    for g, w in zip(got.details, want.details, strict=True):
        remote_info = g["remote"]
        assert {k: v for k, v in g.items() if k != "remote"} == w
        # the server's reward identity in every result
        assert remote_info["spec"] == GREY and remote_info["name"] == "grey" and "kwargs" not in remote_info
        assert remote_info["kwargs_sha256"] == kwargs_digest({"scale": 2.0})
        assert remote_info["server"].startswith("blip3o-rl ") and remote_info["url"] == server.url
    assert len({d["remote"]["request_id"] for d in got.details}) == 4  # 11 images in requests of 3


def test_refusals_are_4xx_and_the_server_keeps_serving(reward_server, tmp_path):
    server = reward_server(GREY, "--token", TOKEN, "--max-body-mb", "1", "--max-images", "8",
                           "--max-image-pixels", "1000000")
    url, good = server.url, _multipart(_images(2))

    def still_serving():
        r = _post(url, good)
        assert r.status_code == 200 and len(r.json()["scores"]) == 2

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    payload = pickle.dumps(Exploit())
    big_png = encode_image(Image.new("RGB", (1100, 1100), (1, 2, 3)))[0]
    png_bomb = _png_bomb(30_000, 30_000)  # 900 Mpx of mode "1": ~100 KB on the wire
    cases = {
        "no token": (lambda: _post(url, good, token=None), 401),
        "wrong token": (lambda: _post(url, good, token="guess"), 403),
        "malformed JSON": (lambda: _post(url, _multipart(_images(1), request_text='{"prompts": [')), 400),
        "pickle body": (lambda: requests.post(f"{url}/score", data=payload, timeout=30, headers={
            "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream"}), 415),
        "pickle as the JSON field": (lambda: _post(url, [("request", (None, payload, "application/json")),
                                                         ("images", ("0.png", encode_image(_images(1)[0])[0]))]), 400),
        "pickle as an image": (lambda: _post(url, [("request", (None, '{"prompts": ["p"]}')),
                                                   ("images", ("0.png", payload, "image/png"))]), 415),
        "oversize body": (lambda: _post(url, [("request", (None, '{"prompts": ["p"]}')),
                                              ("images", ("0.png", b"\0" * (1536 * 1024)))]), 413),
        "decompression bomb": (lambda: _post(url, [("request", (None, '{"prompts": ["p"]}')),
                                                   ("images", ("0.png", png_bomb, "image/png"))]), 413),
        "too many pixels": (lambda: _post(url, [("request", (None, '{"prompts": ["p"]}')),
                                                ("images", ("0.png", big_png, "image/png"))]), 413),
        "too many images": (lambda: _post(url, _multipart(_images(9))), 413),
        "non-image bytes": (lambda: _post(url, [("request", (None, '{"prompts": ["p", "q"]}')),
                                                ("images", ("0.png", encode_image(_images(1)[0])[0])),
                                                ("images", ("1.png", b"GIF89a not really"))]), 415),
        "prompts do not match images": (lambda: _post(url, _multipart(_images(2), prompts=["only one"])), 422),
        "wrong JSON shape": (lambda: _post(url, _multipart(_images(1), request_text='["p"]')), 422),
        "no request field": (lambda: _post(url, [("images", ("0.png", encode_image(_images(1)[0])[0]))]), 400),
    }
    assert len(png_bomb) < 1024 * 1024  # under the body limit: only the header check stops it
    for name, (send, status) in cases.items():
        r = send()
        assert r.status_code == status, (name, r.status_code, r.text[:300])
        assert "detail" in r.json(), name
        still_serving()
    r = _post(url, [("request", (None, '{"prompts": ["p", "q"]}')),
                    ("images", ("0.png", encode_image(_images(1)[0])[0])), ("images", ("1.png", b"nope"))])
    assert r.json()["errors"] == [{"index": 1, "error": "not a PNG or JPEG image (UnidentifiedImageError)"}]
    assert not marker.exists()  # nothing was unpickled
    assert requests.get(f"{url}/health", timeout=10).json() == {"status": "ok"}  # open, like /ready
    assert requests.get(f"{url}/ready", timeout=10).json() == {"ready": True}
    assert requests.get(f"{url}/info", timeout=10).status_code == 401
    stats = requests.get(f"{url}/stats", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).json()
    # every case, the per-image check above and /info without a token; one good request after each case
    assert stats["refused"] == len(cases) + 2 and stats["scored_requests"] == len(cases)
    assert "POST /score -> 415" in server.log.read_text()  # request log lines, with their ids


def _png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height white pixels, streamed through zlib (never held in memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" + b"\xff" * ((width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    rows = row * 1000
    parts = [z.compress(rows) for _ in range(height // 1000)] + [z.compress(row * (height % 1000)), z.flush()]
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def test_a_retried_request_id_is_scored_once(reward_server):
    server = reward_server(GREY)
    files, rid = _multipart(_images(3)), uuid.uuid4().hex
    first, again = _post(server.url, files, rid=rid), _post(server.url, files, rid=rid)
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    stats = requests.get(f"{server.url}/stats", timeout=10).json()
    assert stats["scored_requests"] == 1 and stats["dedup_hits"] == 1
    other = _post(server.url, _multipart(_images(3, start=50)), rid=rid)  # same id, another body
    assert other.status_code == 409


def test_openapi_schema_describes_the_score_route(reward_server):
    server = reward_server(GREY, "--token", TOKEN)
    schema = requests.get(f"{server.url}/openapi.json", timeout=10).json()  # loopback: the docs are open
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "the server's token ($BLIP3O_RL_REWARD_TOKEN)"}
    assert schema["paths"]["/score"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in schema["paths"]["/health"]["get"]
    request = schema["paths"]["/score"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert request["properties"]["request"]["required"] == ["prompts"]  # the JSON shape, not a bare string
    post = schema["paths"]["/score"]["post"]
    body = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(body["required"]) == {"request", "images"}
    assert body["properties"]["images"]["items"]["format"] == "binary"
    assert {"200", "400", "401", "413", "415"} <= set(post["responses"])
    assert {"ScoreResponse", "RewardInfo", "Refusal"} <= set(schema["components"]["schemas"])
    assert {"/health", "/ready", "/info", "/stats"} <= set(schema["paths"])


def test_killing_and_restarting_the_server_mid_run_loses_and_duplicates_nothing(reward_server, caplog):
    server = reward_server(f"{SERVER_REWARDS}:slow_grey")
    port = server.port
    # the default retry settings (a 120 s budget) outlast a restart, even on a loaded machine
    client = RemoteReward(server.url, batch_size=4, max_concurrency=2)
    calls, per_call = 24, 8
    results: list = [None] * calls
    want = [grey_of(_images(per_call, start=c * per_call)) for c in range(calls)]
    progress = threading.Semaphore(0)

    def run():
        for c in range(calls):
            results[c] = client(_images(per_call, start=c * per_call), [f"c{c}"] * per_call,
                                [{"id": c * per_call + i} for i in range(per_call)])
            progress.release()

    with caplog.at_level(logging.WARNING, logger="blip3o_rl.rewards.remote"):
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        for _ in range(4):
            assert progress.acquire(timeout=60)
        server.kill()  # mid-run, most likely mid-request (each batch sleeps 50 ms)
        killed = time.monotonic()
        time.sleep(2.0)
        reward_server(f"{SERVER_REWARDS}:slow_grey", port=port)  # the same address
        print(f"\nserver killed and answering again after {time.monotonic() - killed:.1f} s")
        worker.join(timeout=400)
    assert not worker.is_alive()
    for c in range(calls):
        assert len(results[c].scores) == per_call
        assert results[c].scores == want[c], c  # every sample once, in place, none lost (None)
        assert [d["id"] for d in results[c].details] == [c * per_call + i for i in range(per_call)]
    assert "retrying" in caplog.text  # the outage was seen and retried


def grey_of(images):
    return [sum(im.convert("L").tobytes()) / (255 * im.width * im.height) for im in images]


def test_load_2000_images_from_8_clients_none_lost_or_duplicated(reward_server):
    server = reward_server(GREY)
    clients, per_client = 8, 250
    out: dict[int, list] = {}

    def run(k: int) -> None:
        client = RemoteReward(server.url, batch_size=25, max_concurrency=2, timeout_s=60)
        images = _images(per_client, start=k * per_client)
        out[k] = client(images, [f"k{k}"] * per_client, [{"id": k * per_client + i} for i in range(per_client)]).details

    start = time.perf_counter()
    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    elapsed = time.perf_counter() - start
    assert not any(t.is_alive() for t in threads)
    ids = [d["id"] for k in range(clients) for d in out[k]]
    assert ids == list(range(clients * per_client))  # every image answered once, in its place
    assert all("error" not in d for k in range(clients) for d in out[k])
    stats = requests.get(f"{server.url}/stats", timeout=10).json()
    assert stats["scored_images"] == clients * per_client  # scored once each on the server too
    print(f"\nload test: {clients * per_client} images (8x8 PNG) from {clients} clients in {elapsed:.2f} s = "
          f"{clients * per_client / elapsed:.0f} images/s, {stats['scored_requests']} requests")


def test_failure_after_the_retry_budget_is_clear_and_not_zero(caplog):
    import socket

    with socket.socket() as s:  # a free port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = RemoteReward(f"http://127.0.0.1:{port}", retries=2, backoff_s=0.01, max_backoff_s=0.02, timeout_s=2)
    with caplog.at_level(logging.WARNING):
        out = client(_images(3), ["a", "b", "c"], [{}, {}, {}])
    assert out.scores == [None, None, None]
    assert "failed after 3 attempt(s)" in out.details[0]["error"] and "ConnectionError" in out.details[0]["error"]
    assert "samples score None" in caplog.text and caplog.text.count("retrying") == 2
    by_time = RemoteReward(f"http://127.0.0.1:{port}", retry_budget_s=1.0, backoff_s=0.2, max_backoff_s=0.2)
    start = time.monotonic()
    out = by_time(_images(1), ["a"], [{}])
    assert out.scores == [None] and "retry budget of 1 s spent" in out.details[0]["error"]
    assert time.monotonic() - start < 60  # stopped by the budget (bounded wait, not a timing threshold)


def test_workers_one_per_device(reward_server):
    server = reward_server(f"{SERVER_REWARDS}:device", "--devices", "dev-a,dev-b")
    client = RemoteReward(server.url, batch_size=1, max_concurrency=4)
    details = client(_images(16), ["p"] * 16, [{}] * 16).details
    assert {d["device"] for d in details} <= {"dev-a", "dev-b"}
    pids = {d["pid"]: d["device"] for d in details}
    assert len(set(pids.values())) == len(pids)  # each worker process has its own device


def test_settings_that_would_be_unsafe_are_refused():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    with pytest.raises(ValueError, match="needs a bearer token"):
        check_settings(ServerSettings(reward=GREY, host="0.0.0.0"))
    for weak in ("t", "a" * 64, "abababababababababababab"):  # short, or long with little variety
        with pytest.raises(ValueError, match="needs a strong token"):
            check_settings(ServerSettings(reward=GREY, host="0.0.0.0", token=weak))
    check_settings(ServerSettings(reward=GREY, host="0.0.0.0", token=secrets.token_urlsafe(32)))
    check_settings(ServerSettings(reward=GREY, host="0.0.0.0", token=uuid.uuid4().hex))  # 32 hex digits
    check_settings(ServerSettings(reward=GREY, token="t"))  # loopback: any token
    with pytest.raises(ValueError, match="cannot serve a remote reward"):
        check_settings(ServerSettings(reward="remote:http://127.0.0.1:1"))
    with pytest.raises(ValueError, match=r"http\(s\)://host:port"):
        load_reward("remote:ftp://example")
    with pytest.raises(ValueError, match="must not hold credentials"):
        load_reward("remote:http://user:secret@127.0.0.1:1")
    from blip3o_rl.registry import ComponentError

    with pytest.raises(ComponentError, match="takes no argument 'batchsize'"):
        load_reward("remote:http://127.0.0.1:1", batchsize=3)


def test_serve_reward_cli_refuses_bad_arguments(capsys):
    from blip3o_rl.scripts.cli import main

    assert main(["serve-reward", "--reward", GREY, "--kwargs", "{not json"]) == 2
    assert "--kwargs is not JSON" in capsys.readouterr().err
    assert main(["serve-reward", "--reward", GREY, "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "needs a bearer token" in capsys.readouterr().err


def test_image_bytes_round_trip():
    for im in _images(3):
        back = Image.open(io.BytesIO(encode_image(im)[0]))
        assert back.mode == im.mode and back.tobytes() == im.tobytes()
