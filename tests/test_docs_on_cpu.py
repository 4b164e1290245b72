"""The README stays a front page, and what the docs point at exists.

docs/architecture.md's file list has its own test (tests/test_architecture_doc_on_cpu.py); the
configuration reference's keys are checked in tests/rl/test_config_on_cpu.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# A repository file named in backticks: at least one folder, a source or recipe extension.
REPO_PATH = re.compile(r"`((?:[\w.-]+/)+[\w.-]+\.(?:py|yaml|sh|sbatch|md|jsonl))`")
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def test_readme_is_a_front_page_with_the_two_commands_on_its_first_screen():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move reference material to docs/"
    first_screen = "\n".join(lines[:40])
    assert "make demo" in first_screen and "make test" in first_screen


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_link_and_repository_path_of_a_page_exists(page):
    text = page.read_text(encoding="utf-8")
    links = [m for m in LINK.findall(text) if "://" not in m]
    missing = [f"link {m}" for m in links if not (page.parent / m).exists()]
    missing += [f"path {m}" for m in REPO_PATH.findall(text) if not (REPO / m).exists()]
    assert not missing, f"{page.relative_to(REPO)} names what does not exist: {sorted(set(missing))}"
