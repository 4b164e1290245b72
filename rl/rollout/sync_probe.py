"""Every weight push verified: after the engine reloads the weights, a small fixed probe is sampled by the
engine and scored by the trainer; past a bound the run stops.

An engine with its own copy of the weights (vLLM in-process or as a server) is told after every optimizer
step to reload them (`RolloutEngine.update_weights`). A push that silently does not take effect (a stale
server cache, a repacked kernel weight, a LoRA merge that binds no module) leaves the engine sampling from
the old policy while the trainer scores the new one: the importance ratios are then wrong every step and
the reward stays flat. `SyncProbe` checks it right after each push: the engine samples the same
``samples`` of the same prompts with the same seeds, the trainer scores them, and the mean
``|log π_trainer − log π_engine|`` over the probe's tokens is logged as ``rollout/sync_probe_diff``.
The run stops with `EngineDisagreementError`, naming the engine and the difference, when

- the difference exceeds ``rollout.max_sync_probe_diff`` (an engine far from the trainer's weights), or
- the engine's probe is bit-identical to its previous one (same codes, same log-probs) while an applied
  update moved the trainer's log-probs of those codes: the push did not reach the engine. This needs no
  threshold, so it catches a stale engine after a single small update, far below any bound that bf16
  noise allows (a seeded engine draws the same codes from the same weights; an engine whose sampling
  is not reproducible is checked by the bound alone).

With LoRA, the push merges the adapters into the pushed copy: `lora_modules_changed` counts the modules
whose merged weight differs from the base (``rollout/lora_merged_modules``); after an applied update, zero
means the adapter reaches nothing the engine sees, and the run stops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ...policies.base import ImageTokenPolicy, SamplingParams
from ..errors import EngineDisagreementError
from .engines.base import Rollout, RolloutEngine
from .generate import GenerationDriver, RolloutRequest


def pushes_weights(engine: RolloutEngine) -> bool:
    """True when ``engine`` keeps its own copy of the weights (it overrides `RolloutEngine.update_weights`)."""
    inner = getattr(engine, "inner", engine)  # a wrapper (ZeRO-3 gathered rollouts) pushes what it wraps
    return type(inner).update_weights is not RolloutEngine.update_weights


@torch.no_grad()
def lora_modules_changed(model: nn.Module) -> int | None:
    """How many peft LoRA modules a merge changes (an active adapter with a non-zero ``ΔW``), None without LoRA."""
    count, seen = 0, False
    for module in model.modules():
        if not hasattr(module, "lora_A") or not hasattr(module, "get_delta_weight"):
            continue
        seen = True
        if getattr(module, "disable_adapters", False):
            continue
        adapters: Any = module.lora_A  # a ModuleDict of peft's LoRA layer
        delta: Any = module.get_delta_weight
        if any(a in adapters and bool(delta(a).abs().max() > 0) for a in getattr(module, "active_adapters", [])):
            count += 1
    return count if seen else None


class SyncProbe:
    """The post-push check of one run (module docstring)."""

    def __init__(self, engine_name: str, captions: Sequence[str], samples: int, seed: int, max_diff: float | None,
                 gather: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if not captions:
            raise ValueError("the sync probe needs at least one prompt")
        self.engine_name, self.captions, self.samples = engine_name, list(captions), samples
        self.seeds = [seed + 1000 * i for i in range(len(self.captions))]  # spaced by more than the group
        self.max_diff = max_diff
        self.gather = gather or (lambda t: t)
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # codes, engine's, trainer's

    def check(self, step: int, policy: ImageTokenPolicy, engine: RolloutEngine, params: SamplingParams,
              score: Callable[[Rollout], torch.Tensor], updated: bool = True) -> dict[str, float]:
        """Sample the probe with ``engine`` and score it with ``score(rollout) -> [B, N]`` (the trainer's
        no-grad forward); every rank calls it. ``updated``: the step's optimizer update was applied."""
        out: dict[str, float] = {}
        merged = lora_modules_changed(policy.model)
        if merged is not None:
            out["rollout/lora_merged_modules"] = float(merged)
            if merged == 0 and updated:
                raise EngineDisagreementError(
                    f"step {step}: the LoRA merge pushed to rollout engine {self.engine_name!r} changed no "
                    "module after an applied update: the adapter reaches no weight the engine loads "
                    "(check model.lora_target_modules against the model's module names)")
        ro = GenerationDriver(policy, engine).rollout(
            RolloutRequest(self.captions, self.samples, params, self.seeds, return_hidden=False)).rollout
        trainer = score(ro)
        engine_lp = ro.sampler_logprobs.float().to(trainer.device)
        d = (trainer.float() - engine_lp).abs().mean()
        stale = torch.zeros(1, device=trainer.device)
        if self._last is not None and updated:
            codes, last_engine, last_trainer = self._last
            if torch.equal(codes, ro.codes) and torch.equal(last_engine, engine_lp):
                stale = (trainer.float() - last_trainer).abs().max().reshape(1)  # > 0: the trainer moved
        self._last = (ro.codes.clone(), engine_lp.clone(), trainer.float().clone())
        diff, moved = (float(x.max()) for x in self.gather(torch.stack([d.reshape(1), stale], 1)).unbind(1))
        out["rollout/sync_probe_diff"] = diff
        if moved > 0:
            raise EngineDisagreementError(
                f"step {step}: the weight push to rollout engine {self.engine_name!r} did not take effect: on a "
                f"fixed probe its codes and log-probs are exactly those before the update, while the trainer's "
                f"log-probs of them moved by up to {moved:.4g} (engine vs trainer: {diff:.4g} per token); the "
                "engine would sample from weights the trainer no longer has")
        if self.max_diff is not None and not diff <= self.max_diff:
            raise EngineDisagreementError(
                f"step {step}: the weight push to rollout engine {self.engine_name!r} did not take effect: on "
                f"a fixed probe ({len(self.captions)} prompt(s) x {self.samples} samples) its log-probs differ "
                f"from the trainer's by {diff:.4g} per token on average > rollout.max_sync_probe_diff "
                f"{self.max_diff:g}; the engine would sample from weights the trainer no longer has")
        return out
