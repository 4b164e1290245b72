"""A run's lifecycle around the recipe's steps: its folder, resume, checkpoints, stops, logs and summary.

`GRPOTrainer` (rl/trainer.py) holds one `RunLifecycle` and calls it at fixed points::

    claim(resume, overwrite)             # lock output_dir (rl/run/run_dir.py); every rank learns rank 0's verdict
    check_resume(resume, allowed, ...)   # the checkpoint verified, the config diffed (rl/run/resume.py)
    ...                                  # the model, optimizer, engine are built; optimizer state restored
    resumed(path, step)                  # config changes recorded, a rollback's later files archived
    open(start_step, save)               # config.yaml, the metrics log, the best-checkpoint watcher
    with steps(start_step) as loop:      # SIGINT / SIGTERM caught, progress shown
        for step in loop:
            ...                          # the recipe's step: record_rewards(step, scores), log_samples(...)
            loop.end_step(step, metrics) # watchers, log, a due checkpoint, the agreed stops
    summarise()                          # reward curve, summary.json -> `RunSummary` (rank 0)
    close(); release()                   # logs closed; the run folder unlocked last

Everything collective is run on every rank through a `Collectives` (the strategy's helper), so a stop one
rank decides (a signal, its rewards failing, rank 0's failed checkpoint write) is every rank's stop.
The guards (rl/run/guards/) are the lifecycle's: `reward_failures` (fed each step's scores by the recipe)
and `over_optimisation`; the finite-update guard belongs to the update.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
import yaml
from PIL import Image

from ...rewards import CombinedScores
from ..config import TrainConfig, config_to_dict
from ..errors import CheckpointError, NothingLearnedError, ResumeError, RunError, TrainingStopped
from .best_checkpoint import BestCheckpoint
from .checkpoint import (
    latest_checkpoint,
    previous_intact,
    resolve_checkpoint,
    save_checkpoint,
    staging_dir,
    verify_checkpoint,
)
from .guards.over_optimisation import OverOptimisationGuard
from .guards.reward_failures import RewardFailureGuard
from .progress import Progress, quiet_library_bars, show_bars
from .resume import check_resume_config, record_changes, with_defaults
from .run_dir import RunLock, archive_after, claim_run_dir
from .signals import StopSignals
from .tracking import METRICS_FILE, RunLogger, image_grid, plot_reward_curve, read_metrics

logger = logging.getLogger(__name__)


class Collectives(Protocol):
    """The few collectives the lifecycle needs (every rank calls each; one rank: no communication)."""

    def barrier(self, what: str) -> None: ...
    def broadcast_object(self, obj: Any) -> Any: ...
    def any_rank(self, flag: bool) -> bool: ...
    def all_gather_objects(self, obj: Any) -> list[Any]: ...


class CheckpointContents(NamedTuple):
    """What the recipe hands a checkpoint once every rank staged its own files (weights and optimizer
    gathered on rank 0, None on the others)."""

    weights: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any] | None
    scheduler: dict[str, Any]
    state: dict[str, Any]  # trainer_state.json: step, data position, world size, strategy, RNG


@dataclass(frozen=True)
class RunSummary:
    """What a finished run reports (``summary.json`` is `as_dict`)."""

    reward_first_fifth: float  # mean training reward over the first fifth of the steps
    reward_last_fifth: float
    # eval/<reward>/mean -> (at the first evaluation, at the last one): with two evaluations or more
    evals: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    stopped_by_guard_at_step: int | None = None  # the over-optimisation guard stopped the run there
    best_checkpoint_step: int | None = None

    def as_dict(self) -> dict[str, float]:
        out = {"reward_first_fifth": self.reward_first_fifth, "reward_last_fifth": self.reward_last_fifth}
        for k, (before, after) in self.evals.items():
            out[f"{k}_before"], out[f"{k}_after"] = before, after
        if self.stopped_by_guard_at_step is not None:
            out["stopped_by_guard_at_step"] = float(self.stopped_by_guard_at_step)
        if self.best_checkpoint_step is not None:
            out["best_checkpoint_step"] = float(self.best_checkpoint_step)
        return out


class RunLifecycle:
    """The lifecycle of the run ``cfg`` describes, on one rank (``is_main``: rank 0) of ``comm``."""

    def __init__(self, cfg: TrainConfig, comm: Collectives, is_main: bool):
        self.cfg, self.comm, self.is_main = cfg, comm, is_main
        self.out = Path(cfg.output_dir)
        self.show_bars = show_bars(cfg.logging.progress_bar)
        self.config_changes: dict[str, tuple[Any, Any]] = {}  # key -> (saved, new) of an allowed resume change
        self.allowed_changes: tuple[str, ...] = ()
        self.lock: RunLock | None = None  # rank 0's
        self.log: RunLogger | None = None  # rank 0's
        self.reward_failures = RewardFailureGuard(cfg.grpo.max_failed_reward_steps)  # rl/run/guards/reward_failures.py
        self.over_optimisation = OverOptimisationGuard(cfg.eval.guard)  # rl/run/guards/over_optimisation.py
        self._save: Callable[[int], Path | None] | None = None

    # ------------------------------------------------------------------ the run folder and resume
    def claim(self, resume: str | bool | None, overwrite: bool) -> None:
        """Rank 0 locks the run folder (rl/run_dir.py); the others learn its verdict."""
        error: BaseException | None = None
        if self.is_main:
            try:
                self.lock, archived = claim_run_dir(self.out, resume=bool(resume), overwrite=overwrite)
                if archived is not None:
                    print(f"--overwrite: moved the previous contents of {self.out} to {archived}", flush=True)
            except RunError as exc:
                error = exc
        shared = self.comm.broadcast_object(None if error is None else (type(error), str(error)))
        if error is not None:
            raise error
        if shared is not None:
            raise shared[0](shared[1])
        if not self.show_bars:
            quiet_library_bars()  # transformers' "Loading weights" / "Writing model shards" bars

    def check_resume(self, resume: str | bool, allowed: Sequence[str],
                     check_world_size: Callable[[Path, Any], None]) -> Path:
        """Before any model loads: the checkpoint to resume (verified), and the config compared with its own.

        ``check_world_size(path, saved_world_size)`` refuses a checkpoint the launch cannot load.
        """
        root = self.out / "checkpoints"
        path = latest_checkpoint(root) if resume is True else resolve_checkpoint(root, str(resume))
        if path is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {root}")
        try:
            if not verify_checkpoint(path):  # every file against its sha256 (rl/checkpoint.py)
                logger.warning("checkpoint %s predates checksums (no manifest.json): resuming unverified", path)
        except CheckpointError as exc:
            prev = previous_intact(root, path)
            hint = (f"; to resume from the previous intact checkpoint, pass --resume {prev}" if prev
                    else "; no earlier intact checkpoint exists")
            raise CheckpointError(f"{exc}{hint}") from None
        state_json = path / "trainer_state.json"
        saved_state = json.loads(state_json.read_text()) if state_json.is_file() else {}
        step = int(saved_state["step"]) if "step" in saved_state else None
        check_world_size(path, saved_state.get("world_size"))
        max_steps = self.cfg.max_steps
        if step is not None and step >= max_steps:
            raise ResumeError(f"--resume: checkpoint {path} is at step {step} and max_steps is {max_steps}: "
                              f"nothing to train; raise max_steps (e.g. max_steps={2 * step}) to continue the run")
        saved_file = path / "config.yaml" if (path / "config.yaml").is_file() else self.out / "config.yaml"
        if saved_file.is_file():
            new = yaml.safe_load(self._config_text())
            saved = with_defaults(config_to_dict(TrainConfig()), yaml.safe_load(saved_file.read_text()))
            self.config_changes = check_resume_config(saved, new, allowed, str(saved_file))
            self.allowed_changes = tuple(allowed)
        return path

    @property
    def optimizer_config_changed(self) -> bool:
        """An allowed resume change that the optimizer and its schedule must take on."""
        return any(k.startswith("optim.") or k == "max_steps" for k in self.config_changes)

    def resumed(self, path: Path, step: int) -> None:
        """The run goes on from checkpoint ``path`` at ``step``: changes recorded, a rollback's later
        checkpoints and metrics archived (rank 0)."""
        if self.is_main:
            record_changes(self.out, step, self.config_changes, self.allowed_changes)
            archived = archive_after(self.out, step, METRICS_FILE)  # a rollback keeps the newer ones
            if archived is not None:
                print(f"--resume {path.name}: moved the later checkpoints and metrics to {archived}", flush=True)
        logger.info("resumed from %s at step %d", path, step)

    def open(self, start_step: int, save: Callable[[int], Path | None]) -> None:
        """Ready to train from ``start_step``: ``save(step)`` writes a checkpoint (collective)."""
        self._save = save
        self.best = BestCheckpoint(self.out / "checkpoints", self.cfg.checkpoint.best_metric,
                                   self.cfg.checkpoint.best_mode)
        if self.is_main:
            (self.out / "config.yaml").write_text(self._config_text())
            self.log = RunLogger(self.out, self.cfg.logging, config_to_dict(self.cfg), start_step)

    def _config_text(self) -> str:
        return yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int, stage: Callable[[Path], CheckpointContents]) -> Path | None:
        """Every rank stages its own files into the staging folder (``stage``, which also returns rank 0's
        gathered state), then rank 0 seals the folder (manifest, atomic rename, ``latest``; rl/checkpoint.py)
        and every rank learns whether it could. Collective; the path on rank 0, None elsewhere."""
        root = self.out / "checkpoints"
        staging = staging_dir(root, step)
        if self.is_main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        self.comm.barrier("checkpoint staging")
        contents = stage(staging)
        self.comm.barrier("checkpoint files")
        result: Path | BaseException | None = None
        if self.is_main:
            assert contents.weights is not None and contents.optimizer is not None
            try:
                result = save_checkpoint(root, step, contents.weights, contents.optimizer, contents.scheduler,
                                         contents.state, self.cfg.checkpoint.keep_last, staged=True,
                                         config_text=self._config_text())
            except CheckpointError as exc:
                result = exc
        shared = self.comm.broadcast_object(str(result) if isinstance(result, BaseException) else None)
        if isinstance(result, BaseException):
            raise result
        if shared is not None:
            raise CheckpointError(f"rank 0 could not save the checkpoint: {shared}")
        return result

    # ------------------------------------------------------------------ the steps
    def steps(self, start_step: int) -> StepLoop:
        """The loop over steps ``start_step + 1 .. max_steps`` (a context manager: signals, progress)."""
        return StepLoop(self, start_step)

    def save(self, step: int) -> Path | None:
        """The recipe's checkpoint of ``step`` (the ``save`` given to `open`; collective)."""
        assert self._save is not None, "open() first"
        return self._save(step)

    def eval_due(self, step: int) -> bool:
        every = self.cfg.eval.eval_every
        return bool(every) and (step % every == 0 or step == self.cfg.max_steps)

    def watch(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """The eval watchers: the over-optimisation guard, then the best checkpoint (collective: it may save)."""
        out = self.over_optimisation.observe(step, metrics)
        out.update(self.best.observe(step, metrics, self.save))
        return out

    def record_initial_eval(self, metrics: dict[str, float]) -> None:
        """The evaluation before training (step 0): watched and logged."""
        watched = self.watch(0, metrics)  # every rank: the metrics agree, a best checkpoint is collective
        if self.log is not None:
            self.log.log(0, {**metrics, **watched})

    def record_rewards(self, step: int, scored: CombinedScores) -> None:
        """A step's scores on this rank (``[B]``, None: failed): failures reported, and counted by the
        reward-failure guard."""
        for name, out in scored.outputs.items():
            if out.num_failed:  # excluded from the loss, counted in the metrics, and said here
                first_error = next(d for s, d in zip(out.scores, out.details, strict=True) if s is None)
                logger.warning("step %d: reward %r failed on %d of %d samples (first: %s)", step, name,
                               out.num_failed, len(out.scores), first_error.get("error", first_error))
        self.reward_failures.record(scored)

    def check_rewards(self, step: int, last: bool) -> None:
        """The reward-failure guard's verdict, agreed over the ranks: when one rank's rewards failed too often
        every rank stops, with that rank's message (alone, it would leave the others waiting in the next
        collective until the timeout)."""
        error: NothingLearnedError | None = None
        try:
            self.reward_failures.check(step, last)
        except NothingLearnedError as exc:
            error = exc
        if self.comm.any_rank(error is not None):
            messages = self.comm.all_gather_objects(None if error is None else str(error))
            if error is not None:
                raise error
            rank, text = next((r, m) for r, m in enumerate(messages) if m is not None)
            raise NothingLearnedError(f"rank {rank}: {text}")

    def log_samples(self, step: int, images: Sequence[Image.Image], texts: Sequence[str], rewards: torch.Tensor,
                    scored: CombinedScores, group: int) -> None:
        """Rank 0's samples every ``logging.image_every`` steps: a grid row per prompt (its ``group`` samples
        here: G, or rank 0's slice of a split group) and ``samples/step_N.jsonl`` with every reward."""
        every = self.cfg.logging.image_every
        if self.log is None or not every or step % every:
            return
        rows = max(1, min(self.cfg.logging.num_images // group, len(images) // group))
        shown = images[: rows * group]
        # each image's reward under it ("excluded": a reward failed on it)
        captions = ["excluded" if math.isnan(r) else f"{r:.3f}" for r in map(float, rewards[: len(shown)])]
        self.log.log_images(step, image_grid(list(shown), group, [texts[r * group] for r in range(rows)], captions))
        with (self.out / "samples" / f"step_{step:06d}.jsonl").open("w") as f:
            for i in range(len(shown)):
                row = {"prompt": texts[i], "reward": None if math.isnan(rewards[i]) else float(rewards[i]),
                       "rewards": {n: {"score": o.scores[i], **o.details[i]} for n, o in scored.outputs.items()}}
                f.write(json.dumps(row, default=str) + "\n")

    # ------------------------------------------------------------------ the end
    def summarise(self) -> RunSummary | None:
        """Rank 0: the reward curve, ``summary.json`` and the `RunSummary`; None on the other ranks."""
        if self.log is None:
            return None
        metrics = read_metrics(self.log.metrics_path)
        plot_reward_curve(metrics, self.out / "reward_curve.png")
        train = [m["reward/mean"] for m in metrics if m["step"] > 0 and "reward/mean" in m]
        fifth = max(1, len(train) // 5)
        evals = [m for m in metrics if any(k.startswith("eval/") for k in m)]
        changes = {}
        if len(evals) >= 2:
            changes = {k: (v, evals[-1].get(k, math.nan)) for k, v in evals[0].items()
                       if k.startswith("eval/") and k.endswith("/mean")}
        summary = RunSummary(
            sum(train[:fifth]) / fifth, sum(train[-fifth:]) / fifth, changes,
            stopped_by_guard_at_step=int(metrics[-1]["step"]) if self.over_optimisation.stop_reason is not None else None,
            best_checkpoint_step=self.best.best_step)
        (self.out / "summary.json").write_text(json.dumps(summary.as_dict(), indent=2))
        return summary

    def close(self) -> None:
        """Close the logs and release the run folder; safe after a set-up that failed part-way."""
        if self.log is not None:
            self.log.close()

    def release(self) -> None:
        """Unlock the run folder (rank 0), last of all."""
        if self.lock is not None:
            self.lock.release()


class StepLoop:
    """``for step in loop`` over a run's remaining steps; ``end_step`` after each. Inside ``with``: the first
    SIGINT / SIGTERM ends the run after the current step with a checkpoint (`TrainingStopped`)."""

    def __init__(self, run: RunLifecycle, start_step: int):
        self.run, self.start_step = run, start_step
        self._signals = StopSignals()  # rl/signals.py
        self._progress: Progress | None = None
        self._finished = False

    def __enter__(self) -> StepLoop:
        self._signals.__enter__()
        self._progress = Progress(self.start_step, self.run.cfg.max_steps, bar=self.run.show_bars,
                                  enabled=self.run.is_main)  # rl/progress.py
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._progress is not None:
                self._progress.close()
        finally:
            self._signals.__exit__(*exc)

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start_step + 1, self.run.cfg.max_steps + 1):
            yield step
            if self._finished:
                return

    def end_step(self, step: int, metrics: dict[str, float]) -> None:
        """After ``step`` (collective): the watchers, the log, a due checkpoint, then the stops: rewards that
        failed too often (raises), the over-optimisation guard (ends the loop), a signal (raises)."""
        run, cfg = self.run, self.run.cfg
        assert self._progress is not None, "use the loop inside `with`"
        metrics.update(run.watch(step, metrics))  # over-optimisation guard, best checkpoint
        guard_stop = run.over_optimisation.stop_reason is not None
        logged = step % cfg.logging.log_every == 0 or step == cfg.max_steps or guard_stop
        if run.log is not None and logged:
            run.log.log(step, metrics)
        self._progress.update(step, metrics, logged)
        saved = None
        c = cfg.checkpoint
        due = (c.save_every and step % c.save_every == 0) or guard_stop or (step == cfg.max_steps and c.save_final)
        if due and run.best.saved_step != step:
            saved = run.save(step)
        run.check_rewards(step, last=step == cfg.max_steps)
        if guard_stop:
            logger.warning("stopping at step %d: %s", step, run.over_optimisation.stop_reason)
            self._finished = True
            return
        received = self._signals.received
        if run.comm.any_rank(received is not None) and step < cfg.max_steps:
            path = saved or run.save(step)
            raise TrainingStopped(self._signals.name or "SIGTERM", received or 15, step, path)
