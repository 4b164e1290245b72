"""The reward interface, the reward registry and weighted combinations of rewards.

A reward scores a batch of decoded images against their prompts::

    reward(images: list[PIL.Image.Image], prompts: list[str], metadata: list[dict]) -> RewardOutput

`RewardOutput.scores[i]` is a float, or ``None`` when the reward could not score sample ``i`` (OCR
engine error, unparsable prompt, server timeout...). ``None`` is never turned into 0: the trainer
excludes that sample from the loss and counts it in the logs. User functions may return a plain
list of scores; `load_reward` wraps them.
"""

from __future__ import annotations

import inspect
import logging
import math
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from blip3o_rl import registry

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
    """Anything callable as ``reward(images, prompts, metadata)`` returning a `RewardOutput`."""

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


def load_reward(spec: str, **kwargs: Any) -> Reward:
    """Build a reward from a registered name, "package.module:attr" or "path/to/file.py:attr".

    A class (or any attribute that is not a plain function) is called with ``kwargs`` and must return
    a reward; a plain function is the reward itself, called with ``kwargs`` on every batch.
    """
    target = registry.resolve("reward", spec)
    registry.check_kwargs("reward", spec, target, kwargs)  # unknown keys fail now, not on the first batch
    if inspect.isfunction(target):
        return FunctionReward(target, **kwargs)
    reward = target(**kwargs)
    if not callable(reward):
        raise TypeError(f"reward {spec!r} built a {type(reward).__name__}, which is not callable")
    return reward


def _as_output(raw: Any, n: int, name: str) -> RewardOutput:
    """Check what a reward returned and normalise it to a `RewardOutput` of length ``n``."""
    out = raw if isinstance(raw, RewardOutput) else RewardOutput(scores=list(raw))
    if len(out.scores) != n:
        raise ValueError(f"reward {name!r} returned {len(out.scores)} scores for a batch of {n} images")
    scores: list[float | None] = []
    for i, s in enumerate(out.scores):
        if s is None:
            scores.append(None)
            continue
        try:
            value = float(s)
        except (TypeError, ValueError):
            raise TypeError(f"reward {name!r} returned {s!r} (a {type(s).__name__}) for sample {i}") from None
        if not math.isfinite(value):
            out.details[i] = {**out.details[i], "error": f"non-finite score {value}"}
            scores.append(None)
        else:
            scores.append(value)
    out.scores = scores
    return out


def score_batch(reward: Reward, name: str, images, prompts, metadata) -> RewardOutput:
    """Call ``reward`` and validate its output; an exception fails (``None``) every sample, loudly.

    A reward that returns the wrong number of scores or a non-number is a bug in the reward, not a
    failed sample: that raises.
    """
    try:
        raw = reward(images, prompts, metadata)
    except Exception as exc:  # a crashing reward fails its samples; training goes on and the log says so
        logger.error("reward %r failed on a batch of %d: %s\n%s", name, len(images), exc, traceback.format_exc())
        return RewardOutput([None] * len(images), [{"error": f"{type(exc).__name__}: {exc}"} for _ in images])
    return _as_output(raw, len(images), name)


@dataclass
class CombinedScores:
    """Per-reward outputs and their weighted sum (``None`` where any reward failed the sample)."""

    total: list[float | None]
    outputs: dict[str, RewardOutput]

    def metrics(self, prefix: str = "reward") -> dict[str, float]:
        """``<prefix>/mean|std`` of the weighted total and ``<prefix>/<name>/mean|std|failed`` per reward."""
        mean, std = _mean_std([s for s in self.total if s is not None])
        out = {f"{prefix}/mean": mean, f"{prefix}/std": std}
        for name, output in self.outputs.items():
            out.update(output.metrics(f"{prefix}/{name}"))
        return out


class WeightedRewards:
    """Several named rewards combined as ``sum(weight * score)``; a sample fails if any reward fails it.

    The trainer calls `submit`, which returns a future: scoring runs in the caller's thread today, and
    can move to threads or a remote server behind the same call.
    """

    def __init__(self, rewards: Sequence[tuple[str, float, Reward]]):
        if not rewards:
            raise ValueError("at least one reward is needed")
        names = [n for n, _, _ in rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"reward names must be unique, got {names}")
        self.rewards = list(rewards)

    @property
    def names(self) -> list[str]:
        return [n for n, _, _ in self.rewards]

    def submit(self, images, prompts, metadata) -> Future[CombinedScores]:
        """Score a batch; the future holds the `CombinedScores` (or the exception of a buggy reward)."""
        future: Future[CombinedScores] = Future()
        try:
            future.set_result(self(images, prompts, metadata))
        except Exception as exc:  # a reward bug (wrong length, non-number): raised by .result()
            future.set_exception(exc)
        return future

    def __call__(self, images, prompts, metadata) -> CombinedScores:
        outputs = {name: score_batch(reward, name, images, prompts, metadata) for name, _, reward in self.rewards}
        total: list[float | None] = []
        for i in range(len(images)):
            parts = [(w, outputs[name].scores[i]) for name, w, _ in self.rewards]
            total.append(None if any(s is None for _, s in parts) else sum(w * s for w, s in parts if s is not None))
        return CombinedScores(total=total, outputs=outputs)
