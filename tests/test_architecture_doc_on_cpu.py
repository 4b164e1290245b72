"""docs/architecture.md lists the package files one GRPO step runs through; this keeps that list true.

One real step of the demo recipe (a smaller tiny world, 2 prompts) runs under a profiler hook on every
thread (`sys.setprofile` / `threading.setprofile`); each package file in which a Python function was
entered during `GRPOTrainer.step` is collected and compared, both ways, with the list on the page.
"""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path

import blip3o_rl
from blip3o_rl.rl.config import load_config
from blip3o_rl.rl.trainer import GRPOTrainer

PAGE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
SECTION = "## The files one GRPO step runs through"
# The demo recipe, made small: the step's code paths are the demo's, its sizes are not.
SMALL = ["max_steps=1", "eval.eval_every=0", "checkpoint.save_final=false", "logging.progress_bar=false",
         "logging.tensorboard=false", "model.build.sft_steps=0", "model.build.hidden_size=32",
         "grpo.batch_size=16", "grpo.micro_batch_size=16"]


def listed_files(text: str) -> list[str]:
    """The files named at the start of the list items of the page's step section, in order."""
    assert SECTION in text, f"{PAGE} has no section {SECTION!r}"
    start = text.index(SECTION) + len(SECTION)
    end = text.find("\n## ", start)
    body = text[start:] if end < 0 else text[start:end]
    return re.findall(r"^\s*(?:\d+\.|-)\s+`([\w/]+\.py)`", body, flags=re.M)


def package_files() -> dict[Path, str]:
    """Each imported module of the package: its resolved file -> its path in the package (``rl/loss.py``)."""
    root = Path(blip3o_rl.__file__).resolve().parent
    files = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if (name == "blip3o_rl" or name.startswith("blip3o_rl.")) and file:
            files[Path(file).resolve()] = Path(file).resolve().relative_to(root).as_posix()
    return files


def files_entered_by_one_step(tmp_path: Path) -> set[str]:
    seen: set[str] = set()  # every code object's filename entered during the step
    trainer = GRPOTrainer(load_config("demo", [f"output_dir={tmp_path / 'run'}", *SMALL]))
    try:
        trainer.setup()

        def hook(frame, event, arg):
            if event == "call":
                seen.add(frame.f_code.co_filename)

        threading.setprofile(hook)  # threads started during the step (reward workers, decode pipeline)
        sys.setprofile(hook)
        try:
            trainer.step(1)
        finally:
            sys.setprofile(None)
            threading.setprofile(None)  # type: ignore[arg-type]
    finally:
        trainer.cleanup()
    ours = package_files()
    return {ours[p] for p in map(lambda name: Path(name).resolve(), seen) if p in ours}


def test_the_list_is_read_from_its_section_only():
    page = f"x\n- `a.py`\n{SECTION}\n\n1. `rl/b.py` — text `rl/c.py`\n- `d.py` x\n  `e.py`\n## Next\n- `f.py`"
    assert listed_files(page) == ["rl/b.py", "d.py"]


def test_architecture_page_lists_the_files_one_step_enters(tmp_path):
    listed = listed_files(PAGE.read_text(encoding="utf-8"))
    assert len(listed) == len(set(listed)), f"{PAGE.name} lists a file twice: {listed}"
    entered = files_entered_by_one_step(tmp_path)
    missing, extra = sorted(entered - set(listed)), sorted(set(listed) - entered)
    assert not missing and not extra, (
        f"{PAGE.name}, section {SECTION[3:]!r}, is out of date.\n"
        f"  entered by one step but not listed: {missing}\n"
        f"  listed but not entered:             {extra}\n"
        "Update the list (one item per file, what it does in the step); the files one step enters now are:\n"
        + "\n".join(f"- `{f}`" for f in sorted(entered))
    )
