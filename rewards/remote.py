"""`RemoteReward`: the Reward protocol over HTTP, against ``blip3o-rl serve-reward`` (`rewards/server.py`).

    load_reward("remote:http://127.0.0.1:8100", batch_size=32, timeout_s=60)
    # in a recipe:  rewards: [{reward: "remote:http://gpu-box:8100", kwargs: {max_concurrency: 8}}]

A call splits its images into requests of ``batch_size`` images (PNG, lossless, so a remote score
equals the in-process one), at most ``max_concurrency`` in flight. Each request has its own id
(``X-Request-ID``), kept across its retries: the server answers a retried id from memory instead of
scoring it again, and the client places each answer by position, so no sample is lost or counted
twice. Connection errors, timeouts, 408/425/429 and 5xx are retried up to ``retries`` times with
exponential backoff and jitter (``Retry-After`` honoured); other 4xx are not (they would fail again).
After the retry budget the request's samples score ``None`` with the reason in their details, the
log says why, and the run goes on. Every result's details hold ``remote``: the server's reward
identity (spec, name, version), the URL, the request id and the attempts.

The bearer token: ``token=`` or ``$BLIP3O_RL_REWARD_TOKEN`` (better: a recipe is saved with the run).
HTTP through ``requests`` (one session per thread).
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import threading
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from .base import RewardOutput, check_scores

logger = logging.getLogger(__name__)

TOKEN_ENV = "BLIP3O_RL_REWARD_TOKEN"
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class RemoteRewardError(RuntimeError):
    """A request that failed for good (its samples score ``None`` with this reason)."""


def encode_image(image: Image.Image, fmt: str = "png") -> tuple[bytes, str]:
    """``(bytes, content type)`` of ``image`` as PNG (lossless) or JPEG (quality 95)."""
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, "PNG", compress_level=1)
        return buf.getvalue(), "image/png"
    image.convert("RGB").save(buf, "JPEG", quality=95)
    return buf.getvalue(), "image/jpeg"


class RemoteReward:
    """A reward scored by a reward server; see the module docstring.

    Args:
        url: ``http(s)://host:port[/path]``; the server's routes are under it (``/score``, ``/info``).
        batch_size: images per request (at most the server's ``--max-images``).
        max_concurrency: requests in flight at once (also how many calls `WeightedRewards` may overlap).
        timeout_s: seconds to wait for one answer; ``connect_timeout_s`` for the connection.
        retries: further attempts after the first; ``backoff_s`` doubles each time up to ``max_backoff_s``,
            each wait drawn between half and all of it (jitter).
        token: bearer token (default: ``$BLIP3O_RL_REWARD_TOKEN``).
        image_format: ``"png"`` (lossless) or ``"jpeg"`` (smaller, lossy: scores may differ).
    """

    def __init__(
        self,
        url: str,
        *,
        batch_size: int = 64,
        max_concurrency: int = 4,
        timeout_s: float = 300.0,
        connect_timeout_s: float = 5.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        token: str | None = None,
        image_format: str = "png",
    ):
        try:
            import requests  # noqa: F401 (checked now, used per thread)
        except ImportError as exc:
            raise ImportError(f"remote rewards need the requests package ({exc}): pip install requests") from exc
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"remote reward URL must be http(s)://host:port[/path], got {url!r}")
        if image_format not in ("png", "jpeg"):
            raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
        if batch_size < 1 or max_concurrency < 1 or retries < 0 or timeout_s <= 0:
            raise ValueError("batch_size and max_concurrency must be >= 1, retries >= 0, timeout_s > 0")
        self.url = url.rstrip("/")
        self.batch_size, self.max_concurrency = int(batch_size), int(max_concurrency)
        self.timeout = (float(connect_timeout_s), float(timeout_s))
        self.retries, self.backoff_s, self.max_backoff_s = int(retries), float(backoff_s), float(max_backoff_s)
        self.image_format = image_format
        self._token = token or os.environ.get(TOKEN_ENV) or None
        self.max_concurrent_calls = self.max_concurrency  # WeightedRewards may overlap this many calls
        self.__name__ = f"remote:{self.url}"
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RemoteReward({self.url!r})"

    # ------------------------------------------------------------------ the Reward protocol
    def __call__(
        self, images: Sequence[Image.Image], prompts: Sequence[str], metadata: Sequence[dict[str, Any]] | None = None
    ) -> RewardOutput:
        metadata = list(metadata) if metadata is not None else [{} for _ in images]
        if not (len(images) == len(prompts) == len(metadata)):
            raise ValueError(f"{len(images)} images, {len(prompts)} prompts, {len(metadata)} metadata rows")
        spans = [slice(s, s + self.batch_size) for s in range(0, len(images), self.batch_size)]
        if len(spans) <= 1:
            parts = [self._score_request(images, prompts, metadata)]
        else:
            pool = self._executor()
            futures = [pool.submit(self._score_request, images[sl], prompts[sl], metadata[sl]) for sl in spans]
            parts = [f.result() for f in futures]  # in order: answers are placed by position
        return RewardOutput.concat(parts)

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="remote-reward")
            return self._pool

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            session = self._local.session = requests.Session()
        return session

    # ------------------------------------------------------------------ one request, with retries
    def _score_request(self, images: Sequence[Image.Image], prompts: Sequence[str],
                       metadata: Sequence[dict[str, Any]]) -> RewardOutput:
        """One request: its samples' scores, or ``None`` each with the reason after the retry budget."""
        n = len(images)
        rid = uuid.uuid4().hex
        try:
            files: list[tuple[str, tuple[str | None, Any, str]]] = [("request", (None, json.dumps({"prompts": list(prompts), "metadata": list(metadata)}),
                                  "application/json"))]
            files += [("images", (f"{i}.{self.image_format}", *encode_image(im, self.image_format)))
                      for i, im in enumerate(images)]
        except (TypeError, ValueError) as exc:  # metadata that is not JSON, an image PIL cannot save
            return self._failed(n, rid, 0, f"cannot encode the request: {type(exc).__name__}: {exc}")
        resp, attempts, last = post_with_retries(
            self._session(), f"{self.url}/score", what=f"remote reward {self.url}: request {rid} ({n} images)",
            timeout=self.timeout, retries=self.retries, backoff_s=self.backoff_s, max_backoff_s=self.max_backoff_s,
            files=files, headers=self._headers(rid))
        if resp is None:
            return self._failed(n, rid, attempts, last)
        try:
            return self._parse(resp.json(), n, rid, attempts)
        except (ValueError, KeyError, TypeError) as exc:
            return self._failed(n, rid, attempts, f"bad answer from the server: {exc}")

    def _headers(self, rid: str) -> dict[str, str]:
        headers = {"X-Request-ID": rid}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def _parse(self, data: dict[str, Any], n: int, rid: str, attempts: int) -> RewardOutput:
        """The server's answer, checked like a local reward's output (`check_scores`): a wrong count raises
        (the request fails), a score that is not a number (``"0.51"``, ``true``) fails its sample."""
        if not isinstance(data, dict):
            raise ValueError(f"the answer is a JSON {type(data).__name__}, not an object")
        if data.get("request_id") != rid:
            raise ValueError(f"answer for request {data.get('request_id')!r}, not {rid!r}")
        details = data["details"]
        if not isinstance(details, list) or not all(isinstance(d, dict) for d in details):
            raise ValueError("'details' is not a list of objects")
        out = check_scores(data["scores"], n, self.__name__, details)
        remote = {**data["reward"], "url": self.url, "request_id": rid, "attempts": attempts}
        return RewardOutput(out.scores, [{**d, "remote": remote} for d in out.details])

    def _failed(self, n: int, rid: str, attempts: int, why: str) -> RewardOutput:
        msg = f"remote reward {self.url}: request {rid} failed after {attempts} attempt(s): {why}"
        logger.error("%s; its %d samples score None", msg, n)
        remote = {"url": self.url, "request_id": rid, "attempts": attempts}
        return RewardOutput([None] * n, [{"error": msg, "remote": remote} for _ in range(n)])


def post_with_retries(session: Any, url: str, *, what: str, timeout: float | tuple[float, float], retries: int,
                      backoff_s: float, max_backoff_s: float, **request: Any) -> tuple[Any | None, int, str]:
    """POST ``url`` (``request``: `requests` keyword arguments) until an HTTP 200, with the retry policy above.

    Connection errors, timeouts and `RETRY_STATUS` answers are retried up to ``retries`` times, waiting
    ``backoff_s`` doubled per attempt up to ``max_backoff_s``, each wait drawn in [half, all] of it
    (jitter), or the server's ``Retry-After``; any other status fails at once. Returns ``(response,
    attempts, "")`` on a 200, else ``(None, attempts, the last reason)``. ``what`` names the request in
    the log. Shared by `RemoteReward` and the VLM judge (`blip3o_rl.rewards.judge`).
    """
    last = ""
    for attempt in range(1, retries + 2):
        retry_after: float | None = None
        try:
            resp = session.post(url, timeout=timeout, **request)
        except Exception as exc:  # requests' ConnectionError, Timeout, ChunkedEncodingError...
            last = f"{type(exc).__name__}: {exc}"
        else:
            if resp.status_code == 200:
                return resp, attempt, ""
            last = f"HTTP {resp.status_code}: {_reason(resp)}"
            if resp.status_code not in RETRY_STATUS:
                return None, attempt, last  # a 4xx would fail again: no retry
            retry_after = _retry_after(resp)
        if attempt > retries:
            break
        ceiling = min(max_backoff_s, backoff_s * 2 ** (attempt - 1))
        delay = random.uniform(ceiling / 2, ceiling) if retry_after is None else min(retry_after, max_backoff_s)
        logger.warning("%s: attempt %d failed (%s); retrying in %.2f s", what, attempt, last, delay)
        time.sleep(delay)
    return None, retries + 1, last


def _reason(resp: Any) -> str:
    try:
        body = resp.json()
        return str(body.get("detail", body))
    except ValueError:
        return resp.text[:200]


def _retry_after(resp: Any) -> float | None:
    try:
        return max(0.0, float(resp.headers.get("Retry-After", "")))
    except ValueError:
        return None
