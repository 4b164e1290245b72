"""A reward server: any reward spec the trainer accepts, over HTTP (``blip3o-rl serve-reward``).

    blip3o-rl serve-reward --reward ocr --kwargs '{"engine": "rapidocr"}' --port 8100
    # in a recipe:  rewards: [{reward: "remote:http://127.0.0.1:8100"}]

FastAPI + uvicorn (``pip install 'blip3o-rl[server]'``; imported only when a server is built).

Protocol (the OpenAPI schema is at ``/openapi.json``, interactive docs at ``/docs``):

- ``POST /score``: ``multipart/form-data`` with one ``request`` field, the JSON
  ``{"prompts": [str, ...], "metadata": [{...}, ...]}`` (metadata optional), and one ``images`` file
  part per prompt, each PNG or JPEG bytes. The answer is JSON: ``scores`` (a number or ``null`` per
  image: the reward could not score it, never 0), ``details`` (one object per image; ``error`` says
  why a score is null), ``request_id`` and ``reward`` (spec, name, version and the sha256 of the
  reward's kwargs: never their values, which may hold a credential).
- ``GET /health`` (the process answers), ``GET /ready`` (the reward is built: 200, else 503),
  ``GET /info`` (reward identity and limits), ``GET /stats`` (counters).

Safety: request bodies are parsed as multipart, JSON and PNG/JPEG only; nothing is ever unpickled.
A bearer token (``--token-file`` or ``$BLIP3O_RL_REWARD_TOKEN``) is required on every route but
``/health`` and ``/ready`` when set (beyond loopback the docs and ``/openapi.json`` too), and the
server refuses to bind beyond loopback without a strong one. Every malformed request is a 4xx with
a reason, whatever the parsers raise. Limits are checked before the work they protect
(`blip3o_rl.rewards.admission`): the body size (``Content-Length``, then while reading), the number
of images (while parsing), the ``request`` JSON's size and depth, each image's and the request's
pixel count from the headers before any pixel is decoded; decoding and scoring happen inside the
admission control (``concurrency`` slots and a per-worker budget of decoded pixels in flight); a
request that cannot get its share within ``queue_timeout_s``, or whose reward runs out of memory,
is answered 503 with ``Retry-After``. Slow clients: headers must arrive within ``header_timeout_s``
(`blip3o_rl.rewards.http_protocol`), the body within ``body_timeout_s`` (408); a client that
disconnects is one INFO line.

Retries: a request carries an id (``X-Request-ID``); a request whose id (and body) the server has
already answered, or is answering, gets that same answer without scoring again, so a client that
retries after a lost connection is never scored twice (within one server process: the memory of
answered ids holds ``dedup_cache`` entries and does not survive a restart).

``--workers N`` runs N processes on one port (uvicorn's supervisor), each with its own reward;
``--devices 0,1`` runs one worker per listed device, each seeing only its own
(``CUDA_VISIBLE_DEVICES``). Scoring runs in a thread, ``concurrency`` batches at a time per worker.
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations (`request: Request`,
# imported lazily inside `create_app`) at definition time.
import asyncio
import dataclasses
import hashlib
import hmac
import importlib.metadata
import ipaddress
import json
import logging
import math
import os
import re
import socket
import tempfile
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import registry
from .admission import (
    Budget,
    RequestRefused,
    ServerLimits,
    busy,
    decode_images,
    inspect_images,
    parse_request_json,
)
from .base import REMOTE_PREFIX, Reward, RewardOutput, ScoreCountError, load_reward, run_reward

logger = logging.getLogger(__name__)

TOKEN_ENV = "BLIP3O_RL_REWARD_TOKEN"
_SETTINGS_ENV = "BLIP3O_RL_REWARD_SERVER"  # settings handed to worker processes (JSON)
_SLOTS_ENV = "BLIP3O_RL_REWARD_SERVER_SLOTS"  # folder of per-device lock files
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(frozen=True)
class ServerSettings:
    """Everything `serve` needs; ``kwargs`` go to the reward (``load_reward(reward, **kwargs)``)."""

    reward: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    token: str | None = None
    devices: tuple[str, ...] = ()  # one worker per device (CUDA_VISIBLE_DEVICES); overrides workers
    concurrency: int = 1  # batches scored at once per worker (the reward's own threads are extra)
    dedup_cache: int = 1024  # answered request ids remembered
    limits: ServerLimits = field(default_factory=ServerLimits)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServerSettings":
        data = json.loads(text)
        data["limits"] = ServerLimits(**data["limits"])
        data["devices"] = tuple(data["devices"])
        return cls(**data)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: a token for a server beyond loopback: at least this long, and this many bits by its character variety
MIN_TOKEN_CHARS, MIN_TOKEN_BITS = 24, 100
TOKEN_HINT = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def token_bits(token: str) -> float:
    """A rough entropy estimate: length x log2(distinct characters) (a repeated or short token scores low)."""
    return len(token) * math.log2(len(set(token))) if len(set(token)) > 1 else 0.0


def check_settings(settings: ServerSettings) -> None:
    """Refuse settings that would be unsafe or cannot work, with the reason."""
    if not is_loopback(settings.host):
        if not settings.token:
            raise ValueError(f"serving on {settings.host} (beyond loopback) needs a bearer token: pass "
                             f"--token-file or set ${TOKEN_ENV}")
        if len(settings.token) < MIN_TOKEN_CHARS or token_bits(settings.token) < MIN_TOKEN_BITS:
            raise ValueError(f"serving on {settings.host} (beyond loopback) needs a strong token: at least "
                             f"{MIN_TOKEN_CHARS} characters and ~{MIN_TOKEN_BITS} bits (this one: "
                             f"{len(settings.token)} characters, ~{token_bits(settings.token):.0f} bits); make one "
                             f"with {TOKEN_HINT}")
    if settings.reward.startswith(REMOTE_PREFIX):
        raise ValueError("a reward server cannot serve a remote reward (it would only forward requests)")
    settings.limits.check()
    if settings.workers < 1 or settings.concurrency < 1:
        raise ValueError("workers and concurrency must be >= 1")


def _version_of(obj: object) -> str | None:
    """``obj.version``, else the installed distribution that provides its module, as ``name version``."""
    version = getattr(obj, "version", None)
    if isinstance(version, str):
        return version
    top = (getattr(type(obj), "__module__", "") or "").split(".")[0]
    fn = getattr(obj, "fn", None)  # a plain function wrapped by load_reward
    if fn is not None:
        top = (getattr(fn, "__module__", "") or "").split(".")[0]
    for dist in importlib.metadata.packages_distributions().get(top, []):
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def kwargs_digest(kwargs: dict[str, Any]) -> str:
    """sha256 of the kwargs' canonical JSON: equal kwargs, equal digests; the values never leave the server."""
    return hashlib.sha256(json.dumps(kwargs, sort_keys=True, default=str).encode()).hexdigest()


