"""The reward interface, the reward registry and weighted combinations of rewards.

A reward scores a batch of decoded images against their prompts::

    reward(images: list[PIL.Image.Image], prompts: list[str], metadata: list[dict]) -> RewardOutput

`RewardOutput.scores[i]` is a float, or ``None`` when the reward could not score sample ``i`` (OCR
engine error, unparsable prompt, server timeout...). ``None`` is never turned into 0: the trainer
excludes that sample from the loss and counts it in the logs. User functions may return a plain
list of scores; `load_reward` wraps them.

Every score is checked (`check_scores`, shared by local rewards, `RemoteReward` and the judge): a score
that is not a real number (a string such as ``"0.51"``, a bool, NaN) fails its sample with the reason;
a wrong number of scores fails every sample of the batch (`score_batch`) and the log says why.

``load_reward("remote:http://host:port[/path]", **client_kwargs)`` scores on a reward server
(``blip3o-rl serve-reward``, `blip3o_rl.rewards.server`) through `blip3o_rl.rewards.remote.RemoteReward`.

Timeouts: `score_batch(..., timeout_s=T)` runs the reward in a daemon thread and gives up after T
seconds, failing the batch's samples with the reason. Python threads cannot be killed: the hung call
keeps running in the background (a daemon thread, so it never blocks the process exit), and a reward
with `MAX_HUNG_CALLS` calls still running past their deadline is not called again until one returns.
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from .. import registry

logger = logging.getLogger(__name__)


@dataclass
class RewardOutput:
    """Scores for one batch: ``scores[i]`` is a float or ``None`` (failed), ``details[i]`` a dict for logs."""

    scores: list[float | None]
    details: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.details:
            self.details = [{} for _ in self.scores]
        if len(self.details) != len(self.scores):
            raise ValueError(f"RewardOutput has {len(self.scores)} scores but {len(self.details)} details")

    @property
    def num_failed(self) -> int:
        return sum(s is None for s in self.scores)

    def metrics(self, prefix: str) -> dict[str, float]:
        """``<prefix>/mean``, ``/std`` (over the scored samples; NaN when none) and ``/failed`` (a count)."""
        mean, std = _mean_std([s for s in self.scores if s is not None])
        return {f"{prefix}/mean": mean, f"{prefix}/std": std, f"{prefix}/failed": float(self.num_failed)}

    @classmethod
    def concat(cls, parts: Sequence[RewardOutput]) -> RewardOutput:
        """The outputs of consecutive chunks of one batch, joined in order."""
        return cls([x for p in parts for x in p.scores], [d for p in parts for d in p.details])


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample (Bessel) standard deviation; NaN for no values, std 0 for one."""
    if not values:
        return math.nan, math.nan
    mean = math.fsum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


@runtime_checkable
class Reward(Protocol):
    """Anything callable as ``reward(images, prompts, metadata)`` returning a `RewardOutput`.

    Optional attribute ``max_concurrent_calls`` (default 1): how many calls `WeightedRewards` may run at
    once (e.g. chunks of a pipelined step). The default keeps a reward that is not thread-safe safe;
    `RemoteReward` allows as many as its request concurrency.
    """

    def __call__(
        self, images: Sequence[Image.Image], prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> RewardOutput: ...


def register_reward(name: str, target: Any) -> None:
    """Register ``name`` for ``target`` (an object or "package.module:attribute") so `load_reward(name)` finds it.

    Built-in names are the ``blip3o_rl.reward`` entry points (tiny_layout, geneval, ocr).
    """
    registry.register("reward", name, target)


def registered_rewards() -> list[str]:
    return registry.names("reward")


class FunctionReward:
    """Adapts a plain function ``fn(images, prompts, metadata, **kwargs) -> list[float | None]``."""

    def __init__(self, fn: Callable[..., Any], **kwargs: Any):
        self.fn = fn
        self.kwargs = kwargs
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, images, prompts, metadata) -> RewardOutput:
        return self.fn(images, prompts, metadata, **self.kwargs)


REMOTE_PREFIX = "remote:"
REMOTE_CLIENT = "blip3o_rl.rewards.remote:RemoteReward"
#: calls of one reward left running past their timeout before `score_batch` stops calling it
MAX_HUNG_CALLS = 4
#: ``PIL.Image.info`` key of a failed decode's placeholder (`blip3o_rl.policies.base.DECODE_ERROR`; rewards
#: do not import policies)
DECODE_ERROR = "decode_error"


