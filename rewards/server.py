"""A reward server: any reward spec the trainer accepts, over HTTP (``blip3o-rl serve-reward``).

    blip3o-rl serve-reward --reward ocr --kwargs '{"engine": "rapidocr"}' --port 8100
    # in a recipe:  rewards: [{reward: "remote:http://127.0.0.1:8100"}]

FastAPI + uvicorn (``pip install 'blip3o-rl[server]'``; imported only when a server is built).

Protocol (the OpenAPI schema is at ``/openapi.json``, interactive docs at ``/docs``):

- ``POST /score``: ``multipart/form-data`` with one ``request`` field, the JSON
  ``{"prompts": [str, ...], "metadata": [{...}, ...]}`` (metadata optional), and one ``images`` file
  part per prompt, each PNG or JPEG bytes. The answer is JSON: ``scores`` (a number or ``null`` per
  image: the reward could not score it, never 0), ``details`` (one object per image; ``error`` says
  why a score is null), ``request_id`` and ``reward`` (spec, name and version of what scored it).
- ``GET /health`` (the process answers), ``GET /ready`` (the reward is built: 200, else 503),
  ``GET /info`` (reward identity and limits), ``GET /stats`` (counters).

Safety: request bodies are parsed as multipart, JSON and PNG/JPEG only; nothing is ever unpickled.
A bearer token (``--token`` or ``$BLIP3O_RL_REWARD_TOKEN``) is required on every route but ``/health``
and ``/ready`` when set, and the server refuses to bind beyond loopback without one. Limits are
checked before the work they protect: the body size (``Content-Length``, then while reading), the
number of images (while parsing), and each image's pixel count from its header, before its pixels
are decoded (a small PNG that would expand to gigapixels is refused, 413). Refusals are 4xx with a
reason; an image the server refuses is named by its index.

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
import io
import ipaddress
import json
import logging
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

from PIL import Image

from .. import registry
from .base import REMOTE_PREFIX, Reward, ScoreCountError, load_reward, run_reward

logger = logging.getLogger(__name__)

TOKEN_ENV = "BLIP3O_RL_REWARD_TOKEN"
_SETTINGS_ENV = "BLIP3O_RL_REWARD_SERVER"  # settings handed to worker processes (JSON)
_SLOTS_ENV = "BLIP3O_RL_REWARD_SERVER_SLOTS"  # folder of per-device lock files
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
FORMATS = ("PNG", "JPEG")


@dataclass(frozen=True)
class ServerLimits:
    """What one ``/score`` request may carry; checked before the work each limit protects."""

    max_body_bytes: int = 64 * 2**20
    max_images: int = 256
    max_image_pixels: int = 4096 * 4096
    max_total_pixels: int = 256 * 2**20


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


def check_settings(settings: ServerSettings) -> None:
    """Refuse settings that would be unsafe or cannot work, with the reason."""
    if not is_loopback(settings.host) and not settings.token:
        raise ValueError(f"serving on {settings.host} (beyond loopback) needs a bearer token: pass --token or "
                         f"set ${TOKEN_ENV}")
    if settings.reward.startswith(REMOTE_PREFIX):
        raise ValueError("a reward server cannot serve a remote reward (it would only forward requests)")
    lim = settings.limits
    for name in ("max_body_bytes", "max_images", "max_image_pixels", "max_total_pixels"):
        if getattr(lim, name) < 1:
            raise ValueError(f"{name} must be >= 1")
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


def reward_identity(settings: ServerSettings, reward: object) -> dict[str, Any]:
    """What the server scores with: recorded in every answer (and by `RemoteReward` in every result)."""
    try:
        server_version = importlib.metadata.version("blip3o-rl")
    except importlib.metadata.PackageNotFoundError:
        server_version = None
    return {"spec": settings.reward, "kwargs": settings.kwargs,
            "name": getattr(reward, "__name__", type(reward).__name__),
            "version": _version_of(reward), "server": f"blip3o-rl {server_version}"}


class RequestRefused(Exception):
    """A request refused with a 4xx: ``status``, a message, and per-image errors where they apply."""

    def __init__(self, status: int, message: str, errors: Sequence[dict[str, Any]] = ()):
        super().__init__(message)
        self.status, self.message, self.errors = status, message, list(errors)


def decode_image(data: bytes, index: int, limits: ServerLimits) -> Image.Image:
    """PNG/JPEG bytes -> a loaded image; the header's size is checked against the limit before decoding."""
    try:
        image = Image.open(io.BytesIO(data), formats=list(FORMATS))  # reads the header only
    except Image.DecompressionBombError as exc:  # PIL's own header check (> 2 x Image.MAX_IMAGE_PIXELS)
        raise RequestRefused(413, f"image {index} is a decompression bomb: {exc}",
                             [{"index": index, "error": f"decompression bomb: {exc}"}]) from None
    except Exception as exc:  # PIL raises UnidentifiedImageError, SyntaxError, OSError...
        raise RequestRefused(415, f"image {index} is not a PNG or JPEG image",
                             [{"index": index, "error": f"not a PNG or JPEG image ({type(exc).__name__})"}]) from None
    pixels = image.width * image.height
    if pixels > limits.max_image_pixels:
        raise RequestRefused(413, f"image {index} is {image.width} x {image.height} = {pixels} pixels, over the "
                             f"limit of {limits.max_image_pixels}",
                             [{"index": index, "error": f"{pixels} pixels > {limits.max_image_pixels}"}])
    try:
        image.load()
    except Exception as exc:  # truncated or corrupt data, PIL's own DecompressionBombError
        raise RequestRefused(422, f"image {index} cannot be decoded: {type(exc).__name__}: {exc}",
                             [{"index": index, "error": f"{type(exc).__name__}: {exc}"}]) from None
    return image


