"""A VLM judge as a reward: any OpenAI-compatible chat endpoint (vLLM, SGLang, a hosted API).

    load_reward("judge", url="http://127.0.0.1:8000/v1", model="Qwen/Qwen2.5-VL-7B-Instruct")

Each image is sent with its caption as one chat request, ``POST {url}/chat/completions``: the user
turn holds the image as a base64 data URL (``data:image/png;base64,...``) and ``template`` filled with
``{caption}``; an optional ``system`` turn comes first. Requests run ``max_concurrency`` at a time,
each with the remote-reward client's timeouts and retries (`blip3o_rl.rewards.remote.post_with_retries`:
connection errors, timeouts, 408/425/429/5xx retried with exponential backoff and jitter).

Two ways to read the reply (``mode``):

- ``"yes_no"`` (default): the probability of "yes". When the server returns log-probabilities
  (``logprobs: true``, ``top_logprobs``) the score is ``P(yes) / (P(yes) + P(no))`` over the first
  generated token's alternatives (every spelling that strips and lower-cases to yes / no counts);
  without them, a reply starting with yes scores 1, with no 0.
- ``"score"``: the first number in the reply, divided by ``max_score`` (so in [0, 1]); a number outside
  ``[0, max_score]`` is a failure.

A reply that cannot be read (not JSON, no choices, no yes/no, no number, out of range) and a request
that fails for good fail that sample (``None``, the reason and the raw reply in its details), never 0.
Every result records the judge's URL, model and mode.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from .base import RewardOutput, check_score, check_scores
from .remote import encode_image, post_with_retries

logger = logging.getLogger(__name__)

API_KEY_ENV = "BLIP3O_RL_JUDGE_API_KEY"
YES_NO_TEMPLATE = (
    'Does this image match the caption "{caption}"? Check every object, count, colour, position and any '
    "written text. Answer with a single word: Yes or No."
)
SCORE_TEMPLATE = (
    'Rate how well this image matches the caption "{caption}" and how good it looks, from 0 (not at all) '
    "to 10 (perfectly). Answer with the number only."
)
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


class JudgeReplyError(ValueError):
    """A reply the parser cannot turn into a score (the sample fails with this reason)."""


def parse_yes_no(choice: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """P(yes) from one chat-completion choice: from the first token's top log-probs when present, else
    from the reply's first word. Raises `JudgeReplyError` when neither yes nor no can be read."""
    text = _content(choice)
    content = ((choice.get("logprobs") or {}).get("content")) or []
    if content:
        first = content[0]
        alternatives = first.get("top_logprobs") or [first]
        p = {"yes": 0.0, "no": 0.0}
        for alt in alternatives:
            word = str(alt.get("token", "")).strip().lower()
            logprob, why = check_score(alt.get("logprob"))
            if word in p and why is not None:  # "-0.1" (a string) or true: a broken server, not a guess
                raise JudgeReplyError(f"the log-prob of {word!r} is {why}")
            if word in p and logprob is not None:
                p[word] += math.exp(logprob)
        if p["yes"] + p["no"] > 0:
            return p["yes"] / (p["yes"] + p["no"]), {"p_yes": p["yes"], "p_no": p["no"], "source": "logprobs"}
        raise JudgeReplyError(f"neither yes nor no among the first token's top log-probs (reply {text!r})")
    words = re.findall(r"[a-z]+", text.lower())
    if words and words[0] in ("yes", "no"):
        return (1.0 if words[0] == "yes" else 0.0), {"source": "text"}
    raise JudgeReplyError(f"the reply is neither yes nor no: {text[:200]!r}")


def parse_score(choice: dict[str, Any], max_score: float) -> tuple[float, dict[str, Any]]:
    """The first number of the reply over ``max_score``; `JudgeReplyError` without one or out of range."""
    text = _content(choice)
    m = _NUMBER.search(text)
    if m is None:
        raise JudgeReplyError(f"no number in the reply: {text[:200]!r}")
    value = float(m.group())
    if not 0 <= value <= max_score:
        raise JudgeReplyError(f"score {value:g} outside [0, {max_score:g}] in the reply {text[:200]!r}")
    return value / max_score, {"raw_score": value, "source": "text"}


