"""A rollout engine with its own copy of the weights, as vLLM has, pushed after every optimizer step; its
pushes can be made to fail silently (``fail_from``: from that push on, nothing is copied and nothing is
said), the failure the sync probe must catch. Used by test_engine_agreement_on_cpu.py."""

import copy

import torch

from blip3o_rl.rl.rollout.engines import KVCacheEngine


class CopyEngine(KVCacheEngine):
    def __init__(self, fail_from: int | None = None):
        self.fail_from, self.pushes = fail_from, 0

    def setup(self, policy) -> None:
        self.policy = copy.deepcopy(policy)  # the engine samples from its own copy

    @torch.no_grad()
    def update_weights(self, policy) -> None:
        self.pushes += 1
        if self.fail_from is not None and self.pushes >= self.fail_from:
            return  # the silent failure: the copy keeps the old weights
        self.policy.lm.load_state_dict(policy.lm.state_dict())