def reward_identity(settings: ServerSettings, reward: object) -> dict[str, Any]:
    """What the server scores with, in every answer and in /info: spec, name, version, the kwargs' digest.

    Never the kwargs themselves: they may hold a credential, and every token holder (and every run's
    sample log) sees the identity.
    """
    try:
        server_version = importlib.metadata.version("blip3o-rl")
    except importlib.metadata.PackageNotFoundError:
        server_version = None
    return {"spec": settings.reward, "kwargs_sha256": kwargs_digest(settings.kwargs),
            "name": getattr(reward, "__name__", type(reward).__name__),
            "version": _version_of(reward), "server": f"blip3o-rl {server_version}"}


def _claim_device(settings: ServerSettings) -> str | None:
    """With ``devices``: lock the first free device slot for this worker and make it the only visible one.

    The lock is held as long as the process lives, so a worker that uvicorn restarts takes the slot of
    the one that died.
    """
    folder = os.environ.get(_SLOTS_ENV)
    if not settings.devices or not folder:
        return None
    import fcntl

    for i, device in enumerate(settings.devices):
        f = open(Path(folder) / f"slot{i}", "w")  # noqa: SIM115 (held open: the lock lives with the process)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _HELD.append(f)
        os.environ["CUDA_VISIBLE_DEVICES"] = device
        return device
    raise RuntimeError(f"no free device among {settings.devices} for this worker")


