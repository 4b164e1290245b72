"""``--resume`` continues the *same* run: the saved config is compared with the new one.

A change that alters the trajectory (batch size, seed, learning rate, data, rewards, model, ...) is
an error listing the keys, unless each is named in ``--allow-config-change KEY...`` (a key, or a
section such as ``optim``); then the new value really applies, the optimizer's learning rate and
hyperparameters included (`apply_optimizer_config`), and the change is recorded in
``<output_dir>/config_changes.jsonl``. Keys that only change what is observed or how far the run goes
(`HARMLESS`) may change freely; ``max_steps`` too, unless it is the LR schedule's horizon.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ResumeError

# Changing these never changes the weights a step produces.
HARMLESS = ("output_dir", "max_steps", "num_threads", "logging", "checkpoint", "eval")
# Schedules whose value does not depend on the horizon (optim.schedule_steps, else max_steps).
HORIZON_FREE = ("constant", "constant_with_warmup")
CHANGES_FILE = "config_changes.jsonl"


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of nested mappings (and of lists of mappings, by index); other values as they are."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    if isinstance(data, list) and any(isinstance(v, dict) for v in data):
        out = {f"{prefix}length": len(data)}
        for i, v in enumerate(data):
            out.update(flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: data}


def _matches(key: str, names: Iterable[str]) -> bool:
    return any(key == n or key.startswith(n + ".") for n in names)


def _horizon(cfg: dict) -> Any:
    o = cfg.get("optim", {})
    if o.get("lr_scheduler_type") in HORIZON_FREE:
        return None
    if o.get("schedule_epochs") is not None:
        return ("epochs", o["schedule_epochs"])
    return o.get("schedule_steps") or cfg.get("max_steps")


def with_defaults(defaults: Any, saved: Any) -> Any:
    """``saved`` with keys it lacks (added to the config since it was written) taken from ``defaults``."""
    if isinstance(defaults, dict) and isinstance(saved, dict):
        return {**defaults, **{k: with_defaults(defaults.get(k), v) for k, v in saved.items()}}
    return saved


def config_changes(saved: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (saved value, new value)}`` for every key that differs."""
    a, b = flatten(saved), flatten(new)
    missing = object()
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)}


def check_resume_config(saved: dict, new: dict, allowed: Sequence[str], source: str) -> dict[str, tuple[Any, Any]]:
    """All changes between ``saved`` and ``new``; raises `ResumeError` for those that alter the trajectory
    and are not ``allowed``. ``source`` names the saved config in messages."""
    keys = set(flatten(new)) | set(flatten(saved))
    unknown = [n for n in allowed if not any(k == n or k.startswith(n + ".") for k in keys)]
    if unknown:
        raise ResumeError(f"--allow-config-change: {', '.join(unknown)} is not a config key")
    changes = config_changes(saved, new)
    refused = {k: v for k, v in changes.items()
               if not _matches(k, HARMLESS) and k != "optim.schedule_steps" and not _matches(k, allowed)}
    h_old, h_new = _horizon(saved), _horizon(new)
    if h_old != h_new and h_old is not None and h_new is not None and not _matches("max_steps", allowed) \
            and not _matches("optim.schedule_steps", allowed):
        key = "optim.schedule_steps" if "optim.schedule_steps" in changes else "max_steps"
        refused[f"{key} (the LR schedule's horizon; keep it with optim.schedule_steps={h_old})"] = changes[key]
    if refused:
        lines = "\n".join(f"  {k}: {old!r} -> {new_!r}" for k, (old, new_) in refused.items())
        names = " ".join(k.split(" ")[0] for k in refused)
        raise ResumeError(
            f"--resume: the config differs from the run's ({source}) in keys that change training:\n{lines}\n"
            f"resume with the saved values, start a new run, or accept the change explicitly with "
            f"--allow-config-change {names}")
    return changes


def record_changes(folder: Path, step: int, changes: dict[str, tuple[Any, Any]], allowed: Sequence[str]) -> None:
    """Append the changes applied at a resume to ``<folder>/config_changes.jsonl``."""
    if not changes:
        return
    row = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "resumed_at_step": step, "allowed": list(allowed),
           "changes": {k: {"from": old, "to": new} for k, (old, new) in changes.items()}}
    with (folder / CHANGES_FILE).open("a") as f:
        f.write(json.dumps(row, default=str) + "\n")


def optimizer_hyperparameters(optimizer: Any) -> list[dict[str, Any]]:
    """Each param group's settings except its parameters (call on the freshly built optimizer)."""
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


def apply_optimizer_config(optimizer: Any, scheduler: Any, fresh: list[dict[str, Any]], recompute: bool = False) -> None:
    """After loading a checkpoint's optimizer and scheduler states: the configured hyperparameters win.

    ``optimizer.load_state_dict`` restores the *saved* ``lr``, ``weight_decay``, ``betas``, ...; with an
    unchanged config they equal ``fresh`` and nothing moves. A changed learning rate rescales the
    schedule: ``base_lrs`` become the new rate and the current rate keeps its position in the schedule.
    ``recompute`` (a changed schedule type or horizon): a `LambdaLR` schedule's current rate is
    recomputed from its new function.
    """
    base_lrs = list(getattr(scheduler, "base_lrs", []))
    for i, (group, new) in enumerate(zip(optimizer.param_groups, fresh, strict=True)):
        for k, v in new.items():
            if k not in ("lr", "initial_lr"):
                group[k] = v
        new_lr = new.get("initial_lr", new.get("lr"))
        old_lr = base_lrs[i] if i < len(base_lrs) else group.get("initial_lr")
        if new_lr is None or old_lr is None or new_lr == old_lr:
            continue
        group["lr"] = group["lr"] * (new_lr / old_lr) if old_lr else new_lr
        group["initial_lr"] = new_lr
        if i < len(base_lrs):
            scheduler.base_lrs[i] = new_lr
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if recompute and lambdas is not None:  # a changed schedule or horizon: the rate it gives at this step
        for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, lambdas, strict=True):
            group["lr"] = base * fn(scheduler.last_epoch)
    if hasattr(scheduler, "_last_lr"):
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
