"""The command line (`cli`), benchmarks and tools: modules of the package, run as ``blip3o-rl ...`` or
``python -m blip3o_rl.scripts.NAME``; each entry point also works as a file (``python scripts/NAME.py``)
through `run_as_module`."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import NoReturn


def run_as_module(file: str) -> NoReturn:
    """Run ``scripts/NAME.py``, started as a file, as the module ``blip3o_rl.scripts.NAME``, and exit.

    A file run as ``python scripts/NAME.py`` has no package, so its relative imports would fail
    ("attempted relative import with no known parent package"); each entry point calls this first
    when ``__package__`` is empty. The package must be installed (``pip install -e .``).
    """
    module = f"{__name__}.{Path(file).stem}"
    sys.argv[0] = file
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    raise SystemExit(0)
