"""SIGINT / SIGTERM during training: finish the current step, save, stop; a second signal stops at once.

SLURM sends SIGTERM before killing a job (``--signal=TERM@120`` sends it 120 s before the time
limit; see docs/run-safety.md), and Ctrl-C sends SIGINT: both end a run with a checkpoint to ``--resume``.

    with StopSignals() as stop:
        for step in ...:
            ...
            if stop.received:
                save and raise TrainingStopped(...)

Handlers are installed only in the main thread (elsewhere this does nothing) and restored on exit.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager recording the first SIGINT / SIGTERM; the second raises `KeyboardInterrupt`."""

    def __init__(self, message: str = "finishing the current step, then saving a checkpoint"):
        self.message = message
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # the second one: stop now, without saving
            self._restore()
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopped at once, not saved")
        self.received = signum
        print(f"\nreceived {signal.Signals(signum).name}: {self.message} (send it again to stop at once)",
              file=sys.stderr, flush=True)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()
