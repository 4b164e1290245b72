"""TRL as the test oracle: its own `GRPOTrainer` code on the same inputs as ours.

A `GRPOTrainer` is not constructed (that needs a model, a dataset and a tokenizer); `_OracleTrainer` is
one without ``__init__``, holding only the settings TRL's methods read, and with the two methods that
would run a model replaced by our fixed tensors: `_generate` (the "rollout": completions and the engine's
log-probs) and `_get_per_token_logps_and_entropies` (the trainer's forward). Everything else is TRL's:

- `_generate_and_score_completions` computes the advantages (``multi_objective_aggregation`` x
  ``scale_rewards``) and the vLLM importance-sampling ratio (``vllm_importance_sampling_mode`` and bounds);
- `_compute_loss` computes the loss (``loss_type`` x ``importance_sampling_level`` x ``beta``, with the
  ratio applied) and, through autograd, its gradient.

Where ours deliberately differs, the test asserts the documented difference: a sample failed by one reward
(excluded by us, kept in the other rewards' statistics by TRL) and the normalisation of a step split into
micro-batches (whole-step counts here, per micro-batch in TRL).
"""

import dataclasses
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import trl  # a dev dependency: imported, not skipped, so `make test` always runs the oracle
from trl import GRPOTrainer

from blip3o_rl.rl.config import GRPOConfig
from blip3o_rl.rl.grpo.advantages import reward_advantages
from blip3o_rl.rl.grpo.is_correction import IS_MODES, ISCorrection
from blip3o_rl.rl.grpo.loss import policy_loss

B, L, K, G = 8, 6, 2, 4  # samples, tokens per sample, rewards, group size
PAD = 0


class _OracleTrainer(GRPOTrainer):
    """TRL's trainer methods over fixed tensors (no model, no tokenizer, one process)."""

    def __init__(self, **settings):  # GRPOTrainer.__init__ is deliberately not called
        self.args = SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1,
                                    gradient_accumulation_steps=1, per_device_train_batch_size=B,
                                    gradient_checkpointing_kwargs=None, gradient_checkpointing=False)
        self.accelerator = SimpleNamespace(
            num_processes=1, process_index=0, device=torch.device("cpu"),
            gather=lambda x: x, reduce=lambda x, reduction="sum": x, gather_for_metrics=lambda x: x,
            unwrap_model=lambda m: m)
        self.model = torch.nn.Linear(1, 1)  # only .training and gradient-checkpointing flags are read
        self.model.is_gradient_checkpointing = False
        self.model.train()
        self.ref_model = object()
        self.current_gradient_accumulation_steps = 1
        self.max_completion_length = L
        self.top_entropy_quantile = 1.0
        self.off_policy_mask_threshold = None
        self._entropy_bonus_enabled = False
        self.aux_loss_enabled = False
        self.epsilon_low, self.epsilon_high = 0.2, 0.28
        self.beta, self.loss_type, self.importance_sampling_level = 0.0, "bnpo", "token"
        self.use_vllm, self.vllm_importance_sampling_correction = True, True
        self.vllm_importance_sampling_mode = "sequence_mask"
        self.vllm_importance_sampling_clip_max, self.vllm_importance_sampling_clip_min = 3.0, None
        self.multi_objective_aggregation, self.scale_rewards = "sum_then_normalize", "group"
        self.num_generations, self.num_iterations = G, 1
        self.reward_weights = torch.ones(K)
        self.reward_func_names = [f"r{k}" for k in range(K)]
        self.reward_funcs = [None] * K
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._logs = {"prompt": [], "completion": [], "advantages": [], "rewards": defaultdict(list),
                      "extra": defaultdict(list), "images": []}
        self._pending_extra_logs, self._pending_metrics = {}, {}
        self.environment_factories, self.tools, self.environments = None, None, []
        self.pad_to_multiple_of, self.mask_truncated_completions = None, False
        self._tokenizer = SimpleNamespace(pad_token_id=PAD)
        self.log_multimodal = False
        for k, v in settings.items():
            setattr(self, k, v)
        self.fixed: dict[str, torch.Tensor] = {}

    # ---- the two model calls, replaced by fixed tensors
    def _generate(self, prompts):
        f = self.fixed
        return ([[1, 2]] * B, f["codes"].tolist(), None, ["c"] * B, f["engine"].tolist(), {}, None, None)

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        lp = self.fixed["old"] if kwargs.get("compute_entropy") is None else self.fixed["logprobs"]
        return lp, torch.zeros_like(lp), None

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        return self.fixed["rewards"].clone()


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, L, generator=g) * 3
    return {
        "codes": torch.randint(1, 50, (B, L), generator=g),
        "old": old,
        "engine": old + 0.3 * torch.randn(B, L, generator=g).clamp(-2, 2),
        "logprobs": old + 0.25 * torch.randn(B, L, generator=g),
        "ref": old + 0.2 * torch.randn(B, L, generator=g),
        "rewards": torch.rand(B, K, generator=g) * torch.tensor([1.0, 20.0]),
        "adv": torch.randn(B, generator=g),
    }


