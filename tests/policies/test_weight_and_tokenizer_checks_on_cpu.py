"""Loading checks shared by the policies (issue 24): finite weights, tokenizer files, failed decodes."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from PIL import Image
from torch import nn

from blip3o_rl.policies.base import decode_error
from blip3o_rl.policies.blip3o_next.decoder import to_pil
from blip3o_rl.policies.tokenizer_files import TokenizerError, load_tokenizer_files
from blip3o_rl.policies.weights import NonFiniteWeightsError, require_finite, require_finite_module
from blip3o_rl.rewards import score_batch


def test_require_finite_counts_nan_and_inf_and_ignores_integer_tensors(tmp_path):
    require_finite(torch.ones(3), "w", "f.safetensors")
    require_finite(torch.tensor([1, 2]), "ids", "f.safetensors")  # integer buffers hold no NaN
    bad = torch.tensor([1.0, math.nan, math.inf, -math.inf], dtype=torch.bfloat16)
    with pytest.raises(NonFiniteWeightsError, match=r"^f\.safetensors: tensor 'w' holds 1 NaN and 2 infinite "
                                                    r"values \(of 4\)"):
        require_finite(bad, "w", "f.safetensors")


def test_require_finite_module_names_the_file_holding_the_tensor(tmp_path):
    layer = nn.Linear(2, 2)
    (tmp_path / "model.safetensors").write_bytes(b"")  # the one weights file of the folder
    require_finite_module(layer, tmp_path)
    with torch.no_grad():
        layer.bias[1] = math.nan
    with pytest.raises(NonFiniteWeightsError, match=rf"^{tmp_path / 'model.safetensors'}: tensor 'bias' holds 1 NaN"):
        require_finite_module(layer, tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"bias": "part-2.safetensors"}}))
    with pytest.raises(NonFiniteWeightsError, match=rf"^{tmp_path / 'part-2.safetensors'}: tensor 'bias'"):
        require_finite_module(layer, tmp_path)


def test_tokenizer_files_alternatives_and_damage(tiny_blip3o_next, tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(tiny_blip3o_next, folder)
    sets = [("tokenizer.json",), ("vocab.json", "merges.txt")]
    assert load_tokenizer_files(folder, lambda f: f.name, sets, also=("tokenizer_config.json",)) == "tok"
    (folder / "tokenizer.json").rename(folder / "elsewhere.json")
    (folder / "vocab.json").write_text("{}")
    with pytest.raises(TokenizerError, match=r"tok: no tokenizer: tokenizer.json missing \(expected tokenizer.json "
                                             r"or vocab.json \+ merges.txt, with tokenizer_config.json"):
        load_tokenizer_files(folder, lambda f: f, sets, also=("tokenizer_config.json",))
    (folder / "merges.txt").write_text("")
    assert load_tokenizer_files(folder, lambda f: "slow", sets) == "slow"  # the second set is enough

    def broken(f):
        raise OSError("Can't load tokenizer\nmore lines of a long message")

    with pytest.raises(TokenizerError, match=r"cannot be read: OSError: Can't load tokenizer$"):
        load_tokenizer_files(folder, broken, sets)
    with pytest.raises(TokenizerError, match=r"no tokenizer: tokenizer.json missing"):
        load_tokenizer_files(tmp_path / "absent", broken, sets)


def test_a_non_finite_image_becomes_a_marked_placeholder_that_no_reward_scores(caplog):
    pixels = torch.rand(3, 3, 4, 4)
    pixels[1, 0, 0, 0] = math.nan
    pixels[2] = math.inf
    with caplog.at_level("WARNING"):
        images = to_pil(pixels)
    assert [decode_error(im) is None for im in images] == [True, False, False]
    assert decode_error(images[1]).startswith("non-finite decode: 1 of 48 pixel values")
    assert "image 1 of 3 failed" in caplog.text
    out = score_batch(lambda i, p, m: [1.0] * len(i), "any", images, ["p"] * 3, [{}] * 3)
    assert out.scores == [1.0, None, None]
    assert out.details[1]["error"].startswith("no image: non-finite decode")
    assert decode_error(Image.new("RGB", (2, 2))) is None
