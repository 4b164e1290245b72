"""Suite-wide settings.

Tiny models are dominated by per-op overhead: on a shared 2-core machine, intra-op threading makes
them up to ~100x slower, so the tests run torch single-threaded.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    torch.set_num_threads(1)
    yield
