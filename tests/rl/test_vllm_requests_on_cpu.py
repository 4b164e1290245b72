"""The vLLM engines' request arithmetic without vLLM: a group's slice ``[start, stop)`` is one request with
``n = stop - start`` and seed ``s + start`` (vLLM seeds sample i of a request seeded s with s + i), faked
here by a server whose sample i depends only on ``seed + i``. (`test_vllm_engine_on_cpu.py` checks it
against real vLLM where it is installed.)"""

import torch

from blip3o_rl.rl.rollout.engines import SamplingParams
from blip3o_rl.rl.rollout.engines.vllm import VLLMServerEngine


class FakeServer(VLLMServerEngine):
    """`_complete` answers like vLLM: sample i of a request seeded s is a function of s + i only."""

    def __init__(self, policy):
        super().__init__(base_url="http://fake", max_parallel_requests=2)
        self.policy, self.requests = policy, []

    def _complete(self, ids, kwargs):
        self.requests.append((kwargs["n"], kwargs["seed"]))
        lay = self.policy.layout
        out = []
        for i in range(kwargs["n"]):
            g = torch.Generator().manual_seed(kwargs["seed"] + i)
            codes = torch.randint(lay.num_codes, (lay.tokens_per_image,), generator=g)
            out.append(((codes + lay.image_token_start).tolist(), [-float(c) for c in codes]))
        return out


def test_a_slice_is_n_samples_from_the_seed_plus_its_start(tiny_policy):
    engine = FakeServer(tiny_policy)
    batch, seeds = tiny_policy.prompt_batch(["a", "bb"]), [1000, 2000]
    full = engine.generate(batch, 4, SamplingParams(), seeds)
    engine.requests.clear()
    part = engine.generate(batch, 4, SamplingParams(), seeds, samples=range(2, 4))
    assert sorted(engine.requests) == [(2, 1002), (2, 2002)]
    rows = [2, 3, 6, 7]
    assert part.first_sample == 2 and part.samples_per_prompt == 2
    assert torch.equal(part.codes, full.codes[rows])
    assert torch.equal(part.sampler_logprobs, full.sampler_logprobs[rows])
    assert torch.equal(part.prompts.input_ids, full.prompts.input_ids[rows])
