"""The device contract of `ImageTokenPolicy`: what a policy returns is on the device of its model.

A CPU-only machine cannot put a model on a GPU, but it can put one on the ``meta`` device: a policy
that returned CPU tensors for a model elsewhere (BLIP3o-NEXT's prompt batches did, before the
contract) fails here exactly as it would hand CPU tensors to a CUDA model.
"""

import pytest
import torch

from blip3o_rl.policies.blip3o_next import Blip3oNextPolicy
from blip3o_rl.tiny import TinyWorldPolicy


@pytest.fixture(params=["tiny", "blip3o_next"])
def policy(request, tiny_world_dir, tiny_blip3o_next):
    if request.param == "tiny":
        return TinyWorldPolicy.from_pretrained(tiny_world_dir)
    return Blip3oNextPolicy.from_pretrained(tiny_blip3o_next, dtype=torch.float32)


def test_prompt_batches_follow_the_model(policy):
    assert policy.prompt_batch(["a red cube"]).input_ids.device.type == "cpu"
    policy.lm.to("meta")
    assert policy.device.type == "meta"
    batch = policy.prompt_batch(["a red cube", "a photo of two cats"])
    assert batch.input_ids.device.type == "meta" and batch.attention_mask.device.type == "meta"


def test_lm_holds_the_causal_lm_and_every_trainable_weight(policy):
    assert policy.lm.causal_lm is policy.model
    assert {id(p) for p in policy.model.parameters()} == {id(p) for p in policy.lm.parameters()}
    assert not {id(p) for p in policy.frozen_parameters()} & {id(p) for p in policy.lm.parameters()}
