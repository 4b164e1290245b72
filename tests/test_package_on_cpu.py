"""The package itself: `import blip3o_rl` is cheap and knows its version."""

import importlib.metadata
import subprocess
import sys


def test_importing_the_package_imports_no_subpackage_and_gives_the_installed_version():
    code = ("import sys, blip3o_rl; print(blip3o_rl.__version__); "
            "print(sorted(m for m in sys.modules if m.startswith('blip3o_rl')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == importlib.metadata.version("blip3o-rl")
    assert out[1] == "['blip3o_rl']"