def _trl_scored(data, **settings) -> dict:
    t = _OracleTrainer(**settings)
    t.fixed = data
    return t._generate_and_score_completions([{"prompt": "p"}] * B)


def _trl_loss(data, is_ratio=None, mask=None, **settings):
    """TRL's loss and its gradient w.r.t. the current log-probs, on fixed inputs."""
    logprobs = data["logprobs"].clone().requires_grad_(True)
    t = _OracleTrainer(**settings)
    t.fixed = {"logprobs": logprobs, "old": data["old"]}
    b = logprobs.shape[0]
    mask = torch.ones(b, L, dtype=torch.long) if mask is None else mask
    inputs = {"prompt_ids": torch.ones(b, 2, dtype=torch.long), "prompt_mask": torch.ones(b, 2, dtype=torch.long),
              "completion_ids": data["codes"], "completion_mask": mask, "advantages": data["adv"],
              "old_per_token_logps": data["old"], "ref_per_token_logps": data["ref"],
              "num_items_in_batch": mask.sum()}
    if is_ratio is not None:
        inputs["importance_sampling_ratio"] = is_ratio
    t.use_vllm = t.vllm_importance_sampling_correction = is_ratio is not None
    loss = t._compute_loss(None, inputs)
    loss.backward()
    return loss.detach(), logprobs.grad


def _our_loss(data, is_weights=None, sample_mask=None, **kw):
    logprobs = data["logprobs"].clone().requires_grad_(True)
    sample_mask = torch.ones(B, dtype=torch.bool) if sample_mask is None else sample_mask
    loss, _ = policy_loss(logprobs, data["old"], data["adv"], sample_mask, ref_logprobs=data["ref"],
                          is_weights=is_weights, **kw)
    loss.backward()
    return loss.detach(), logprobs.grad


