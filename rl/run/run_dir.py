"""A run folder owns its run: one owner at a time, never silently replaced, archived instead of deleted.

- `RunLock`: ``<output_dir>/.lock`` holds the owner's PID, host and process start time. A second run
  is refused while the owner lives; a lock whose process is gone (same host) is stale and taken over.
- `claim_run_dir`: a new run refuses a folder that already holds files unless ``overwrite``, which
  moves them to a sibling ``<name>.old-<time>`` folder (nothing is deleted).
- `archive_after`: resuming from an older checkpoint (a rollback) moves the newer checkpoints and the
  metric rows after it to ``<output_dir>/archive/``, so pruning never touches them.
- `claim_output_folder`: the same rule for the ``--out`` folders of ``generate`` / ``eval``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

from ..errors import RunDirError
from .checkpoint import LATEST, checkpoints, step_of

LOCK = ".lock"


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), to tell a reused PID apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22 (starttime), counted after the command name


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    now = _process_start(pid)
    return start is None or now is None or now == start


class RunLock:
    """``<folder>/.lock``, created exclusively; `release` removes it if it is still ours."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self.held = False

    def owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner()
                if owner is None:  # being written by a starting run, or torn: look again shortly
                    time.sleep(0.2)
                    owner = self.owner()
                    if owner is None:
                        self.path.unlink(missing_ok=True)
                        continue
                if owner.get("host") != me["host"]:
                    raise RunDirError(
                        f"{self.path.parent} is in use by PID {owner.get('pid')} on host {owner.get('host')} "
                        f"(since {owner.get('since')}); if no run is using it, delete {self.path}") from None
                if _alive(int(owner.get("pid", -1)), owner.get("start")):
                    raise RunDirError(
                        f"{self.path.parent} is in use by another run (PID {owner.get('pid')}, since "
                        f"{owner.get('since')}): wait for it to finish, or choose another output_dir") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone (killed); take over
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise RunDirError(f"cannot lock {self.path.parent}: {self.path} keeps reappearing")

    def release(self) -> None:
        if self.held and (self.owner() or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False


def _contents(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name != LOCK) if folder.is_dir() else []


def _archive_folder(folder: Path) -> Path:
    dest = folder.with_name(f"{folder.name}.old-{_stamp()}")
    n = 1
    while dest.exists():
        n += 1
        dest = folder.with_name(f"{folder.name}.old-{_stamp()}-{n}")
    return dest


def claim_run_dir(folder: Path, *, resume: bool, overwrite: bool) -> tuple[RunLock, Path | None]:
    """Lock ``folder`` for this run; ``(lock, archive)`` where ``archive`` holds a replaced run's files.

    A new run (not ``resume``) refuses a folder with files in it unless ``overwrite``.
    """
    if resume and overwrite:
        raise RunDirError("--resume continues the run in output_dir and --overwrite replaces it: give one")
    folder.mkdir(parents=True, exist_ok=True)
    lock = RunLock(folder)
    lock.acquire()
    archive = None
    try:
        existing = _contents(folder)
        if existing and not resume:
            if not overwrite:
                names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in existing[:5])
                more = f" and {len(existing) - 5} more" if len(existing) > 5 else ""
                raise RunDirError(
                    f"output_dir {folder} already holds a run ({names}{more}): pass --resume to continue it, "
                    f"--overwrite to move it aside to {folder.name}.old-<time>, or choose another output_dir")
            if Path.cwd().resolve().is_relative_to(folder.resolve()):
                raise RunDirError(f"--overwrite: the working directory is inside {folder}; run from elsewhere")
            archive = _archive_folder(folder)
            archive.mkdir()
            for p in existing:
                os.replace(p, archive / p.name)
    except BaseException:
        lock.release()
        raise
    return lock, archive


def archive_after(folder: Path, step: int, metrics_file: str) -> Path | None:
    """Before a rollback to ``step``: move newer checkpoints and later metric rows to ``folder/archive/``.

    Returns the archive folder, or None when nothing comes after ``step`` (the usual resume).
    """
    root = folder / "checkpoints"
    newer = [p for p in checkpoints(root) if (step_of(p) or 0) > step]
    if not newer:
        return None
    dest = folder / "archive" / f"after_step_{step:06d}-{_stamp()}"
    (dest / "checkpoints").mkdir(parents=True)
    for p in newer:
        os.replace(p, dest / "checkpoints" / p.name)
    metrics = folder / metrics_file
    if metrics.is_file():
        shutil.copy2(metrics, dest / metrics_file)  # the full file; the resumed run keeps rows <= step
    (root / LATEST).write_text(f"step_{step:06d}")
    return dest


def claim_output_folder(folder: str | Path, *, overwrite: bool, option: str = "--out") -> Path | None:
    """Check before any work that ``folder`` can be written and is empty; ``overwrite`` moves old files
    aside (returned). Raises `RunDirError` naming the option."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunDirError(f"{option} {folder} is a file, not a folder")
    archive = None
    if _contents(folder):
        if not overwrite:
            raise RunDirError(f"{option} {folder} is not empty: choose a new folder, or pass --overwrite "
                              f"(moves its files to {folder.name}.old-<time>)")
        if Path.cwd().resolve().is_relative_to(folder.resolve()):
            raise RunDirError(f"--overwrite: the working directory is inside {option} {folder}")
        archive = _archive_folder(folder)
        os.replace(folder, archive)
    _check_writable(folder, option)
    return archive


def _check_writable(path: Path, option: str) -> None:
    """``path`` (or, where it does not exist yet, its nearest existing parent) is a writable folder.
    Creates nothing, so a command that fails later leaves no empty folder behind."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise RunDirError(f"{option} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunDirError(f"{option} {path} is not writable ({probe} is read-only to this user)")


def claim_output_file(path: str | Path, *, overwrite: bool, option: str = "--out") -> None:
    """An output file: refuse an existing one unless ``overwrite``; check its folder is writable."""
    path = Path(path)
    if path.is_dir():
        raise RunDirError(f"{option} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise RunDirError(f"{option} {path} exists: choose a new file, or pass --overwrite to replace it")
    _check_writable(path.parent, option)
