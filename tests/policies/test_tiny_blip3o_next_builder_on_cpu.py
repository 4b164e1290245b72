"""The tiny BLIP3o-NEXT builder's ``--head-dim`` option: a checkpoint vLLM's CPU attention accepts (head_dim 32),
the rest of the layout unchanged (`test_vllm_blip3o_next_on_cpu.py` runs vLLM on it)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from blip3o_rl.policies.blip3o_next import Blip3oNextPolicy
from blip3o_rl.policies.blip3o_next.testing import VLLM_CPU_HEAD_DIM, TinySpec
from blip3o_rl.scripts.make_tiny_blip3o_next import main as make_tiny


def test_head_dim_option_widens_only_the_attention_heads(tmp_path):
    assert TinySpec().head_dim == 16  # the default the rest of the suite runs on (vLLM's CPU attention refuses it)
    assert make_tiny([str(tmp_path / "narrow")]) == 0
    assert make_tiny([str(tmp_path / "wide"), "--head-dim", str(VLLM_CPU_HEAD_DIM)]) == 0
    narrow, wide = (json.loads((tmp_path / name / "config.json").read_text()) for name in ("narrow", "wide"))
    assert narrow["head_dim"] == 16 and wide["head_dim"] == 32
    assert {k: v for k, v in wide.items() if k not in ("head_dim", "diffusion_name_or_path")} == {
        k: v for k, v in narrow.items() if k not in ("head_dim", "diffusion_name_or_path")
    }
    spec = TinySpec()
    tensors = load_file(tmp_path / "wide" / "model.safetensors")
    q = tensors["model.layers.0.self_attn.q_proj.weight"]
    k = tensors["model.layers.0.self_attn.k_proj.weight"]
    assert q.shape == (spec.num_heads * 32, spec.hidden_size) and k.shape == (spec.num_kv_heads * 32, spec.hidden_size)
    assert tensors["model.embed_tokens.weight"].shape[1] == spec.hidden_size  # the model width is unchanged

    policy = Blip3oNextPolicy.from_pretrained(tmp_path / "wide")  # the real loader reads it
    assert policy.model.config.head_dim == 32
    codes = torch.randint(spec.num_codes, (1, spec.tokens_per_image))
    hidden = policy.image_hidden_states(policy.prompt_batch(["a red cube"]), codes)
    assert hidden.shape == (1, spec.tokens_per_image + 1, spec.hidden_size) and bool(hidden.isfinite().all())


@pytest.mark.parametrize("bad", ["0", "15"])
def test_head_dim_must_be_even_and_positive(tmp_path, bad, capsys):
    with pytest.raises(SystemExit) as exc:
        make_tiny([str(tmp_path / "x"), "--head-dim", bad])
    assert exc.value.code == 2 and "--head-dim" in capsys.readouterr().err
