"""clip_score, pickscore and aesthetic: tiny random models saved in the real formats, loaded through the
real loading code (`load_reward` -> the registered class -> transformers / safetensors), scoring a batch."""

import math

import pytest
import torch
from PIL import Image

from blip3o_rl.rewards import load_reward, score_batch
from blip3o_rl.rewards.aesthetic import build_head, convert_head
from blip3o_rl.rewards.testing import save_tiny_aesthetic, save_tiny_clip_score, save_tiny_pickscore

PROMPTS = ["a red cube", "a photo of a dog", "two blue cats on a sofa"]


def _images():
    return [Image.new("RGB", (40, 30), (200, 20, 20)), Image.new("RGB", (64, 64), (20, 200, 20)),
            Image.new("L", (50, 50), 128)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("preference")
    pick_model, pick_proc = save_tiny_pickscore(root / "pickscore")
    clip, head = save_tiny_aesthetic(root / "aesthetic")
    _, linear_head = save_tiny_aesthetic(root / "aesthetic_linear", head="linear")
    return {"clip": save_tiny_clip_score(root / "clip"), "pick_model": pick_model, "pick_proc": pick_proc,
            "aes_clip": clip, "aes_head": head, "aes_linear": linear_head}


def _rewards(m):
    return {
        "clip_score": load_reward("clip_score", model=str(m["clip"]), batch_size=2),
        "pickscore": load_reward("pickscore", model=str(m["pick_model"]), processor=str(m["pick_proc"]), batch_size=2),
        "aesthetic": load_reward("aesthetic", head=str(m["aes_head"]), clip=str(m["aes_clip"]), batch_size=2),
    }


def test_each_reward_scores_a_batch_and_records_its_models(models):
    for name, reward in _rewards(models).items():
        out = score_batch(reward, name, _images(), PROMPTS, [{}] * 3)
        assert all(isinstance(s, float) and math.isfinite(s) for s in out.scores), (name, out)
        for d in out.details:
            assert "error" not in d
        ids = set(out.details[0]) - {"cosine"}
        assert ids == {"clip_score": {"model"}, "pickscore": {"model", "processor"}, "aesthetic": {"clip", "head"}}[name]
        assert out.details[0].get("model", out.details[0].get("clip")) in (
            str(models["clip"]), str(models["pick_model"]), str(models["aes_clip"]))


def test_scores_do_not_depend_on_batching(models):
    m = models
    small = load_reward("pickscore", model=str(m["pick_model"]), processor=str(m["pick_proc"]), batch_size=1)
    large = load_reward("pickscore", model=str(m["pick_model"]), processor=str(m["pick_proc"]), batch_size=8)
    a, b = small(_images(), PROMPTS, [{}] * 3), large(_images(), PROMPTS, [{}] * 3)
    torch.testing.assert_close(torch.tensor(a.scores), torch.tensor(b.scores), atol=1e-5, rtol=1e-5)


def test_clip_score_is_the_scaled_cosine(models):
    plain = load_reward("clip_score", model=str(models["clip"]))
    scaled = load_reward("clip_score", model=str(models["clip"]), scale=2.5, clip_negative=True)
    a, b = plain(_images(), PROMPTS, [{}] * 3), scaled(_images(), PROMPTS, [{}] * 3)
    for x, y, d in zip(a.scores, b.scores, a.details, strict=True):
        assert x == pytest.approx(d["cosine"], abs=1e-6) and -1 <= x <= 1
        assert y == pytest.approx(2.5 * max(x, 0.0), abs=1e-5)


def test_pickscore_uses_the_model_logit_scale(models):
    r = load_reward("pickscore", model=str(models["pick_model"]), processor=str(models["pick_proc"]))
    out = r(_images(), PROMPTS, [{}] * 3)
    for s, d in zip(out.scores, out.details, strict=True):
        assert s == pytest.approx(20.0 * d["cosine"], rel=1e-4)  # the tiny model's logit_scale is log(20)


def test_aesthetic_linear_and_pth_heads_load(models, tmp_path):
    r = load_reward("aesthetic", head=str(models["aes_linear"]), clip=str(models["aes_clip"]))
    assert all(s is not None for s in r(_images(), PROMPTS, [{}] * 3).scores)
    # a .pth plain state dict (the published format) loads with weights_only, and converts to safetensors
    from safetensors.torch import load_file

    pth = tmp_path / "head.pth"
    torch.save(load_file(models["aes_head"]), pth)
    a = load_reward("aesthetic", head=str(pth), clip=str(models["aes_clip"]))(_images(), PROMPTS, [{}] * 3)
    b = load_reward("aesthetic", head=str(convert_head(pth, tmp_path / "c.safetensors")),
                    clip=str(models["aes_clip"]))(_images(), PROMPTS, [{}] * 3)
    assert a.scores == b.scores


def test_a_bad_image_fails_alone_with_a_reason(models):
    broken = Image.new("RGB", (8, 8))
    broken.load = lambda: (_ for _ in ()).throw(OSError("image file is truncated"))  # decoding fails
    for name, reward in _rewards(models).items():
        images = [_images()[0], "not an image", Image.new("RGB", (0, 5)), broken, _images()[1]]
        out = score_batch(reward, name, images, ["a", "b", "c", "d", "e"], [{}] * 5)
        assert out.scores[0] is not None and out.scores[4] is not None, name
        assert out.scores[1:4] == [None, None, None], name
        assert "not a PIL image" in out.details[1]["error"]
        assert "empty image" in out.details[2]["error"]
        assert "truncated" in out.details[3]["error"]


def test_missing_model_folders_fail_at_load_naming_the_keyword(models, tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"clip_score: model=.*no such model folder"):
        load_reward("clip_score", model=missing)
    with pytest.raises(FileNotFoundError, match=r"pickscore: processor=.*no such model folder"):
        load_reward("pickscore", model=str(models["pick_model"]), processor=missing)
    with pytest.raises(FileNotFoundError, match=r"aesthetic: head=.*no such file"):
        load_reward("aesthetic", head=missing + ".safetensors", clip=str(models["aes_clip"]))
    with pytest.raises(ValueError, match="aesthetic: head is required"):
        load_reward("aesthetic", clip=str(models["aes_clip"]))
    # a folder that exists but is not a model (PickScore's model folder holds no tokenizer)
    with pytest.raises(FileNotFoundError, match=r"pickscore: processor=.*could not be loaded"):
        load_reward("pickscore", model=str(models["pick_model"]), processor=str(tmp_path))


def test_a_hub_id_that_cannot_be_fetched_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"clip_score: model='nobody/no-such-clip'.*hub id"):
        load_reward("clip_score", model="nobody/no-such-clip")


def test_aesthetic_head_shapes_are_checked():
    with pytest.raises(ValueError, match="expected inputs of size 8"):
        build_head({"weight": torch.zeros(1, 7), "bias": torch.zeros(1)}, 8)
    with pytest.raises(ValueError, match="unexpected key"):
        build_head({"fc.weight": torch.zeros(1, 8)}, 8)
    with pytest.raises(ValueError, match="last layer has 2 outputs"):
        build_head({"weight": torch.zeros(2, 8), "bias": torch.zeros(2)}, 8)