def _content(choice: dict[str, Any]) -> str:
    message = choice.get("message")
    if not isinstance(message, dict):
        raise JudgeReplyError(f"the choice has no message: {str(choice)[:200]}")
    content = message.get("content")
    if isinstance(content, list):  # some servers return content parts
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def data_url(image: Image.Image, fmt: str = "png") -> str:
    """``data:image/png;base64,...`` (or JPEG) of ``image``, as OpenAI-compatible servers take images."""
    data, mime = encode_image(image if fmt == "png" else image.convert("RGB"), fmt)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class VLMJudgeReward:
    """``judge``: a VLM behind an OpenAI-compatible chat endpoint scores each image against its caption.

    Args:
        url: the API base, e.g. ``http://127.0.0.1:8000/v1`` (requests go to ``{url}/chat/completions``).
        model: the served model name.
        mode: ``"yes_no"`` (probability of yes) or ``"score"`` (a number over ``max_score``).
        template: the user text, with ``{caption}``; default `YES_NO_TEMPLATE` / `SCORE_TEMPLATE`.
        system: an optional system message.
        max_tokens / temperature / top_logprobs: generation settings (yes_no asks for log-probs).
        max_concurrency: requests in flight; timeout_s / connect_timeout_s / retries / backoff_s /
            max_backoff_s: the remote client's policy (`post_with_retries`).
        api_key: bearer token (default ``$BLIP3O_RL_JUDGE_API_KEY``, else none).
        extra_body: more request fields (e.g. ``{"chat_template_kwargs": {"enable_thinking": false}}``).
    """

    def __init__(self, url: str, model: str, *, mode: str = "yes_no", template: str | None = None,
                 system: str | None = None, max_score: float = 10.0, max_tokens: int | None = None,
                 temperature: float = 0.0, top_logprobs: int = 20, max_concurrency: int = 8,
                 timeout_s: float = 60.0, connect_timeout_s: float = 5.0, retries: int = 3, backoff_s: float = 0.5,
                 max_backoff_s: float = 10.0, api_key: str | None = None, image_format: str = "png",
                 extra_body: dict[str, Any] | None = None):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"judge: url must be http(s)://host:port/..., got {url!r}")
        if mode not in ("yes_no", "score"):
            raise ValueError(f"judge: mode must be 'yes_no' or 'score', got {mode!r}")
        template = template or (YES_NO_TEMPLATE if mode == "yes_no" else SCORE_TEMPLATE)
        if "{caption}" not in template:
            raise ValueError("judge: template must contain {caption}")
        if max_score <= 0 or max_concurrency < 1 or retries < 0 or timeout_s <= 0:
            raise ValueError("judge: max_score and timeout_s must be > 0, max_concurrency >= 1, retries >= 0")
        self.url, self.model, self.mode, self.template, self.system = url.rstrip("/"), model, mode, template, system
        self.max_score, self.temperature, self.top_logprobs = float(max_score), float(temperature), int(top_logprobs)
        self.max_tokens = max_tokens if max_tokens is not None else (1 if mode == "yes_no" else 8)
        self.max_concurrency = int(max_concurrency)
        self.timeout = (float(connect_timeout_s), float(timeout_s))
        self.retries, self.backoff_s, self.max_backoff_s = int(retries), float(backoff_s), float(max_backoff_s)
        self.image_format, self.extra_body = image_format, dict(extra_body or {})
        self._key = api_key or os.environ.get(API_KEY_ENV) or None
        self._local = threading.local()
        self.__name__ = f"judge:{self.model}"

    def request_body(self, image: Image.Image, caption: str) -> dict[str, Any]:
        """The chat-completion request for one image (public so a test or a user can inspect it)."""
        user = [{"type": "image_url", "image_url": {"url": data_url(image, self.image_format)}},
                {"type": "text", "text": self.template.format(caption=caption)}]
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": user})
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                                "temperature": self.temperature}
        if self.mode == "yes_no" and self.top_logprobs > 0:
            body.update(logprobs=True, top_logprobs=self.top_logprobs)
        return {**body, **self.extra_body}

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            session = self._local.session = requests.Session()
        return session

    def _score_one(self, index: int, image: Any, caption: str) -> tuple[float | None, dict[str, Any]]:
        info: dict[str, Any] = {"judge": {"url": self.url, "model": self.model, "mode": self.mode}}
        if not isinstance(image, Image.Image):
            return None, {**info, "error": f"not a PIL image: {type(image).__name__}"}
        try:
            body = self.request_body(image, caption)
        except Exception as exc:  # an image PIL cannot encode
            return None, {**info, "error": f"cannot encode the image: {type(exc).__name__}: {exc}"}
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        resp, attempts, why = post_with_retries(
            self._session(), f"{self.url}/chat/completions", what=f"judge {self.url} (sample {index})",
            timeout=self.timeout, retries=self.retries, backoff_s=self.backoff_s, max_backoff_s=self.max_backoff_s,
            json=body, headers=headers)
        info["judge"]["attempts"] = attempts
        if resp is None:
            return None, {**info, "error": f"judge request failed after {attempts} attempt(s): {why}"}
        try:
            data = resp.json()
            choices = data.get("choices") if isinstance(data, dict) else None
            if not choices or not isinstance(choices[0], dict):
                raise JudgeReplyError(f"no choices in the answer: {str(data)[:200]}")
            choice = choices[0]
            info["reply"] = _content(choice)
            if self.mode == "yes_no":
                score, extra = parse_yes_no(choice)
            else:
                score, extra = parse_score(choice, self.max_score)
        except (JudgeReplyError, ValueError, TypeError, KeyError, AttributeError) as exc:
            return None, {**info, "error": f"unreadable judge reply: {exc}"}
        return score, {**info, **extra}

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str],
                 metadata: Sequence[dict[str, Any]] | None = None) -> RewardOutput:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        with ThreadPoolExecutor(min(self.max_concurrency, max(1, len(images))), thread_name_prefix="judge") as pool:
            results = list(pool.map(self._score_one, range(len(images)), images, prompts))
        failed = sum(s is None for s, _ in results)
        if failed:
            first = next(d["error"] for s, d in results if s is None)
            logger.warning("judge %s: %d of %d samples failed (first: %s)", self.url, failed, len(results), first)
        return check_scores([s for s, _ in results], len(images), self.__name__, [d for _, d in results])
