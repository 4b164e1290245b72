"""``python -m blip3o_rl ...`` (and ``torchrun ... -m blip3o_rl train ...``): the ``blip3o-rl`` command."""

import sys

from .scripts.cli import main

if __name__ == "__main__":
    sys.exit(main())
