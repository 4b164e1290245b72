"""The tiny layout reward's uint8 bounds test equals the plain |pixel - colour| <= tolerance formula."""

import numpy as np
from PIL import Image

from blip3o_rl.tiny.layout_reward import TinyLayoutReward
from blip3o_rl.tiny.world import PALETTE


def test_uint8_bounds_equal_the_absolute_difference_formula():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (16, 12, 3), dtype=np.uint8)) for _ in range(6)]
    for tolerance in (0, 40, 120, 300):
        reward = TinyLayoutReward(tolerance=tolerance)
        for colour in PALETTE:
            out = reward(images, ["p"] * len(images), [{"regions": {"all": colour}}] * len(images))
            for image, score in zip(images, out.scores, strict=True):
                a = np.asarray(image, dtype=np.int64)  # the oracle, in wide integers
                want = float((np.abs(a - np.asarray(PALETTE[colour])) <= tolerance).all(-1).mean())
                assert score == want, (tolerance, colour)
