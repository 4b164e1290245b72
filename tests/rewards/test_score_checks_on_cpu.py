"""Every reward path checks its scores with one function (`rewards.base.check_scores`): a wrong number of
scores fails the batch (never the run, never 0; a 422 through the reward server, not retried), a score
that is not a number fails its sample with the reason."""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from blip3o_rl.rewards import WeightedRewards, load_reward, score_batch
from blip3o_rl.rewards.base import check_score
from blip3o_rl.rewards.judge import JudgeReplyError, parse_yes_no
from blip3o_rl.rewards.remote import RemoteReward, encode_image

BAD = Path(__file__).with_name("bad_rewards.py")
IMAGES = [Image.new("RGB", (8, 8), (10 * i, 0, 0)) for i in range(5)]
PROMPTS, META = ["p"] * 5, [{}] * 5


@pytest.mark.parametrize(("value", "want"), [
    (0.5, 0.5), (3, 3.0), (np.float32(0.25), 0.25), (np.int64(2), 2.0), (torch.tensor(0.5), 0.5),
    (np.array(1.5), 1.5), (None, None)])
def test_numbers_are_scores(value, want):
    assert check_score(value) == (want, None)


@pytest.mark.parametrize(("value", "why"), [
    ("0.51", r"'0.51' \(a str\) is not a number"), (True, r"True \(a bool\) is not a number"),
    (np.bool_(False), r"\(a bool\) is not a number"), (torch.tensor(True), r"\(a bool\) is not a number"),
    ([0.5], r"\(a list\) is not a number"), (b"1", r"\(a bytes\)"), (math.nan, "non-finite score nan"),
    (-math.inf, "non-finite score -inf")])
def test_other_values_are_not(value, why):
    score, reason = check_score(value)
    assert score is None
    assert reason is not None and re.search(why, reason), reason


def test_a_wrong_count_fails_the_batch_with_a_warning_naming_reward_and_counts(caplog):
    reward = load_reward(f"{BAD}:wrong_len")
    with caplog.at_level(logging.WARNING):
        out = score_batch(reward, "short", IMAGES, PROMPTS, META)
    assert out.scores == [None] * 5
    assert out.details[0]["error"] == "reward 'short' returned 4 scores for a batch of 5 images"
    assert "reward 'short' returned 4 scores for a batch of 5 images: its 5 samples are excluded" in caplog.text
    for raw, what in ((None, "NoneType"), (0.5, "float"), ("0.5", "str"), ({"a": 1}, "dict")):
        out = score_batch(lambda i, p, m, raw=raw: raw, "odd", IMAGES, PROMPTS, META)
        assert out.scores == [None] * 5
        assert out.details[0]["error"].startswith(f"reward 'odd' returned {what} ")
        assert out.details[0]["error"].endswith("not a list of 5 scores")


def test_non_numbers_fail_their_sample_with_the_reason(caplog):
    with caplog.at_level(logging.WARNING):
        out = score_batch(load_reward(f"{BAD}:strings_and_bools"), "types", IMAGES, PROMPTS, META)
    assert out.scores == [0.25, None, None, None, 0.75]
    assert out.details[1]["error"] == "'0.51' (a str) is not a number"
    assert out.details[2]["error"] == "True (a bool) is not a number"
    assert "error" not in out.details[3]  # None is the reward's own "could not score"
    assert "reward 'types': 2 of 5 scores are not numbers" in caplog.text


def test_weighted_rewards_exclude_a_wrong_count_batch_and_go_on():
    rewards = WeightedRewards([("ok", 1.0, lambda i, p, m: [1.0] * len(i)),
                               ("short", 1.0, load_reward(f"{BAD}:wrong_len"))])
    scored = rewards(IMAGES, PROMPTS, META)  # no exception: the batch is failed, not the run
    assert scored.total == [None] * 5
    assert scored.outputs["ok"].scores == [1.0] * 5
    assert scored.metrics()["reward/short/failed"] == 5.0
    assert rewards(IMAGES[:2], PROMPTS[:2], META[:2]).outputs["short"].scores == [None, None]