# ------------------------------------------------------------------ advantages


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_sum_advantages_equal_trl_s_sum_then_normalize(scale_rewards):
    data = _data(1)
    trl_adv = _trl_scored(data, scale_rewards=scale_rewards)["advantages"]
    ours = reward_advantages(data["rewards"], [1.0, 1.0], G, scale_rewards, "sum")
    torch.testing.assert_close(ours, trl_adv, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(reward_advantages(data["rewards"], [1.0, 1.0], G, scale_rewards, "sum_then_normalize"),
                               ours, atol=0, rtol=0)


@pytest.mark.parametrize("weights", [[1.0, 1.0], [2.0, 0.5]])
def test_normalize_then_sum_equals_trl_s_gdpo(weights):
    data = _data(2)
    trl_adv = _trl_scored(data, multi_objective_aggregation="normalize_then_sum",
                          reward_weights=torch.tensor(weights))["advantages"]
    ours = reward_advantages(data["rewards"], weights, G, "group", "normalize_then_sum")
    torch.testing.assert_close(ours, trl_adv, atol=1e-6, rtol=1e-6)
    # the per-group variant is not TRL's: it divides by each group's std of the sum, not the batch's
    per_group = reward_advantages(data["rewards"], weights, G, "group", "normalize_then_sum_per_group")
    assert (per_group - trl_adv).abs().max() > 1e-3


def test_a_sample_failed_by_one_reward_is_excluded_here_and_kept_by_trl():
    # The documented difference: TRL drops a sample only when every reward failed it; we exclude a sample
    # any reward failed (advantage 0, and out of every statistic of its group).
    data = _data(3)
    data["rewards"][1, 0] = float("nan")
    trl_adv = _trl_scored(data)["advantages"]
    ours = reward_advantages(data["rewards"], [1.0, 1.0], G, "group", "sum")
    assert ours[1] == 0 and trl_adv[1] != 0
    torch.testing.assert_close(ours[G:], trl_adv[G:], atol=1e-6, rtol=1e-6)  # the other group: equal
    data["rewards"][1] = float("nan")  # failed by every reward: both exclude it, and agree on its group
    trl_adv = _trl_scored(data)["advantages"]
    torch.testing.assert_close(reward_advantages(data["rewards"], [1.0, 1.0], G, "group", "sum"), trl_adv,
                               atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------ the importance-sampling ratio


@pytest.mark.parametrize("mode", IS_MODES)
@pytest.mark.parametrize(("clip_min", "clip_max"), [(None, 3.0), (0.5, 1.5)])
def test_is_weights_equal_trl_s_vllm_importance_sampling_ratio(mode, clip_min, clip_max):
    data = _data(4)
    data["engine"][2, 3] = float("nan")  # a token the engine could not score: ratio 1 in both
    trl_ratio = _trl_scored(data, vllm_importance_sampling_mode=mode, vllm_importance_sampling_clip_min=clip_min,
                            vllm_importance_sampling_clip_max=clip_max)["importance_sampling_ratio"]
    ours = ISCorrection(mode, clip_max, clip_min).weights(data["old"], data["engine"], torch.ones(B, L))
    assert ours.shape == trl_ratio.shape
    torch.testing.assert_close(ours, trl_ratio, atol=1e-6, rtol=1e-6)
    if clip_max == 1.5:  # the bounds act on this data: a test that cannot pass by accident
        assert ((ours == 0) | (ours == 1.5) | (ours == 0.5)).any()


def test_our_defaults_are_trl_s():
    trl_defaults = {f.name: f.default for f in dataclasses.fields(trl.GRPOConfig)}
    c = ISCorrection()
    assert (c.mode, c.clip_max, c.clip_min) == tuple(trl_defaults[f"vllm_importance_sampling_{k}"]
                                                     for k in ("mode", "clip_max", "clip_min"))
    ours = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
    assert trl_defaults["importance_sampling_level"] == ours["importance_sampling_level"] == "token"
    assert trl_defaults["scale_rewards"] == ours["scale_rewards"] == "group"
    assert trl_defaults["multi_objective_aggregation"] == "sum_then_normalize"  # ours: "sum", the same
    assert trl_defaults["vllm_importance_sampling_correction"] is True  # ours: on for every inexact engine


# ------------------------------------------------------------------ the loss and its gradient


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("is_mode", [None, "token_truncate", "sequence_mask"])
def test_loss_and_gradient_equal_trl_s_compute_loss(loss_type, level, beta, is_mode):
    data = _data(5)
    isw = None if is_mode is None else ISCorrection(is_mode, 1.2, 0.8).weights(data["old"], data["engine"],
                                                                                 torch.ones(B, L))
    trl_loss, trl_grad = _trl_loss(data, isw, loss_type=loss_type, importance_sampling_level=level, beta=beta)
    ours, grad = _our_loss(data, isw, loss_type=loss_type, importance_sampling_level=level, beta=beta,
                           epsilon=0.2, epsilon_high=0.28)
    torch.testing.assert_close(ours, trl_loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad, trl_grad, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_an_excluded_sample_and_micro_batches_differ_from_trl_as_documented(loss_type):
    # Sample 5 excluded (its reward failed). TRL has no exclusion; its nearest input is a zero completion
    # mask on that row. Ours divides by the valid samples / tokens of the whole step and, split into two
    # micro-batches with the step's counts, sums to the whole-batch loss; TRL normalises each micro-batch.
    data = _data(6)
    keep = torch.ones(B, dtype=torch.bool)
    keep[5] = False
    mask = keep[:, None].long().expand(B, L).contiguous()
    kw = {"loss_type": loss_type, "epsilon": 0.2, "epsilon_high": 0.28}
    ours, _ = _our_loss(data, sample_mask=keep, **kw)
    trl_loss, _ = _trl_loss(data, mask=mask, loss_type=loss_type)
    factor = {"grpo": B / (B - 1), "bnpo": 1.0, "dr_grpo": B / (B - 1), "dapo": 1.0}[loss_type]
    torch.testing.assert_close(ours, trl_loss * factor, atol=1e-6, rtol=1e-6)  # S = B - 1 valid samples here

    halves = (slice(0, 4), slice(4, 8))
    shares = []
    for sl in halves:
        part = {k: (v[sl] if k != "rewards" else v) for k, v in data.items()}
        share, _ = policy_loss(part["logprobs"], part["old"], part["adv"], keep[sl], ref_logprobs=part["ref"],
                               global_valid_tokens=int(keep.sum()) * L, global_valid_samples=int(keep.sum()), **kw)
        shares.append(share)
    torch.testing.assert_close(sum(shares), ours, atol=1e-6, rtol=1e-6)  # micro-batch invariant
    # TRL on the same two micro-batches (gradient accumulation 2: each loss / 2): per-micro-batch normalisers
    trl_split = sum(_trl_loss({k: v[sl] for k, v in data.items() if k != "rewards"}, mask=mask[sl],
                              loss_type=loss_type, current_gradient_accumulation_steps=2)[0] for sl in halves)
    if loss_type in ("grpo", "bnpo"):  # 4 and 3 valid rows weigh alike there: not the step's mean
        assert abs(float(trl_split) - float(ours)) > 1e-4