_HELD: list[Any] = []


class _OutOfMemory(BaseException):
    """A reward's MemoryError (or CUDA out-of-memory), carried past `run_reward`'s per-batch failure
    handling so that the request is answered 503 (retry later), not scored ``None``."""


def _memory_guarded(reward: Reward) -> Any:
    def call(images: Any, prompts: Any, metadata: Any) -> Any:
        try:
            return reward(images, prompts, metadata)
        except MemoryError as exc:
            raise _OutOfMemory(f"MemoryError: {exc}") from None
        except Exception as exc:
            if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA), without importing torch
                raise _OutOfMemory(f"{type(exc).__name__}: {exc}") from None
            raise

    return call


def _json_safe(value: Any, depth: int = 0) -> Any:
    """A reward's details as strict JSON: non-finite floats and other objects as strings, bad Unicode replaced."""
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if depth < 32 and isinstance(value, dict):
        return {_json_safe(str(k)): _json_safe(v, depth + 1) for k, v in value.items()}
    if depth < 32 and isinstance(value, (list, tuple)):
        return [_json_safe(v, depth + 1) for v in value]
    return _json_safe(str(value)[:1000])


class _State:
    """One worker's reward, counters, budgets and memory of answered request ids."""

    def __init__(self, settings: ServerSettings, reward: Reward | None):
        self.settings, self.reward = settings, reward
        self.identity: dict[str, Any] | None = None if reward is None else reward_identity(settings, reward)
        self.device: str | None = None
        self.answered: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()
        self.in_flight: dict[str, tuple[str, asyncio.Future[dict[str, Any] | RequestRefused]]] = {}
        self.slots: Budget | None = None  # created in the event loop (lifespan)
        self.pixels: Budget | None = None
        self.body_bytes: Budget | None = None
        self.stats = {"requests": 0, "scored_requests": 0, "scored_images": 0, "dedup_hits": 0, "refused": 0,
                      "busy": 0, "disconnected": 0}


_DOC_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
_OPEN_PATHS = frozenset({"/health", "/ready"})


