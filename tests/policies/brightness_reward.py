"""A real reward that scores any image: its mean brightness in [0, 1] (loaded by file path in tests)."""

import numpy as np


def brightness(images, prompts, metadata):
    return [float(np.asarray(image.convert("L"), dtype=np.float64).mean() / 255.0) for image in images]
