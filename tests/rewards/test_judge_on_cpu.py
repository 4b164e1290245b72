"""The VLM judge against a stand-in OpenAI-compatible server on 127.0.0.1 (stdlib http.server, bounded):
yes/no from log-probs and from text, numeric scores, retries, timeouts and malformed replies (the sample
fails with a reason, never 0)."""

import base64
import contextlib
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from PIL import Image

from blip3o_rl.rewards import load_reward, score_batch
from blip3o_rl.rewards.judge import parse_score, parse_yes_no


def _choice(content, logprobs=None):
    c = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    if logprobs is not None:
        c["logprobs"] = {"content": [{"token": logprobs[0][0], "logprob": logprobs[0][1],
                                      "top_logprobs": [{"token": t, "logprob": lp} for t, lp in logprobs]}]}
    return {"id": "x", "object": "chat.completion", "choices": [c]}


class StandIn(BaseHTTPRequestHandler):
    """Answers by the caption: each caption names a behaviour."""

    seen: ClassVar[list] = []
    flaky: ClassVar[dict] = {}

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(body)
        text = body["messages"][-1]["content"][1]["text"]
        caption = text.split('"')[1] if '"' in text else text
        if caption == "flaky" and self.flaky.setdefault("n", 0) < 1:
            self.flaky["n"] += 1
            return self._send(503, {"error": "warming up"})
        answers = {
            "logprobs": _choice("Yes", [("Yes", -0.1), (" yes", -3.0), ("No", -2.5), ("Maybe", -4.0)]),
            "flaky": _choice("Yes", [("Yes", -0.1), ("No", -2.5)]),
            "text-no": _choice("No, the dog is missing."),
            "score": _choice("Score: 7/10"),
            "maybe": _choice("Maybe"),
            "no-yes-no-logprobs": _choice("Hmm", [("Hmm", -0.1), ("Well", -1.0)]),
            "empty": {"choices": []},
            "too-high": _choice("42"),
        }
        if caption == "not-json":
            self.send_response(200)
            self.send_header("Content-Length", "9")
            self.end_headers()
            return self.wfile.write(b"<garbage>")
        if caption == "forbidden":
            return self._send(403, {"error": "bad key"})
        if caption == "slow":
            threading.Event().wait(1.0)
            return self._send(200, _choice("Yes"))
        return self._send(200, answers.get(caption, _choice("Yes")))

    def _send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):  # the client gave up (the timeout test)
            self.wfile.write(data)


@pytest.fixture
def server():
    StandIn.seen, StandIn.flaky = [], {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _judge(url, **kw):
    kw = {"timeout_s": 0.5, "connect_timeout_s": 0.5, "retries": 1, "backoff_s": 0.01, "max_backoff_s": 0.02, **kw}
    return load_reward("judge", url=url, model="stand-in-vlm", **kw)


def _images(n):
    return [Image.new("RGB", (16, 16), (10 * i, 0, 0)) for i in range(n)]


def test_yes_no_from_logprobs_and_text_and_the_request_format(server):
    out = score_batch(_judge(server), "judge", _images(2), ["logprobs", "text-no"], [{}, {}])
    # P(yes) = e^-0.1 + e^-3.0 (both spellings), P(no) = e^-2.5
    import math

    p_yes, p_no = math.exp(-0.1) + math.exp(-3.0), math.exp(-2.5)
    assert out.scores[0] == pytest.approx(p_yes / (p_yes + p_no))
    assert out.details[0]["source"] == "logprobs"
    assert out.scores[1] == 0.0 and out.details[1]["source"] == "text"  # a real "no" is a 0, not a failure
    assert out.details[0]["judge"] == {"url": server, "model": "stand-in-vlm", "mode": "yes_no", "attempts": 1}
    body = StandIn.seen[0]
    assert body["model"] == "stand-in-vlm" and body["logprobs"] is True and body["max_tokens"] == 1
    image_part, text_part = body["messages"][-1]["content"]
    assert "logprobs" in text_part["text"] or "text-no" in text_part["text"]
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.size == (16, 16)


def test_numeric_scores_and_a_system_turn(server):
    out = _judge(server, mode="score", system="You are a strict judge.")(_images(2), ["score", "too-high"], [{}, {}])
    assert out.scores[0] == pytest.approx(0.7) and out.details[0]["raw_score"] == 7.0
    assert out.scores[1] is None and "outside [0, 10]" in out.details[1]["error"]
    assert StandIn.seen[0]["messages"][0] == {"role": "system", "content": "You are a strict judge."}
    assert "logprobs" not in StandIn.seen[0]


def test_malformed_replies_fail_the_sample_with_a_reason_never_zero(server):
    captions = ["maybe", "no-yes-no-logprobs", "empty", "not-json", "forbidden", "logprobs"]
    out = _judge(server)(_images(6), captions, [{}] * 6)
    assert out.scores[:5] == [None] * 5 and out.scores[5] is not None
    errors = [d["error"] for d in out.details[:5]]
    assert "neither yes nor no" in errors[0] and "'Maybe'" in errors[0]
    assert "top log-probs" in errors[1]
    assert "no choices" in errors[2]
    assert "unreadable judge reply" in errors[3]
    assert "HTTP 403" in errors[4] and "1 attempt" in errors[4]  # a 4xx is not retried
    assert out.details[0]["reply"] == "Maybe"


def test_retries_then_succeeds_and_timeouts_fail(server, caplog):
    out = _judge(server)(_images(2), ["flaky", "slow"], [{}, {}])
    assert out.scores[0] is not None and out.details[0]["judge"]["attempts"] == 2  # 503, then 200
    assert "retrying" in caplog.text
    assert out.scores[1] is None and "Timeout" in out.details[1]["error"] and "2 attempt" in out.details[1]["error"]


def test_unreachable_server_and_bad_settings():
    out = _judge("http://127.0.0.1:9/v1", retries=0)(_images(1), ["x"], [{}])
    assert out.scores == [None] and "ConnectionError" in out.details[0]["error"]
    with pytest.raises(ValueError, match="mode"):
        _judge("http://127.0.0.1:9/v1", mode="stars")
    with pytest.raises(ValueError, match="caption"):
        _judge("http://127.0.0.1:9/v1", template="no placeholder")


def test_parsers_alone():
    assert parse_yes_no(_choice("yes.")["choices"][0]) == (1.0, {"source": "text"})
    assert parse_score(_choice("I'd give it 3.5")["choices"][0], 5.0)[0] == pytest.approx(0.7)