def create_app(settings: ServerSettings, reward: Reward | None = None) -> Any:
    """The FastAPI app serving ``settings.reward`` (built at start-up unless ``reward`` is given)."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.openapi.utils import get_openapi
        from fastapi.responses import JSONResponse
        from pydantic import BaseModel
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import ClientDisconnect
    except ImportError as exc:
        raise ImportError(f"the reward server needs FastAPI and uvicorn ({exc}); install them with: "
                          "pip install 'blip3o-rl[server]'") from exc
    import contextlib

    check_settings(settings)
    state = _State(settings, reward)
    limits = settings.limits
    docs_need_token = bool(settings.token) and not is_loopback(settings.host)

    class RewardInfo(BaseModel):
        spec: str
        kwargs_sha256: str
        name: str
        version: str | None
        server: str

    class ScoreResponse(BaseModel):
        request_id: str
        reward: RewardInfo
        scores: list[float | None]
        details: list[dict[str, Any]]

    class Refusal(BaseModel):
        detail: str
        errors: list[dict[str, Any]] = []
        request_id: str

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        state.slots = Budget(settings.concurrency, "scoring slots")
        state.pixels = Budget(limits.pixels_in_flight, "decoded pixels")
        state.body_bytes = Budget(limits.body_bytes_in_flight, "body bytes")
        if state.reward is None:
            state.device = _claim_device(settings)
            built = await run_in_threadpool(load_reward, settings.reward, **settings.kwargs)
            state.reward, state.identity = built, reward_identity(settings, built)
            logger.info("worker %d: reward %r ready%s", os.getpid(), settings.reward,
                        f" on device {state.device}" if state.device else "")
        yield

    refusals: dict[int | str, dict[str, Any]] = {
        code: {"model": Refusal, "description": why} for code, why in (
            (400, "malformed request or JSON"), (401, "missing bearer token"), (403, "wrong bearer token"),
            (408, "the body did not arrive within the body timeout"),
            (409, "request id reused for another body"), (413, "body, image count or pixel count over the limit"),
            (415, "not multipart/form-data, or an image that is not PNG/JPEG"),
            (422, "well-formed but inconsistent request, an image that cannot be decoded, or a reward that "
                  "returned the wrong number of scores"),
            (503, "the reward is not ready yet, or the worker's memory budget or queue is full (see Retry-After)"))}
    app = FastAPI(title="blip3o-rl reward server", version=reward_identity(settings, object())["server"],
                  description=__doc__, lifespan=lifespan)

    def refuse(rid: str, exc: RequestRefused) -> Any:
        state.stats["busy" if exc.status == 503 else "refused"] += 1
        logger.warning("request %s refused (%d): %s", rid, exc.status, exc.message)
        headers = dict(exc.headers or {})
        if exc.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse({"detail": exc.message, "errors": exc.errors, "request_id": rid}, exc.status,
                            headers=headers or None)

    def authorise(request: Any) -> None:
        if not settings.token:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise RequestRefused(401, "a bearer token is required (Authorization: Bearer <token>)")
        if not hmac.compare_digest(given.encode("utf-8", "replace"), settings.token.encode()):
            raise RequestRefused(403, "wrong bearer token")

    @app.middleware("http")
    async def request_log(request: Any, call_next: Any) -> Any:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        if not _REQUEST_ID.match(rid):
            rid = uuid.uuid4().hex
        request.state.request_id = rid
        start = time.perf_counter()
        if docs_need_token and request.url.path in _DOC_PATHS:  # beyond loopback the docs need the token too
            try:
                authorise(request)
            except RequestRefused as exc:
                response = refuse(rid, exc)
                response.headers["X-Request-ID"] = rid
                return response
        response = await call_next(request)
        response.headers["X-Request-ID"] = rid
        logger.info("request %s %s %s -> %d in %.1f ms", rid, request.method, request.url.path,
                    response.status_code, 1000 * (time.perf_counter() - start))
        return response

    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process is up (the reward may still be loading: see /ready)."""
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"description": "the reward is still being built"}})
    async def ready() -> Any:
        """200 once the reward is built and requests are scored, else 503."""
        if state.reward is None:
            return JSONResponse({"ready": False}, 503)
        return {"ready": True}

    @app.get("/info", responses={k: refusals[k] for k in (401, 403)})
    async def info(request: Request) -> Any:
        """The reward's identity (spec, name, version, the kwargs' sha256), this worker's device, the limits."""
        try:
            authorise(request)
        except RequestRefused as exc:
            return refuse(request.state.request_id, exc)
        return {"reward": state.identity, "device": state.device, "pid": os.getpid(),
                "limits": {**dataclasses.asdict(limits), "max_pixels_in_flight": limits.pixels_in_flight,
                           "max_body_bytes_in_flight": limits.body_bytes_in_flight},
                "concurrency": settings.concurrency}

    @app.get("/stats", responses={k: refusals[k] for k in (401, 403)})
    async def stats(request: Request) -> Any:
        """Counters of this worker: requests, scored requests and images, dedup hits, refusals, 503s."""
        try:
            authorise(request)
        except RequestRefused as exc:
            return refuse(request.state.request_id, exc)
        return dict(state.stats)

    request_schema = {
        "type": "object", "required": ["prompts"], "additionalProperties": False,
        "description": "one prompt (and optional metadata object) per image, in order",
        "properties": {
            "prompts": {"type": "array", "items": {"type": "string"}, "maxItems": limits.max_images},
            "metadata": {"type": "array", "items": {"type": "object"}, "maxItems": limits.max_images},
        },
    }
    multipart_body = {
        "required": True,
        "content": {"multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["request", "images"],
                "properties": {
                    "request": request_schema,
                    "images": {"type": "array", "maxItems": limits.max_images,
                               "items": {"type": "string", "format": "binary"},
                               "description": "one PNG or JPEG file part per prompt, in order"},
                },
            },
            "encoding": {"request": {"contentType": "application/json"},
                         "images": {"contentType": "image/png, image/jpeg"}},
        }},
    }

    @app.post("/score", response_model=ScoreResponse, responses=refusals,
              openapi_extra={"requestBody": multipart_body})
    async def score(request: Request) -> Any:
        """Score images against their prompts (and metadata); ``null`` scores carry the reason in ``details``."""
        rid: str = request.state.request_id
        state.stats["requests"] += 1
        try:
            authorise(request)
            if state.reward is None or state.body_bytes is None:
                raise busy("the reward is not ready yet", 1)
            ctype = request.headers.get("content-type", "")
            if not ctype.lower().startswith("multipart/form-data"):  # e.g. a pickle: refused unread
                raise RequestRefused(415, "expected multipart/form-data (PNG/JPEG images + a JSON 'request' "
                                     f"field), got {ctype or 'no Content-Type'!r}")
            size = await _declared_size(request, limits.max_body_bytes)
            if not await state.body_bytes.take(size, limits.queue_timeout_s):
                raise busy(f"this worker's request bodies in flight are at their budget "
                           f"({limits.body_bytes_in_flight} bytes) for {limits.queue_timeout_s:g} s")
            try:
                outcome = await _receive_and_score(request, rid)
            finally:
                await state.body_bytes.give(size)
            if isinstance(outcome, RequestRefused):  # returned, not raised: no traceback holds this frame
                return refuse(rid, outcome)
            return JSONResponse(outcome)
        except RequestRefused as exc:
            return refuse(rid, exc)
        except ClientDisconnect:
            state.stats["disconnected"] += 1
            logger.info("request %s: the client disconnected before its body arrived", rid)
            return JSONResponse({"detail": "client disconnected", "errors": [], "request_id": rid}, 400)

    async def _receive_and_score(request: Any, rid: str) -> dict[str, Any] | RequestRefused:
        """Read, parse and score one request (deduplicated by id); a refusal is returned, not raised."""
        try:
            body = await asyncio.wait_for(_read_body(request, limits.max_body_bytes), limits.body_timeout_s)
        except asyncio.TimeoutError:  # not the builtin before Python 3.11
            return RequestRefused(408, f"the body did not arrive within {limits.body_timeout_s:g} s")
        except RequestRefused as exc:
            return exc.detached()
        try:
            text, blobs = await _parse_form(request, body)
        except RequestRefused as exc:
            return exc.detached()
        del body  # the parts are copies
        digest = _content_digest(text, blobs)  # of the content: a retry re-encodes with a new boundary
        if rid in state.answered:  # a retry of an answered request: the same answer, not scored again
            seen, answer = state.answered[rid]
            if seen != digest:
                return RequestRefused(409, f"request id {rid} was already used for another request")
            state.stats["dedup_hits"] += 1
            return answer
        if rid in state.in_flight:  # a retry while the first attempt is still scoring: wait for it
            seen, pending = state.in_flight[rid]
            if seen != digest:
                return RequestRefused(409, f"request id {rid} is in use for another request")
            state.stats["dedup_hits"] += 1
            return await asyncio.shield(pending)
        future: asyncio.Future[dict[str, Any] | RequestRefused] = asyncio.get_running_loop().create_future()
        state.in_flight[rid] = (digest, future)
        try:
            outcome = await _score(rid, text, blobs)
        except BaseException as exc:  # a server bug or a cancelled task: any retry waiting gets it too
            future.set_exception(type(exc)(*exc.args) if isinstance(exc, Exception) else exc)
            future.exception()  # retrieved: no "never retrieved" warning when no retry waits on it
            raise
        finally:
            state.in_flight.pop(rid, None)
        future.set_result(outcome)
        if not isinstance(outcome, RequestRefused):  # refusals are not remembered: a retry is checked again
            state.answered[rid] = (digest, outcome)
        while len(state.answered) > settings.dedup_cache:
            state.answered.popitem(last=False)
        return outcome

    async def _parse_form(request: Any, body: bytes) -> tuple[str, list[bytes]]:
        """The ``request`` JSON text and the image parts' bytes (nothing decoded yet)."""
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        parsed = Request(request.scope, receive=replay)
        try:  # one more file than allowed, so "too many" is told apart from "at the limit"
            form = await parsed.form(max_files=limits.max_images + 1, max_fields=4,
                                     max_part_size=limits.max_body_bytes)
        except Exception as exc:  # starlette's HTTPException / MultiPartException: malformed multipart
            raise RequestRefused(400, f"malformed multipart body: {getattr(exc, 'detail', exc)}") from None
        try:
            files = form.getlist("images")
            text = form.get("request")
            if set(form.keys()) - {"images", "request"}:
                raise RequestRefused(400, f"unexpected form fields {sorted(set(form.keys()) - {'images', 'request'})}")
            if len(files) > limits.max_images:
                raise RequestRefused(413, f"more than {limits.max_images} images in one request")
            if not isinstance(text, str):
                raise RequestRefused(400, "a 'request' form field (JSON text, not a file) is required")
            if any(isinstance(f, str) for f in files):
                raise RequestRefused(400, "'images' must be file parts")
            return text, [await f.read() for f in files]  # type: ignore[union-attr]
        finally:
            await form.close()

    async def _score(rid: str, text: str, blobs: list[bytes]) -> dict[str, Any] | RequestRefused:
        """Check, admit, decode and score; the images live only inside the admission control."""
        try:
            prompts, metadata = parse_request_json(text, len(blobs), limits)
            pixels = inspect_images(blobs, limits)  # headers only: refused before any pixel is decoded
        except RequestRefused as exc:
            return exc.detached()
        assert state.pixels is not None and state.slots is not None
        deadline = time.monotonic() + limits.queue_timeout_s
        if not await state.pixels.take(pixels, limits.queue_timeout_s):
            return busy(f"this worker's decoded-pixel budget ({limits.pixels_in_flight}) stayed full for "
                        f"{limits.queue_timeout_s:g} s")
        try:
            if not await state.slots.take(1, max(0.0, deadline - time.monotonic())):
                return busy(f"all {settings.concurrency} scoring slots stayed busy for {limits.queue_timeout_s:g} s")
            try:
                outcome = await run_in_threadpool(_decode_and_score, blobs, prompts, metadata)
            finally:
                await state.slots.give(1)
        finally:
            await state.pixels.give(pixels)
        if isinstance(outcome, RequestRefused):
            return outcome
        state.stats["scored_requests"] += 1
        state.stats["scored_images"] += len(blobs)
        return {"request_id": rid, "reward": state.identity, "scores": outcome.scores,
                "details": _json_safe(outcome.details)}

    def _decode_and_score(blobs: list[bytes], prompts: list[str], metadata: list[dict[str, Any]]) -> Any:
        """In a worker thread: the images, decoded, scored and dropped before returning."""
        assert state.reward is not None
        images = decode_images(blobs)
        if isinstance(images, RequestRefused):
            return images
        try:
            return run_reward(_memory_guarded(state.reward), settings.reward, images, prompts, metadata)
        except _OutOfMemory as exc:
            logger.error("reward %r ran out of memory on %d images: %s", settings.reward, len(images), exc)
            return busy(f"the reward ran out of memory ({exc}); retry later").detached()
        except ScoreCountError as exc:  # the reward's bug: a retry would get the same; a 4xx, never a 5xx
            logger.error("%s", exc)
            return RequestRefused(422, str(exc))
        except Exception as exc:  # any other break of the reward's contract: its samples fail with the reason
            logger.error("reward %r returned an invalid result for %d images: %s", settings.reward, len(images), exc)
            why = f"the reward's output is invalid: {type(exc).__name__}: {exc}"
            return RewardOutput([None] * len(images), [{"error": why} for _ in images])
        finally:
            images.clear()

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, plus the bearer scheme on every route but /health and /ready when a token is set."""
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        if settings.token:
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": f"the server's token (${TOKEN_ENV})"}}
            for path, operations in schema["paths"].items():
                if path not in _OPEN_PATHS:
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _content_digest(text: str, blobs: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for part in (text.encode("utf-8", "surrogatepass"), *blobs):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


async def _declared_size(request: Any, limit: int) -> int:
    """The body's ``Content-Length`` (``limit`` when it has none); over ``limit``: 413, a moderate excess drained."""
    declared = request.headers.get("content-length")
    if declared is None:
        return limit
    try:
        size = int(declared)
    except ValueError:
        raise RequestRefused(400, f"bad Content-Length {declared[:40]!r}") from None
    if size < 0:
        raise RequestRefused(400, f"bad Content-Length {declared[:40]!r}")
    if size > limit:
        if size <= 4 * limit:  # read (and drop) a moderate excess so the client sees the 413, not a reset
            async for _ in request.stream():
                pass
        raise RequestRefused(413, f"body of {size} bytes is over the limit of {limit}")
    return size


