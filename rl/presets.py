"""Values a recipe takes from the checkpoint, the policy or the data at setup.

- `rollout_sampling`: ``rollout.sampling_from: config`` uses the recipe's temperature / top-k / top-p;
  ``checkpoint`` mirrors the official BLIP3o-NEXT rollout, ``generate(do_sample=True, temperature=T)``
  with no top-k/top-p: the policy's ``checkpoint_sampling`` (its ``generation_config.json``, else
  transformers' top-k 50) with the recipe's temperature.
- `eval_sampling`: ``eval.sampling: rollout`` samples held-out prompts like training; ``inference``
  uses the policy's ``inference_sampling`` (BLIP3o-NEXT: top-k 1200, top-p 0.95), as published numbers.
- `lr_schedule_steps`: the LR horizon in GRPO steps: ``optim.schedule_steps``, or
  ``optim.schedule_epochs`` passes over the training prompts counted as TRL's ``Trainer`` does
  (``floor(prompts / prompts per step)`` steps per epoch), or ``max_steps``.
"""

from __future__ import annotations

import math

from .config import EvalConfig, OptimConfig, RolloutConfig
from .rollout.engines import SamplingParams


def _policy_values(policy, attr: str, key: str, value: str):
    values = getattr(policy, attr, None)
    if values is None:
        raise ValueError(f"{key}: {value} needs a policy that exposes `{attr}`; {type(policy).__name__} does not "
                         f"(set the values in the recipe instead)")
    return values


def rollout_sampling(r: RolloutConfig, policy) -> tuple[SamplingParams, str]:
    """The rollout's sampling parameters, and a sentence saying where they came from."""
    if r.sampling_from == "config":
        return SamplingParams(r.temperature, r.top_k, r.top_p), "the recipe (rollout.temperature/top_k/top_p)"
    ck = _policy_values(policy, "checkpoint_sampling", "rollout.sampling_from", "checkpoint")
    # The official rollout passes temperature explicitly, so the recipe's temperature wins over the file's.
    return SamplingParams(r.temperature, ck.top_k, ck.top_p), f"the checkpoint: {ck.source}"


def eval_sampling(e: EvalConfig, policy, rollout: SamplingParams) -> tuple[SamplingParams, str]:
    """The held-out evaluation's sampling parameters, and where they came from."""
    if e.sampling == "rollout":
        return rollout, "the rollout's"
    inf = _policy_values(policy, "inference_sampling", "eval.sampling", "inference")
    return inf, f"inference: {type(policy).__name__}.inference_sampling"


def describe(params: SamplingParams) -> str:
    return f"temperature {params.temperature:g}, top_k {params.top_k or 'off'}, top_p {params.top_p:g}"


def lr_schedule_steps(o: OptimConfig, max_steps: int, num_train_prompts: int, prompts_per_step: int) -> int:
    """The LR schedule's horizon in GRPO steps (multiply by ``num_iterations`` for optimizer steps).

    ``prompts_per_step``: prompt groups per step over all ranks. With ``schedule_epochs`` it is TRL's
    count: ``ceil(epochs * floor(num_train_prompts / prompts_per_step))`` (at least 1).
    """
    if o.schedule_steps is not None:
        return o.schedule_steps
    if o.schedule_epochs is not None:
        per_epoch = num_train_prompts // max(prompts_per_step, 1)
        if per_epoch < 1:
            raise ValueError(f"optim.schedule_epochs: {num_train_prompts} training prompts are fewer than the "
                             f"{prompts_per_step} prompts of one step")
        return max(1, math.ceil(o.schedule_epochs * per_epoch))
    return max_steps