def load_reward(spec: str, **kwargs: Any) -> Reward:
    """Build a reward from a registered name, "package.module:attr" or "path/to/file.py:attr".

    A class (or any attribute that is not a plain function) is called with ``kwargs`` and must return
    a reward; a plain function is the reward itself, called with ``kwargs`` on every batch.
    ``"remote:http://host:port[/path]"`` builds a `RemoteReward` client for that server (``kwargs``: its
    client settings, see `blip3o_rl.rewards.remote`).
    """
    if isinstance(spec, str) and spec.startswith(REMOTE_PREFIX):
        # by name, not by import: the client module builds on this one
        client = registry.resolve("reward", REMOTE_CLIENT)
        registry.check_kwargs("reward", spec, client, kwargs)
        return client(spec[len(REMOTE_PREFIX):], **kwargs)
    target = registry.resolve("reward", spec)
    registry.check_kwargs("reward", spec, target, kwargs)  # unknown keys fail now, not on the first batch
    if inspect.isfunction(target):
        return FunctionReward(target, **kwargs)
    reward = target(**kwargs)
    if not callable(reward):
        raise TypeError(f"reward {spec!r} built a {type(reward).__name__}, which is not callable")
    return reward


class ScoreCountError(ValueError):
    """A reward returned a number of scores other than its batch's size (or no list of scores at all).

    `score_batch` turns it into a failed batch (every sample ``None``, with this reason); the reward
    server answers it with a 422, which clients do not retry.
    """


def check_score(value: Any) -> tuple[float | None, str | None]:
    """``(score, None)`` for a finite real number, ``(None, None)`` for ``None`` (a failed sample), else
    ``(None, the reason)``.

    A Python or numpy real, or a 0-d array/tensor holding one, is a number; a string (even ``"0.51"``),
    a bool or anything else is not, and a NaN or infinity is not a score.
    """
    if value is None:
        return None, None
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        value = value.item()  # numpy scalars, 0-d arrays and tensors
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None, f"{value!r} (a {type(value).__name__}) is not a number"
    score = float(value)
    if not math.isfinite(score):
        return None, f"non-finite score {score}"
    return score, None


def check_scores(scores: Any, n: int, name: str, details: Sequence[dict[str, Any]] | None = None) -> RewardOutput:
    """What a reward returned for a batch of ``n``, checked: one function for every reward path (local
    rewards through `score_batch`, a reward server's answers in `RemoteReward`, the judge).

    Raises `ScoreCountError` unless ``scores`` is a list-like of ``n`` entries (and ``details``, when
    given, too). A sample whose score is not a number (see `check_score`) fails (``None``) with the
    reason in its details' ``error``; a warning names the reward and how many failed so.
    """
    if isinstance(scores, (str, bytes, dict)) or not isinstance(scores, Iterable):
        raise ScoreCountError(f"reward {name!r} returned {type(scores).__name__} {str(scores)[:80]!r}, not a list "
                              f"of {n} scores")
    scores = list(scores)
    if len(scores) != n:
        raise ScoreCountError(f"reward {name!r} returned {len(scores)} scores for a batch of {n} images")
    rows = [{} for _ in scores] if not details else list(details)
    if len(rows) != n:
        raise ScoreCountError(f"reward {name!r} returned {len(rows)} details for a batch of {n} images")
    checked: list[float | None] = []
    bad: list[str] = []
    for i, raw in enumerate(scores):
        score, why = check_score(raw)
        if why is not None:
            rows[i] = {**(rows[i] if isinstance(rows[i], dict) else {"details": rows[i]}), "error": why}
            bad.append(f"sample {i}: {why}")
        checked.append(score)
    if bad:
        logger.warning("reward %r: %d of %d scores are not numbers, their samples are excluded (%s)", name, len(bad),
                       n, bad[0])
    return RewardOutput(checked, rows)


def failed_batch(n: int, why: str) -> RewardOutput:
    """Every sample of a batch of ``n`` failed (``None``) for the same reason."""
    return RewardOutput([None] * n, [{"error": why} for _ in range(n)])


class RewardTimeout(TimeoutError):
    """A reward call did not return within its ``timeout_s``."""