def _post(url, images):
    files = [("request", (None, json.dumps({"prompts": ["p"] * len(images)}), "application/json"))]
    files += [("images", (f"{i}.png", encode_image(im)[0], "image/png")) for i, im in enumerate(images)]
    return requests.post(f"{url}/score", files=files, timeout=30)


def test_the_server_refuses_a_wrong_count_with_a_422_that_is_not_retried(reward_server, caplog):
    server = reward_server(f"{BAD}:wrong_len")
    resp = _post(server.url, IMAGES[:3])
    assert resp.status_code == 422
    assert "returned 2 scores for a batch of 3 images" in resp.json()["detail"]
    remote = RemoteReward(server.url, retries=3, backoff_s=0.01)
    with caplog.at_level(logging.WARNING):
        out = score_batch(remote, "remote", IMAGES[:3], PROMPTS[:3], META[:3])
    assert out.scores == [None] * 3
    assert "HTTP 422" in out.details[0]["error"] and "returned 2 scores for a batch of 3" in out.details[0]["error"]
    assert out.details[0]["remote"]["attempts"] == 1  # not retried
    assert "retrying" not in caplog.text
    assert _post(server.url, IMAGES[:1]).status_code == 422  # and the server still answers
    types = reward_server(f"{BAD}:strings_and_bools")  # checked inside the server: JSON null with the reason
    out = RemoteReward(types.url)(IMAGES, PROMPTS, META)
    assert out.scores == [0.25, None, None, None, 0.75]
    assert out.details[1]["error"] == "'0.51' (a str) is not a number"


class _Answers(BaseHTTPRequestHandler):
    """A stand-in reward server whose answers are wrong: ``answer(rid, n)`` builds the JSON."""

    answer = staticmethod(lambda rid, n: {})

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        rid = self.headers["X-Request-ID"]
        data = json.dumps(type(self).answer(rid, 3)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def stand_in():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_remote_answers_are_checked_like_local_scores(stand_in):
    reward = {"spec": "x", "kwargs": {}, "name": "x", "version": None, "server": "stand-in"}
    client = RemoteReward(stand_in, retries=0)
    _Answers.answer = staticmethod(lambda rid, n: {"request_id": rid, "reward": reward, "scores": ["0.51", True, 0.5],
                                                   "details": [{}] * n})
    out = client(IMAGES[:3], PROMPTS[:3], META[:3])
    assert out.scores == [None, None, 0.5]
    assert out.details[0]["error"] == "'0.51' (a str) is not a number"
    assert out.details[2]["remote"]["server"] == "stand-in"
    _Answers.answer = staticmethod(lambda rid, n: {"request_id": rid, "reward": reward, "scores": [0.5] * (n - 1),
                                                   "details": [{}] * (n - 1)})
    out = client(IMAGES[:3], PROMPTS[:3], META[:3])
    assert out.scores == [None] * 3
    assert "returned 2 scores for a batch of 3 images" in out.details[0]["error"]
    _Answers.answer = staticmethod(lambda rid, n: [0.5] * n)
    assert "not an object" in client(IMAGES[:3], PROMPTS[:3], META[:3]).details[0]["error"]


def test_the_judge_refuses_log_probs_that_are_not_numbers():
    def choice(logprob):
        return {"message": {"content": "Yes"},
                "logprobs": {"content": [{"token": "Yes", "logprob": logprob,
                                          "top_logprobs": [{"token": "Yes", "logprob": logprob},
                                                           {"token": "No", "logprob": -2.0}]}]}}

    assert parse_yes_no(choice(-0.5))[0] == pytest.approx(math.exp(-0.5) / (math.exp(-0.5) + math.exp(-2.0)))
    for bad in ("-0.5", True):
        with pytest.raises(JudgeReplyError, match=r"the log-prob of 'yes' is .* is not a number"):
            parse_yes_no(choice(bad))