def parse_request_json(text: str, num_images: int) -> tuple[list[str], list[dict[str, Any]]]:
    """The ``request`` field: ``{"prompts": [...], "metadata": [...]}``, one entry per image."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestRefused(400, f"the 'request' field is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or set(data) - {"prompts", "metadata"} or "prompts" not in data:
        raise RequestRefused(422, "'request' must be an object with 'prompts' (a list of strings) and optional "
                             "'metadata' (a list of objects)")
    prompts, metadata = data["prompts"], data.get("metadata")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise RequestRefused(422, "'prompts' must be a list of strings")
    if metadata is None:
        metadata = [{} for _ in prompts]
    if not isinstance(metadata, list) or not all(isinstance(m, dict) for m in metadata):
        raise RequestRefused(422, "'metadata' must be a list of objects")
    if not (len(prompts) == len(metadata) == num_images):
        raise RequestRefused(422, f"{num_images} images, {len(prompts)} prompts and {len(metadata)} metadata "
                             "rows: one of each per image")
    return prompts, metadata


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


class _State:
    """One worker's reward, counters and memory of answered request ids."""

    def __init__(self, settings: ServerSettings, reward: Reward | None):
        self.settings, self.reward = settings, reward
        self.identity: dict[str, Any] | None = None if reward is None else reward_identity(settings, reward)
        self.device: str | None = None
        self.answered: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()
        self.in_flight: dict[str, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        self.semaphore: asyncio.Semaphore | None = None
        self.stats = {"requests": 0, "scored_requests": 0, "scored_images": 0, "dedup_hits": 0, "refused": 0}


def create_app(settings: ServerSettings, reward: Reward | None = None) -> Any:
    """The FastAPI app serving ``settings.reward`` (built at start-up unless ``reward`` is given)."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse
        from pydantic import BaseModel
        from starlette.concurrency import run_in_threadpool
    except ImportError as exc:
        raise ImportError(f"the reward server needs FastAPI and uvicorn ({exc}); install them with: "
                          "pip install 'blip3o-rl[server]'") from exc
    import contextlib

    check_settings(settings)
    state = _State(settings, reward)
    limits = settings.limits

    class RewardInfo(BaseModel):
        spec: str
        kwargs: dict[str, Any]
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
        state.semaphore = asyncio.Semaphore(settings.concurrency)
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
            (409, "request id reused for another body"), (413, "body, image count or pixel count over the limit"),
            (415, "not multipart/form-data, or an image that is not PNG/JPEG"),
            (422, "well-formed but inconsistent request, an image that cannot be decoded, or a reward that "
                  "returned the wrong number of scores"),
            (503, "the reward is not ready yet"))}
    app = FastAPI(title="blip3o-rl reward server", version=reward_identity(settings, object())["server"],
                  description=__doc__, lifespan=lifespan)

    def refuse(rid: str, exc: RequestRefused) -> Any:
        state.stats["refused"] += 1
        logger.warning("request %s refused (%d): %s", rid, exc.status, exc.message)
        return JSONResponse({"detail": exc.message, "errors": exc.errors, "request_id": rid}, exc.status,
                            headers={"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)

    def authorise(request: Any) -> None:
        if not settings.token:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise RequestRefused(401, "a bearer token is required (Authorization: Bearer <token>)")
        if not hmac.compare_digest(given.encode(), settings.token.encode()):
            raise RequestRefused(403, "wrong bearer token")

    @app.middleware("http")
    async def request_log(request: Any, call_next: Any) -> Any:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        if not _REQUEST_ID.match(rid):
            rid = uuid.uuid4().hex
        request.state.request_id = rid
        start = time.perf_counter()
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
        """The reward's identity, this worker's device and the request limits."""
        try:
            authorise(request)
        except RequestRefused as exc:
            return refuse(request.state.request_id, exc)
        return {"reward": state.identity, "device": state.device, "pid": os.getpid(),
                "limits": dataclasses.asdict(limits)}

    @app.get("/stats", responses={k: refusals[k] for k in (401, 403)})
    async def stats(request: Request) -> Any:
        """Counters of this worker: requests, scored requests and images, dedup hits, refusals."""
        try:
            authorise(request)
        except RequestRefused as exc:
            return refuse(request.state.request_id, exc)
        return dict(state.stats)

    multipart_body = {
        "required": True,
        "content": {"multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["request", "images"],
                "properties": {
                    "request": {"type": "string", "contentMediaType": "application/json",
                                "description": 'JSON {"prompts": [string, ...], "metadata": [object, ...]}, one '
                                "entry per image (metadata optional)"},
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
            if state.reward is None or state.semaphore is None:
                return JSONResponse({"detail": "the reward is not ready yet", "errors": [], "request_id": rid},
                                    503, headers={"Retry-After": "1"})
            ctype = request.headers.get("content-type", "")
            if not ctype.lower().startswith("multipart/form-data"):  # e.g. a pickle: refused unread
                raise RequestRefused(415, "expected multipart/form-data (PNG/JPEG images + a JSON 'request' "
                                     f"field), got {ctype or 'no Content-Type'!r}")
            body = await _read_body(request, limits.max_body_bytes)
            text, blobs = await _parse_form(request, body)
            digest = _content_digest(text, blobs)  # of the content: a retry re-encodes with a new boundary
            if rid in state.answered:  # a retry of an answered request: the same answer, not scored again
                seen, answer = state.answered[rid]
                if seen != digest:
                    raise RequestRefused(409, f"request id {rid} was already used for another request")
                state.stats["dedup_hits"] += 1
                return answer
            if rid in state.in_flight:  # a retry while the first attempt is still scoring: wait for it
                seen, pending = state.in_flight[rid]
                if seen != digest:
                    raise RequestRefused(409, f"request id {rid} is in use for another request")
                state.stats["dedup_hits"] += 1
                return await asyncio.shield(pending)
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            state.in_flight[rid] = (digest, future)
            try:
                answer = await _score(rid, text, blobs)
            except BaseException as exc:
                future.set_exception(exc)
                future.exception()  # retrieved: no "never retrieved" warning when no retry waits on it
                raise
            finally:
                state.in_flight.pop(rid, None)
            future.set_result(answer)
            state.answered[rid] = (digest, answer)
            while len(state.answered) > settings.dedup_cache:
                state.answered.popitem(last=False)
            return answer
        except RequestRefused as exc:
            return refuse(rid, exc)

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

    async def _score(rid: str, text: str, blobs: list[bytes]) -> dict[str, Any]:
        prompts, metadata = parse_request_json(text, len(blobs))
        images = await run_in_threadpool(_decode_all, blobs, limits)
        assert state.semaphore is not None and state.reward is not None
        async with state.semaphore:
            try:
                out = await run_in_threadpool(run_reward, state.reward, settings.reward, images, prompts, metadata)
            except ScoreCountError as exc:  # the reward's bug: a retry would get the same; never a 5xx
                raise RequestRefused(422, str(exc)) from None
        state.stats["scored_requests"] += 1
        state.stats["scored_images"] += len(images)
        details = json.loads(json.dumps(out.details, default=str))  # JSON-safe, whatever the reward put there
        return {"request_id": rid, "reward": state.identity, "scores": out.scores, "details": details}

    return app


def _content_digest(text: str, blobs: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for part in (text.encode(), *blobs):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _decode_all(blobs: Sequence[bytes], limits: ServerLimits) -> list[Image.Image]:
    images, total = [], 0
    for i, blob in enumerate(blobs):
        image = decode_image(blob, i, limits)
        total += image.width * image.height
        if total > limits.max_total_pixels:
            raise RequestRefused(413, f"the images add up to more than {limits.max_total_pixels} pixels")
        images.append(image)
    return images


async def _read_body(request: Any, limit: int) -> bytes:
    """The body, refused (413) past ``limit`` bytes: by its Content-Length first, else while reading."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestRefused(400, f"bad Content-Length {declared!r}") from None
        if size > limit:
            if size <= 4 * limit:  # read (and drop) a moderate excess so the client sees the 413, not a reset
                async for _ in request.stream():
                    pass
            raise RequestRefused(413, f"body of {size} bytes is over the limit of {limit}")
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
    check_settings(settings)
    workers = len(settings.devices) or settings.workers
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    if workers == 1:
        if settings.devices:
            os.environ["CUDA_VISIBLE_DEVICES"] = settings.devices[0]
        app = create_app(settings, load_reward(settings.reward, **settings.kwargs))
        config = uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=5)
    else:
        registry.check_kwargs("reward", settings.reward, registry.resolve("reward", settings.reward),
                              settings.kwargs)  # a bad spec fails here, not in N workers
        os.environ[_SETTINGS_ENV] = settings.to_json()
        os.environ[_SLOTS_ENV] = tempfile.mkdtemp(prefix="blip3o-rl-reward-slots-")
        config = uvicorn.Config("blip3o_rl.rewards.server:app_from_env", factory=True, workers=workers,
                                log_level=log_level, access_log=False, timeout_graceful_shutdown=5)
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
