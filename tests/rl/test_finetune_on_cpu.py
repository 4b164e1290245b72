"""LoRA trains only the adapter, and its reference policy is exactly the base model."""

import pytest
import torch

from blip3o_rl.rl.config import ModelConfig
from blip3o_rl.rl.grpo.logprobs import sequence_logprobs
from blip3o_rl.rl.grpo.loss import policy_loss
from blip3o_rl.rl.weights.finetune import FinetuneSetup
from blip3o_rl.tiny import TinyWorldPolicy


def _one_step(policy, setup):
    prompts = policy.prompt_batch(["a red top and a blue bottom", "green"]).repeat_interleave(2)
    codes = torch.randint(0, policy.layout.num_codes, (4, policy.layout.tokens_per_image),
                          generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(setup.trainable_parameters(), lr=1e-2)
    fwd = sequence_logprobs(policy.lm, prompts, codes, 1.0)
    loss, _ = policy_loss(fwd.logprobs, fwd.logprobs.detach(), torch.tensor([1.0, -1.0, 0.5, -0.5]),
                          torch.ones(4, dtype=torch.bool))
    loss.backward()
    opt.step()
    return prompts, codes


def test_lora_changes_only_adapter_weights_and_reference_is_the_base_model(tiny_world_dir):
    policy = TinyWorldPolicy.from_pretrained(tiny_world_dir)
    base = TinyWorldPolicy.from_pretrained(tiny_world_dir)
    setup = FinetuneSetup(policy, ModelConfig(finetune="lora", lora_r=4), need_reference=True)
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    prompts, codes = _one_step(policy, setup)
    for _ in range(2):  # B is zero at init: a second step moves the adapter's output too
        _one_step(policy, setup)

    changed = {n for n, p in policy.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert all(p.requires_grad == ("lora_" in n) for n, p in policy.model.named_parameters())

    with torch.no_grad():
        trained = sequence_logprobs(policy.lm, prompts, codes, 1.0).logprobs
        reference_of_base = sequence_logprobs(base.lm, prompts, codes, 1.0).logprobs
        with setup.reference() as ref:
            reference = sequence_logprobs(ref, prompts, codes, 1.0).logprobs
    torch.testing.assert_close(reference, reference_of_base, atol=1e-6, rtol=0)
    assert not torch.allclose(trained, reference, atol=1e-4)


def test_full_finetuning_keeps_a_frozen_reference_copy(tiny_world_dir):
    policy = TinyWorldPolicy.from_pretrained(tiny_world_dir)
    base = TinyWorldPolicy.from_pretrained(tiny_world_dir)
    setup = FinetuneSetup(policy, ModelConfig(finetune="full"), need_reference=True)
    assert len(setup.trainable_parameters()) == len(list(policy.model.parameters()))
    prompts, codes = _one_step(policy, setup)
    with torch.no_grad(), setup.reference() as ref:
        assert ref is not policy.lm and ref.causal_lm is not policy.model
        torch.testing.assert_close(sequence_logprobs(ref, prompts, codes, 1.0).logprobs,
                                   sequence_logprobs(base.lm, prompts, codes, 1.0).logprobs)
    # state dict round trip restores the trained weights exactly
    state = {k: v.clone() for k, v in setup.trainable_state_dict().items()}
    fresh = TinyWorldPolicy.from_pretrained(tiny_world_dir)
    FinetuneSetup(fresh, ModelConfig(finetune="full"), need_reference=False).load_trainable_state_dict(state)
    for (n, p), (_, q) in zip(policy.model.named_parameters(), fresh.model.named_parameters(), strict=True):
        assert torch.equal(p, q), n


def test_full_finetuning_without_beta_has_no_reference(tiny_world_dir):
    setup = FinetuneSetup(TinyWorldPolicy.from_pretrained(tiny_world_dir), ModelConfig(finetune="full"), False)
    with pytest.raises(RuntimeError, match="no reference"), setup.reference():
        pass
