"""`BatchLayout` (rl/batch_layout.py): which prompts and samples of a step's global batch each rank holds."""

import pytest
import torch

from blip3o_rl.rl.batch_layout import BatchLayout, batch_split_problem
from blip3o_rl.rl.config import ConfigError, load_config
from blip3o_rl.rl.rollout.generate import decode_generators


def _share(b, g, w):
    """(global prompt indices, in-group sample indices, global rows) of every rank."""
    return [(list(x.prompts), list(x.samples), x.rows) for x in (BatchLayout(b, g, w, r) for r in range(w))]


def test_split_group_g4_b2_w4():
    # S = G / B = 2 ranks per prompt, W * B / G = 2 prompts per step:
    # rank 0: prompt 0 samples 0,1 | rank 1: prompt 0 samples 2,3 | rank 2: prompt 1 samples 0,1 | rank 3: 2,3
    assert _share(2, 4, 4) == [([0], [0, 1], slice(0, 2)), ([0], [2, 3], slice(2, 4)),
                               ([1], [0, 1], slice(4, 6)), ([1], [2, 3], slice(6, 8))]
    lay = BatchLayout(2, 4, 4, 3)
    assert lay.split and lay.ranks_per_prompt == 2 and lay.prompts_per_step == 2


def test_whole_groups_b8_g4_w2():
    # 2 prompts per rank, 4 per step: rank 0 prompts 0,1 and rank 1 prompts 2,3, all 4 samples each
    assert _share(8, 4, 2) == [([0, 1], [0, 1, 2, 3], slice(0, 8)), ([2, 3], [0, 1, 2, 3], slice(8, 16))]
    lay = BatchLayout(8, 4, 2, 1)
    assert not lay.split and lay.ranks_per_prompt == 1 and lay.prompts_per_step == 4


def test_every_layout_is_the_one_process_order():
    """Concatenating the ranks' (prompt, sample) pairs in rank order is the 1-process batch: prompt-major,
    sample-minor, row r*B + i of the gathered batch (the property advantages and seeds rely on)."""
    for b, g, w in [(2, 4, 4), (1, 4, 8), (4, 4, 3), (8, 4, 2), (2, 8, 8), (4, 8, 6)]:
        ranks = [BatchLayout(b, g, w, r) for r in range(w)]
        pairs = [(p, i) for lay in ranks for p in lay.prompts for i in lay.samples]
        one = BatchLayout(w * b, g, 1, 0)
        assert pairs == [(p, i) for p in one.prompts for i in one.samples], (b, g, w)
        assert all(lay.prompts_per_step == one.prompts_per_step for lay in ranks)
        assert [lay.rows.start for lay in ranks] == list(range(0, w * b, b))


def test_refusals_name_the_numbers():
    assert batch_split_problem(8, 4) is None and batch_split_problem(2, 4) is None and batch_split_problem(4, 4) is None
    with pytest.raises(ValueError, match=r"batch_size=6 samples per process and num_generations=4: one must divide"):
        BatchLayout(6, 4, 2, 0)  # mixed layouts stay refused
    with pytest.raises(ValueError, match=r"2 consecutive processes share each prompt: the world size 3 is not a "
                                         r"multiple of 2"):
        BatchLayout(2, 4, 3, 0)
    with pytest.raises(ValueError, match=r"the world size 1 is not a multiple of 4"):
        BatchLayout(1, 4, 1, 0)
    with pytest.raises(ValueError, match="rank 2 is outside a world of 2"):
        BatchLayout(2, 4, 2, 2)


def test_config_accepts_either_divisor_and_refuses_the_rest():
    for b in (2, 4, 8, 16):
        assert load_config("demo", ["grpo.num_generations=4", f"grpo.batch_size={b}"]).grpo.batch_size == b
    with pytest.raises(ConfigError, match=r"grpo\.batch_size: batch_size=6 samples per process and "
                                          r"num_generations=4: one must divide the other"):
        load_config("demo", ["grpo.num_generations=4", "grpo.batch_size=6"])
    # a split group decodes in chunks of its slice; whole groups in chunks of G
    load_config("demo", ["grpo.num_generations=4", "grpo.batch_size=2", "rollout.decode_chunk_size=2"])
    with pytest.raises(ConfigError, match=r"rollout\.decode_chunk_size: must be a positive multiple of 4"):
        load_config("demo", ["grpo.num_generations=4", "grpo.batch_size=8", "rollout.decode_chunk_size=2"])


def test_setup_refuses_a_world_size_not_a_multiple_of_the_ranks_per_group(tmp_path):
    """One process with half a group: refused at setup, before any folder or model is touched."""
    from blip3o_rl.rl.trainer import GRPOTrainer

    cfg = load_config("demo", [f"output_dir={tmp_path / 'run'}", "grpo.num_generations=4", "grpo.batch_size=2"])
    trainer = GRPOTrainer(cfg)
    try:
        with pytest.raises(ConfigError, match=r"grpo\.batch_size: batch_size=2 holds 1/2 of a group of "
                                              r"num_generations=4.*the world size 1 is not a multiple of 2"):
            trainer.setup()
    finally:
        trainer.cleanup()
    assert not (tmp_path / "run").exists()


def test_decode_generators_of_a_slice_are_those_samples_of_the_group():
    full = decode_generators([11, 22], 4, torch.device("cpu"))
    part = decode_generators([11, 22], 2, torch.device("cpu"), first_sample=2)
    assert [g.initial_seed() for g in part] == [g.initial_seed() for g in full[2:4] + full[6:8]]


def test_decode_rows_seed_a_slice_by_its_true_index_in_the_group():
    """`decode_rows` on a rollout holding samples 2, 3 of each group gives each image the decode generator of
    that sample in the whole group (so a split group's images are the one-process images), and chunks must
    be whole slices."""
    from types import SimpleNamespace

    from blip3o_rl.rl.rollout.engines import Rollout
    from blip3o_rl.rl.rollout.generate import decode_rows

    policy = SimpleNamespace(lm=torch.nn.Identity(), device=torch.device("cpu"),
                             decode=lambda codes, hidden, generators: [g.initial_seed() for g in generators])

    def rollout(rows, first):
        return Rollout(prompts=None, codes=torch.zeros(rows, 3, dtype=torch.long),  # type: ignore[arg-type]
                       sampler_logprobs=torch.zeros(rows, 3), seeds=[11, 22], first_sample=first)

    full = decode_rows(policy, rollout(8, 0), slice(None))
    assert decode_rows(policy, rollout(4, 2), slice(None)) == full[2:4] + full[6:8]
    assert decode_rows(policy, rollout(4, 2), slice(2, 4)) == full[6:8]
    with pytest.raises(ValueError, match="decode rows 1:4 split the 2 samples of a prompt"):
        decode_rows(policy, rollout(4, 2), slice(1, 4))
