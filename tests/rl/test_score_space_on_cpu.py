"""``grpo.score_space``: the exact kept-set default, and ``official``, which scores as the official
BLIP3o-NEXT trainer (a TRL 0.21 copy) did: the full-vocabulary log-softmax of the causal LM's logits at
temperature 1, untruncated, while sampling was truncated (top-k). Worked example on the tiny world: the
official log-probs computed the official way (the HF model's full logits, TRL's `selective_log_softmax`),
then the ratio and the k3 KL from them, against ours."""

import copy
import json
import math

import pytest
import torch
from trl.trainer.utils import selective_log_softmax

from blip3o_rl.rl.config import ConfigError, load_config
from blip3o_rl.rl.grpo.logprobs import sequence_logprobs
from blip3o_rl.rl.grpo.loss import policy_loss
from blip3o_rl.rl.grpo.score_space import OfficialSpace, build_score_space
from blip3o_rl.rl.rollout.engines import KVCacheEngine, SamplingParams
from blip3o_rl.rl.trainer import train

SAMPLING = SamplingParams(temperature=1.0, top_k=5)  # truncated, as the official run's top-k 50


def _official_logprobs(policy, ro):
    """What the official trainer computes: full logits of the causal LM over prompt + completion, the
    completion positions, / temperature 1, log-softmax over the whole vocabulary at the sampled tokens."""
    ids = torch.cat([ro.prompts.input_ids, policy.layout.to_token_ids(ro.codes)], 1)
    mask = torch.cat([ro.prompts.attention_mask, torch.ones_like(ro.codes)], 1)
    n = ro.codes.shape[1]
    with torch.no_grad():
        logits = policy.model(input_ids=ids, attention_mask=mask).logits[:, -n - 1 : -1] / 1.0
    return selective_log_softmax(logits, policy.layout.to_token_ids(ro.codes))


def _perturbed(policy, scale, seed):
    other = copy.deepcopy(policy)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return other


def test_official_space_reproduces_the_official_ratio_and_kl(tiny_policy):
    engine = KVCacheEngine()
    engine.setup(tiny_policy)
    ro = engine.generate(tiny_policy.prompt_batch(["green"]), 4, SAMPLING, [0])  # one prompt: no padding
    new, ref = _perturbed(tiny_policy, 0.02, 1), _perturbed(tiny_policy, 0.02, 2)
    space = build_score_space("official")
    assert isinstance(space, OfficialSpace)

    def ours(policy, grad=False):
        with torch.set_grad_enabled(grad):
            return sequence_logprobs(policy.lm, ro.prompts, ro.codes, 1.0, 5, 1.0, kept=ro.kept_sizes,
                                     space=space).logprobs

    old_off, new_off, ref_off = (_official_logprobs(p, ro) for p in (tiny_policy, new, ref))
    old, cur, ref_lp = ours(tiny_policy), ours(new, grad=True), ours(ref)
    for a, b in ((old, old_off), (cur, new_off), (ref_lp, ref_off)):
        torch.testing.assert_close(a.detach(), b, atol=2e-6, rtol=0)
    # the official ratio and k3 KL per token, from the official log-probs
    ratio = torch.exp(new_off - old_off)
    kl = torch.exp(ref_off - new_off) - (ref_off - new_off) - 1
    _, st = policy_loss(cur, old, torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.ones(4, dtype=torch.bool),
                        beta=0.001, ref_logprobs=ref_lp)
    assert st.ratio_mean == pytest.approx(float(ratio.mean()), abs=1e-6)
    assert st.ratio_min == pytest.approx(float(ratio.min()), abs=1e-6)
    assert st.ratio_max == pytest.approx(float(ratio.max()), abs=1e-6)
    assert st.kl == pytest.approx(float(kl.mean()), abs=1e-7)
    # and it is not the sampler's distribution: the kept-set scores (top-5 of 16 codes) differ
    kept = sequence_logprobs(tiny_policy.lm, ro.prompts, ro.codes, 1.0, 5, 1.0, kept=ro.kept_sizes).logprobs
    torch.testing.assert_close(kept, ro.sampler_logprobs, atol=1e-5, rtol=0)
    assert (kept - old).min() > math.log(1.5)  # full-vocabulary mass: every code's log-prob much lower


def test_score_space_config():
    assert load_config("demo").grpo.score_space == "kept_set"
    assert load_config("demo", ["grpo.score_space=official"]).grpo.score_space == "official"
    with pytest.raises(ConfigError, match=r"grpo\.score_space"):
        load_config("demo", ["grpo.score_space=full"])
    with pytest.raises(ConfigError, match=r"rollout\.is_correction"):
        load_config("demo", ["grpo.score_space=official", "rollout.is_correction=on"])


def test_a_training_step_in_the_official_space(tmp_path, tiny_world_dir):
    out = tmp_path / "run"
    train(load_config("demo", [f"output_dir={out}", f"model.name_or_path={tiny_world_dir}", "model.build={}",
                               "max_steps=2", "grpo.score_space=official", "rollout.top_k=5", "grpo.beta=0.001",
                               "grpo.num_iterations=2", "grpo.batch_size=16", "grpo.micro_batch_size=16",
                               "eval.eval_every=0", "checkpoint.save_final=false", "checkpoint.save_every=0",
                               "logging.progress_bar=false", "logging.tensorboard=false", "logging.image_every=0"]))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) and r["kl"] >= 0 for r in rows)
    # the engine samples from the kept set: the agreement metrics now show the official bias, unbounded
    assert rows[0]["rollout/logprob_diff_mean"] > 0.4
