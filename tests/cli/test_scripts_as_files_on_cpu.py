"""Every entry point in scripts/ runs as a file (``python scripts/NAME.py``) as well as a module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENTRY_POINTS = sorted(p for p in (REPO / "scripts").glob("*.py") if 'if __name__ == "__main__":' in p.read_text())


def test_every_entry_point_runs_itself_as_its_module_when_started_as_a_file():
    assert len(ENTRY_POINTS) >= 9
    for path in ENTRY_POINTS:
        assert "    run_as_module(__file__)\n" in path.read_text(), f"{path.name} lacks the run-as-file guard"


def test_a_script_file_runs_from_any_directory(tmp_path):
    for name, args, want in (("make_tiny_blip3o_next.py", [str(tmp_path / "ckpt")], "wrote tiny BLIP3o-NEXT"),
                             ("cli.py", ["--help"], "serve-reward")):
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (name, proc.stderr[-2000:])
        assert want in proc.stdout, (name, proc.stdout[-500:])
    assert (tmp_path / "ckpt" / "config.json").is_file()
