import math

import pytest
from PIL import Image

from blip3o_rl.registry import ComponentError
from blip3o_rl.rewards import RewardOutput, WeightedRewards, load_reward, score_batch

IMAGES = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255), (0, 0, 0))]
PROMPTS = ["a", "b", "c"]
META = [{}, {}, {}]


def redness(images, prompts, metadata, scale=1.0):
    return [scale * img.getpixel((0, 0))[0] / 255 for img in images]


def test_plain_function_from_a_file(tmp_path):
    f = tmp_path / "my_reward.py"
    f.write_text("def blue(images, prompts, metadata):\n    return [i.getpixel((0, 0))[2] / 255 for i in images]\n")
    reward = load_reward(f"{f}:blue")
    assert score_batch(reward, "blue", IMAGES, PROMPTS, META).scores == [0.0, 1.0, 0.0]


def test_plain_function_from_a_module_with_kwargs():
    reward = load_reward(f"{__name__}:redness", scale=2.0)
    assert score_batch(reward, "red", IMAGES, PROMPTS, META).scores == [2.0, 0.0, 0.0]


def test_registered_tiny_layout_reward():
    reward = load_reward("tiny_layout")
    out = reward([Image.new("RGB", (8, 8), (230, 25, 75))], ["p"], [{"regions": {"top": "red", "bottom": "red"}}])
    assert out.scores == [1.0]
    out = reward(IMAGES[:1], ["p"], [{}])
    assert out.scores == [None] and "regions" in out.details[0]["error"]


def test_crashing_reward_fails_its_samples_not_zero():
    def boom(images, prompts, metadata):
        raise RuntimeError("server down")

    out = score_batch(load_reward(f"{__name__}:redness"), "x", IMAGES, PROMPTS, META)
    assert out.num_failed == 0
    out = score_batch(boom, "boom", IMAGES, PROMPTS, META)
    assert out.scores == [None, None, None]
    assert "server down" in out.details[0]["error"]


def test_non_finite_scores_and_bad_lengths_become_failures():
    out = score_batch(lambda i, p, m: [1.0, math.nan, math.inf], "x", IMAGES, PROMPTS, META)
    assert out.scores == [1.0, None, None]
    out = score_batch(lambda i, p, m: [1.0, 2.0], "x", IMAGES, PROMPTS, META)
    assert out.scores == [None] * 3 and "returned 2 scores for a batch of 3" in out.details[0]["error"]
    out = score_batch(lambda i, p, m: ["high", 1, 1], "x", IMAGES, PROMPTS, META)
    assert out.scores == [None, 1.0, 1.0] and out.details[0]["error"] == "'high' (a str) is not a number"


def test_weighted_combination_fails_a_sample_if_any_reward_fails():
    a = lambda i, p, m: RewardOutput([1.0, 2.0, None])  # noqa: E731
    b = lambda i, p, m: [0.5, None, 1.0]  # noqa: E731
    combined = WeightedRewards([("a", 1.0, a), ("b", 2.0, b)])(IMAGES, PROMPTS, META)
    assert combined.total == [2.0, None, None]
    assert combined.outputs["a"].scores == [1.0, 2.0, None]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("nope", "unknown reward 'nope'.*registered reward names: .*geneval.*ocr.*tiny_layout"),
        ("/no/such/file.py:f", "does not exist"),
        (f"{__name__}:missing", "has no attribute 'missing'"),
        ("tiny_layout", "takes no argument 'colour'"),
    ],
)
def test_bad_specs(spec, match):
    kwargs = {"colour": "red"} if spec == "tiny_layout" else {}
    with pytest.raises(ComponentError, match=match):
        load_reward(spec, **kwargs)


def test_unknown_kwargs_of_a_function_reward_fail_at_load():
    with pytest.raises(ComponentError, match="takes no argument 'scal'"):
        load_reward(f"{__name__}:redness", scal=2.0)
