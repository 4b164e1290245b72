"""The run's optimizer and LR schedule, resolved by name (``optim.optimizer``, ``optim.lr_scheduler_type``).

Optimizers are registry kind ``optimizer`` (adamw, adam, sgd, or "package.module:Class"), built as
``cls(params, lr=..., weight_decay=..., [betas=..., eps=...], **optim.optimizer_kwargs)``; the
``adam_*`` keys go to optimizers that take ``betas`` and ``eps``. LR schedules are kind
``lr_scheduler`` (constant, constant_with_warmup, linear, cosine, ... from transformers, or
"package.module:function"), called as ``fn(optimizer, num_warmup_steps=..., num_training_steps=...)``
with the arguments the function takes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch

from ... import registry
from ..config import ConfigError, OptimConfig

_ADAM_KEYS = ("adam_beta1", "adam_beta2", "adam_epsilon")


def build_optimizer(params: Iterable[torch.nn.Parameter], o: OptimConfig) -> torch.optim.Optimizer:
    cls = registry.resolve("optimizer", o.optimizer)
    accepted = registry.parameters(cls)
    kwargs: dict[str, Any] = {"lr": o.learning_rate, "weight_decay": o.weight_decay}
    if accepted is None or {"betas", "eps"} <= accepted:
        kwargs.update(betas=(o.adam_beta1, o.adam_beta2), eps=o.adam_epsilon)
    else:
        defaults = {f.name: f.default for f in dataclasses.fields(OptimConfig)}
        changed = [k for k in _ADAM_KEYS if getattr(o, k) != defaults[k]]
        if changed:
            raise ConfigError(f"optim.{changed[0]}: optimizer {o.optimizer!r} takes no betas/eps")
    kwargs.update(o.optimizer_kwargs)
    registry.check_kwargs("optimizer", o.optimizer, cls, kwargs)
    return cls(params, **kwargs)


def build_scheduler(
    optimizer: torch.optim.Optimizer, o: OptimConfig, num_training_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    fn = registry.resolve("lr_scheduler", o.lr_scheduler_type)
    kwargs = {"num_warmup_steps": o.warmup_steps, "num_training_steps": num_training_steps}
    accepted = registry.parameters(fn)
    if accepted is not None:
        if o.warmup_steps and "num_warmup_steps" not in accepted:
            raise ConfigError(
                f"optim.warmup_steps: lr_scheduler_type {o.lr_scheduler_type!r} has no warmup "
                "(use constant_with_warmup, linear or cosine)"
            )
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return fn(optimizer, **kwargs)