async def _read_body(request: Any, limit: int) -> bytes:
    """The body, refused (413) past ``limit`` bytes while reading."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestRefused(413, f"body over the limit of {limit} bytes")
    return bytes(body)


def app_from_env() -> Any:
    """App factory for uvicorn's worker processes (``--workers``/``--devices``): settings from the environment."""
    return create_app(ServerSettings.from_json(os.environ[_SETTINGS_ENV]))


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (``port`` 0: a free one, see ``getsockname()``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: ServerSettings, port_file: str | None = None, log_level: str = "info") -> None:
    """Run the server until interrupted. Prints (and writes to ``port_file``) the address it listens on.

    One worker: the reward is built here first, so a bad spec fails before anything listens.
    """
    try:
        import uvicorn
        from uvicorn.supervisors import Multiprocess
    except ImportError as exc:
        raise ImportError(f"the reward server needs FastAPI and uvicorn ({exc}); install them with: "
                          "pip install 'blip3o-rl[server]'") from exc
    from .http_protocol import CONFIG_ATTR, header_timeout_protocol

    check_settings(settings)
    workers = len(settings.devices) or settings.workers
    common: dict[str, Any] = {"log_level": log_level, "access_log": False, "timeout_graceful_shutdown": 5,
              "http": header_timeout_protocol()}
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    if workers == 1:
        if settings.devices:
            os.environ["CUDA_VISIBLE_DEVICES"] = settings.devices[0]
        app = create_app(settings, load_reward(settings.reward, **settings.kwargs))
        config = uvicorn.Config(app, **common)
    else:
        registry.check_kwargs("reward", settings.reward, registry.resolve("reward", settings.reward),
                              settings.kwargs)  # a bad spec fails here, not in N workers
        os.environ[_SETTINGS_ENV] = settings.to_json()
        os.environ[_SLOTS_ENV] = tempfile.mkdtemp(prefix="blip3o-rl-reward-slots-")
        config = uvicorn.Config("blip3o_rl.rewards.server:app_from_env", factory=True, workers=workers, **common)
    setattr(config, CONFIG_ATTR, settings.limits.header_timeout_s)  # read by each connection's protocol
    where = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    print(f"blip3o-rl serve-reward: {settings.reward!r} on {where} ({workers} worker{'s' * (workers > 1)}); "
          f"use it as reward: remote:{where}", flush=True)
    if port_file:
        tmp = Path(port_file + ".tmp")
        tmp.write_text(str(port))
        tmp.replace(port_file)
    if workers == 1:
        uvicorn.Server(config).run(sockets=[sock])
    else:
        import inspect

        if "target" in inspect.signature(Multiprocess).parameters:  # uvicorn < 0.36 names the worker target
            Multiprocess(config, target=uvicorn.Server(config).run, sockets=[sock]).run()  # type: ignore[call-arg]
        else:
            Multiprocess(config, sockets=[sock]).run()
