"""What a reward-server request may cost, checked before the work it protects (`rewards/server.py`).

- `ServerLimits`: per-request limits (body bytes, images, pixels per image and per request, the size
  and nesting of the ``request`` JSON) and per-worker budgets of what is in flight at once (body bytes,
  decoded pixels), with the time a request may wait for them and the read timeouts.
- `parse_request_json`: the ``request`` field, any parser failure a 400, never a 5xx.
- `inspect_images`: every image's size from its header, before any pixel is decoded.
- `decode_images`: the pixels, inside the admission control; refusals let the buffers go at once.
- `Budget`: an amount shared by the requests in flight; a request waits for its share or is refused.

Worst-case memory of one worker (documented in docs/reward-server.md), with ``C`` = concurrency:
``resident + 2 * max_body_bytes_in_flight + max_pixels_in_flight * (4 + r)`` bytes, where ``4`` is the
decoded RGBA bytes per pixel and ``r`` the reward's own working bytes per pixel (``C`` batches at once,
all within the pixel budget).
"""

from __future__ import annotations

import asyncio
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

FORMATS = ("PNG", "JPEG")


@dataclass(frozen=True)
class ServerLimits:
    """What one ``/score`` request may carry and what one worker holds in flight; see the module docstring.

    ``max_pixels_in_flight`` / ``max_body_bytes_in_flight`` default to one request at the per-request
    limit (``max_total_pixels`` / ``max_body_bytes``); a request that does not get its share within
    ``queue_timeout_s`` is answered 503 with ``Retry-After``.
    """

    max_body_bytes: int = 64 * 2**20
    max_images: int = 256
    max_image_pixels: int = 4096 * 4096
    max_total_pixels: int = 256 * 2**20
    max_request_json_bytes: int = 4 * 2**20
    max_json_depth: int = 32
    max_pixels_in_flight: int | None = None
    max_body_bytes_in_flight: int | None = None
    queue_timeout_s: float = 60.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 120.0

    @property
    def pixels_in_flight(self) -> int:
        return self.max_total_pixels if self.max_pixels_in_flight is None else self.max_pixels_in_flight

    @property
    def body_bytes_in_flight(self) -> int:
        return 2 * self.max_body_bytes if self.max_body_bytes_in_flight is None else self.max_body_bytes_in_flight

    def check(self) -> None:
        """Refuse limits that cannot work, naming the field."""
        for name in ("max_body_bytes", "max_images", "max_image_pixels", "max_total_pixels",
                     "max_request_json_bytes", "max_json_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("queue_timeout_s", "header_timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.pixels_in_flight < self.max_total_pixels:
            raise ValueError(f"max_pixels_in_flight ({self.pixels_in_flight}) < max_total_pixels "
                             f"({self.max_total_pixels}): a request at the limit could never be admitted")
        if self.body_bytes_in_flight < self.max_body_bytes:
            raise ValueError(f"max_body_bytes_in_flight ({self.body_bytes_in_flight}) < max_body_bytes "
                             f"({self.max_body_bytes}): a body at the limit could never be admitted")


class RequestRefused(Exception):
    """A request refused with ``status``, a message, per-image errors where they apply, extra headers."""

    def __init__(self, status: int, message: str, errors: Sequence[dict[str, Any]] = (),
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.errors, self.headers = status, message, list(errors), headers

    def detached(self) -> RequestRefused:
        """This refusal without its traceback and context, which would keep their frames' buffers alive."""
        self.__traceback__ = self.__context__ = self.__cause__ = None
        return self


def busy(message: str, retry_after_s: int = 2) -> RequestRefused:
    """A 503 the client retries after ``Retry-After`` seconds (memory or queue pressure)."""
    return RequestRefused(503, message, headers={"Retry-After": str(retry_after_s)})


# ---------------------------------------------------------------------------------------- the JSON field
def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of the float range")
    return value


def _check_tree(data: Any, max_depth: int) -> None:
    """Nesting at most ``max_depth``; every string (keys too) valid Unicode (no lone surrogates)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            node.encode("utf-8")  # UnicodeEncodeError for a lone surrogate ("\ud800")
            continue
        if not isinstance(node, (dict, list)):
            continue
        if depth > max_depth:
            raise ValueError(f"nested deeper than {max_depth} levels")
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(key, str):
                key.encode("utf-8")
            stack.append((value, depth + 1))


def parse_request_json(text: str, num_images: int, limits: ServerLimits) -> tuple[list[str], list[dict[str, Any]]]:
    """The ``request`` field: ``{"prompts": [...], "metadata": [...]}``, one entry per image.

    Whatever the parser raises (bad syntax, an integer over Python's digit limit, nesting past the
    recursion limit, NaN) is a 400 with the reason; a well-formed but wrong shape is a 422.
    """
    if len(text) > limits.max_request_json_bytes:
        raise RequestRefused(413, f"the 'request' field has {len(text)} characters, over the limit of "
                             f"{limits.max_request_json_bytes}")
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
        _check_tree(data, limits.max_json_depth)
    except RecursionError:
        raise RequestRefused(400, f"the 'request' field is nested deeper than {limits.max_json_depth} levels") from None
    except Exception as exc:  # JSONDecodeError, ValueError (int digits, NaN), UnicodeError: the client's fault
        raise RequestRefused(400, f"the 'request' field is not valid JSON: {type(exc).__name__}: {exc}") from None
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


# ---------------------------------------------------------------------------------------- the images
def _open(data: bytes, index: int) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=list(FORMATS))  # reads the header only
    except Image.DecompressionBombError as exc:  # PIL's own header check (> 2 x Image.MAX_IMAGE_PIXELS)
        raise RequestRefused(413, f"image {index} is a decompression bomb: {exc}",
                             [{"index": index, "error": f"decompression bomb: {exc}"}]) from None
    except MemoryError:
        raise busy(f"out of memory reading the header of image {index}") from None
    except Exception as exc:  # PIL raises UnidentifiedImageError, SyntaxError, OSError...
        raise RequestRefused(415, f"image {index} is not a PNG or JPEG image",
                             [{"index": index, "error": f"not a PNG or JPEG image ({type(exc).__name__})"}]) from None


def inspect_images(blobs: Sequence[bytes], limits: ServerLimits) -> int:
    """The request's total pixel count, from the headers alone; each image and the sum checked first."""
    total = 0
    for i, blob in enumerate(blobs):
        with _open(blob, i) as image:
            pixels = image.width * image.height
        if pixels > limits.max_image_pixels:
            raise RequestRefused(413, f"image {i} is {image.width} x {image.height} = {pixels} pixels, over the "
                                 f"limit of {limits.max_image_pixels}",
                                 [{"index": i, "error": f"{pixels} pixels > {limits.max_image_pixels}"}])
        total += pixels
    if total > limits.max_total_pixels:
        raise RequestRefused(413, f"the images add up to {total} pixels, over the limit of {limits.max_total_pixels}")
    return total


def decode_images(blobs: Sequence[bytes]) -> list[Image.Image] | RequestRefused:
    """The decoded images (headers already checked by `inspect_images`), or the refusal.

    The refusal is returned, without a traceback, after the images decoded so far are dropped: a raised
    exception would keep them alive through its frames until the cyclic garbage collector runs.
    """
    images: list[Image.Image] = []
    refusal: RequestRefused | None = None
    for i, blob in enumerate(blobs):
        try:
            image = _open(blob, i)
            image.load()
        except RequestRefused as exc:
            refusal = exc
        except MemoryError:
            refusal = busy(f"out of memory decoding image {i}")
        except Exception as exc:  # truncated or corrupt data
            refusal = RequestRefused(422, f"image {i} cannot be decoded: {type(exc).__name__}: {exc}",
                                     [{"index": i, "error": f"{type(exc).__name__}: {exc}"}])
        if refusal is not None:
            images.clear()
            return refusal.detached()
        images.append(image)
    return images


# ---------------------------------------------------------------------------------------- budgets
class Budget:
    """``total`` units (bytes, pixels) shared by the requests in flight of one worker (one event loop)."""

    def __init__(self, total: int, what: str):
        self.total, self.left, self.what = int(total), int(total), what
        self._changed = asyncio.Condition()

    async def take(self, amount: int, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until ``amount`` is free and take it; False when it was not."""
        if amount > self.total:
            return False
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.left >= amount), timeout_s)
            except asyncio.TimeoutError:  # not the builtin before Python 3.11
                return False
            self.left -= amount
            return True

    async def give(self, amount: int) -> None:
        async with self._changed:
            self.left += amount
            self._changed.notify_all()