class _HungCalls:
    """Counts each reward's calls still running past their deadline (their daemon threads cannot be killed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, int] = {}

    def count(self, reward: object) -> int:
        with self._lock:
            return self._running.get(id(reward), 0)

    def add(self, reward: object, delta: int) -> None:
        with self._lock:
            self._running[id(reward)] = self._running.get(id(reward), 0) + delta


_HUNG = _HungCalls()


def _call_with_deadline(reward: Reward, name: str, timeout_s: float, images, prompts, metadata) -> Any:
    """``reward(images, prompts, metadata)`` in a daemon thread; `RewardTimeout` after ``timeout_s``.

    A call past its deadline is abandoned, not stopped (Python cannot kill a thread): it runs on in the
    background, a daemon thread, so it never blocks the process exit.
    """
    hung = _HUNG.count(reward)
    if hung >= MAX_HUNG_CALLS:
        raise RewardTimeout(f"not called: {hung} earlier calls are still running past their {timeout_s:g} s timeout")
    box: dict[str, Any] = {}
    done = threading.Event()
    lock = threading.Lock()  # the call's end and its abandonment are decided once, in one order
    flags = {"finished": False, "abandoned": False}

    def run() -> None:
        try:
            box["out"] = reward(images, prompts, metadata)
        except BaseException as exc:  # handed to the caller, which decides
            box["exc"] = exc
        finally:
            with lock:
                flags["finished"] = True
                abandoned = flags["abandoned"]
            done.set()
            if abandoned:
                _HUNG.add(reward, -1)
                logger.warning("reward %r: a call abandoned after its %g s timeout has returned", name, timeout_s)

    threading.Thread(target=run, name=f"reward-{name}", daemon=True).start()
    if not done.wait(timeout_s):
        with lock:
            if not flags["finished"]:  # else it finished just now: take its result after all
                flags["abandoned"] = True
                _HUNG.add(reward, 1)
        if flags["abandoned"]:
            raise RewardTimeout(f"timed out after {timeout_s:g} s (the call is left running in a daemon thread)")
        done.wait()
    if "exc" in box:
        raise box["exc"]
    return box["out"]


def run_reward(reward: Reward, name: str, images, prompts, metadata, timeout_s: float | None = None) -> RewardOutput:
    """Call ``reward`` and check its output (`check_scores`); an exception fails (``None``) every sample, loudly.

    With ``timeout_s``, a call that has not returned by then fails every sample of the batch (reason in
    the details, an error in the log) and is left running in a daemon thread (see `_call_with_deadline`).
    A wrong number of scores raises `ScoreCountError` (the caller decides: `score_batch` excludes the
    batch, the reward server refuses the request). An image marked as a failed decode (``info`` holds
    `DECODE_ERROR`, set by the policy's decoder) fails its sample with that reason.
    """
    try:
        if timeout_s is None:
            raw = reward(images, prompts, metadata)
        else:
            raw = _call_with_deadline(reward, name, timeout_s, images, prompts, metadata)
    except RewardTimeout as exc:
        logger.error("reward %r on a batch of %d: %s", name, len(images), exc)
        return failed_batch(len(images), f"reward timeout: {exc}")
    except Exception as exc:  # a crashing reward fails its samples; training goes on and the log says so
        logger.error("reward %r failed on a batch of %d: %s\n%s", name, len(images), exc, traceback.format_exc())
        return failed_batch(len(images), f"{type(exc).__name__}: {exc}")
    if isinstance(raw, RewardOutput):
        out = check_scores(raw.scores, len(images), name, raw.details)
    else:
        out = check_scores(raw, len(images), name)
    for i, image in enumerate(images):
        why = getattr(image, "info", {}).get(DECODE_ERROR)
        if why is not None:  # a placeholder, not an image: whatever the reward made of it is not a score
            out.scores[i], out.details[i] = None, {**out.details[i], "error": f"no image: {why}"}
    return out


def score_batch(reward: Reward, name: str, images, prompts, metadata, timeout_s: float | None = None) -> RewardOutput:
    """`run_reward`, where a wrong number of scores fails every sample of the batch (a warning says why).

    Nothing is scored 0: the trainer excludes the failed samples and counts the failure like any other
    (a step where every sample failed counts towards ``grpo.max_failed_reward_steps``).
    """
    try:
        return run_reward(reward, name, images, prompts, metadata, timeout_s)
    except ScoreCountError as exc:
        logger.warning("%s: its %d samples are excluded", exc, len(images))
        return failed_batch(len(images), str(exc))


@dataclass
class CombinedScores:
    """Per-reward outputs and their weighted sum (``None`` where any reward failed the sample).

    ``started`` / ``finished``: `time.perf_counter` when the first reward call began and the last one
    ended (the span the rewards were busy; a pipelined step compares it with the time it waited).
    """

    total: list[float | None]
    outputs: dict[str, RewardOutput]
    started: float = math.nan
    finished: float = math.nan

    def metrics(self, prefix: str = "reward") -> dict[str, float]:
        """``<prefix>/mean|std`` of the weighted total and ``<prefix>/<name>/mean|std|failed`` per reward."""
        mean, std = _mean_std([s for s in self.total if s is not None])
        out = {f"{prefix}/mean": mean, f"{prefix}/std": std}
        for name, output in self.outputs.items():
            out.update(output.metrics(f"{prefix}/{name}"))
        return out

    @classmethod
    def concat(cls, parts: Sequence[CombinedScores]) -> CombinedScores:
        """The scores of consecutive chunks of one batch, joined in order (nothing reordered or dropped)."""
        if not parts:
            raise ValueError("no chunks to join")
        names = list(parts[0].outputs)
        return cls(
            total=[x for p in parts for x in p.total],
            outputs={n: RewardOutput.concat([p.outputs[n] for p in parts]) for n in names},
            started=min(p.started for p in parts),
            finished=max(p.finished for p in parts),
        )


class _Lane:
    """Runs one reward's calls on up to ``workers`` daemon threads, started on first use.

    Daemon threads, unlike a `ThreadPoolExecutor`'s, are not joined at interpreter exit, so a reward
    stuck without a timeout cannot keep the process alive after training ends.
    """

    def __init__(self, name: str, workers: int):
        self.name, self.workers = name, max(1, int(workers))
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((future, fn))
        with self._lock:
            if len(self._threads) < self.workers:
                t = threading.Thread(target=self._run, name=f"rewards-{self.name}-{len(self._threads)}", daemon=True)
                self._threads.append(t)
                t.start()
        return future

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # handed to whoever waits on the future
                    future.set_exception(exc)

    def close(self) -> None:
        with self._lock:
            for _ in self._threads:
                self._jobs.put(None)
            self._threads = []


class WeightedRewards:
    """Several named rewards combined as ``sum(weight * score)``; a sample fails if any reward fails it.

    ``rewards``: ``(name, weight, reward)`` or ``(name, weight, reward, timeout_s)`` entries.

    `submit` returns at once with a future: each reward runs in its own threads (``max_concurrent_calls``
    of the reward at a time, default 1), so batches submitted one after another (the chunks of a
    pipelined step) are scored while the caller goes on, and different rewards score in parallel.
    Calling the object scores synchronously through the same threads.
    """

    def __init__(self, rewards: Sequence[tuple[Any, ...]]):
        if not rewards:
            raise ValueError("at least one reward is needed")
        entries: list[tuple[str, float, Reward, float | None]] = []
        for entry in rewards:
            if len(entry) not in (3, 4):
                raise ValueError(f"a reward entry is (name, weight, reward[, timeout_s]), got {entry!r}")
            name, weight, reward = entry[:3]
            timeout = entry[3] if len(entry) == 4 else None
            if timeout is not None and not timeout > 0:
                raise ValueError(f"reward {name!r}: timeout_s must be > 0, got {timeout!r}")
            entries.append((name, weight, reward, None if timeout is None else float(timeout)))
        names = [e[0] for e in entries]
        if len(set(names)) != len(names):
            raise ValueError(f"reward names must be unique, got {names}")
        self.rewards = [(n, w, r) for n, w, r, _ in entries]
        self.timeouts = {n: t for n, _, _, t in entries}
        self._lanes = {n: _Lane(n, getattr(r, "max_concurrent_calls", 1)) for n, _, r, _ in entries}

    @property
    def names(self) -> list[str]:
        return [n for n, _, _ in self.rewards]

    def submit(self, images, prompts, metadata) -> Future[CombinedScores]:
        """Start scoring a batch; the future holds the `CombinedScores` (or the exception of a buggy reward)."""
        images, prompts, metadata = list(images), list(prompts), list(metadata)
        spans: dict[str, tuple[float, float]] = {}
        parts: dict[str, Future[RewardOutput]] = {}
        for name, _, reward in self.rewards:
            def job(name=name, reward=reward) -> RewardOutput:
                start = time.perf_counter()
                try:
                    return score_batch(reward, name, images, prompts, metadata, self.timeouts[name])
                finally:
                    spans[name] = (start, time.perf_counter())

            parts[name] = self._lanes[name].submit(job)
        combined: Future[CombinedScores] = Future()
        left = [len(parts)]
        lock = threading.Lock()

        def one_done(_: Future[RewardOutput]) -> None:
            with lock:
                left[0] -= 1
                if left[0]:
                    return
            try:
                outputs = {n: f.result() for n, f in parts.items()}
                scores = self._combine(outputs, len(images))
                scores.started = min(s for s, _ in spans.values())
                scores.finished = max(e for _, e in spans.values())
                combined.set_result(scores)
            except Exception as exc:  # anything score_batch did not turn into failed samples
                combined.set_exception(exc)

        for f in parts.values():
            f.add_done_callback(one_done)
        return combined

    def __call__(self, images, prompts, metadata) -> CombinedScores:
        return self.submit(images, prompts, metadata).result()

    def _combine(self, outputs: dict[str, RewardOutput], n: int) -> CombinedScores:
        total: list[float | None] = []
        for i in range(n):
            parts = [(w, outputs[name].scores[i]) for name, w, _ in self.rewards]
            total.append(None if any(s is None for _, s in parts) else sum(w * s for w, s in parts if s is not None))
        return CombinedScores(total=total, outputs=outputs)

    def close(self) -> None:
        """Stop the idle scoring threads (they are daemon threads: optional)."""
        for lane in self._lanes.values():
            lane.close()
