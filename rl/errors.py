"""Expected failures of a run: the command line prints them as one ``error: ...`` line (exit status 2).

Anything else that escapes is a bug and keeps its traceback. `ConfigError` (rl/config.py),
`PromptFileError` (rl/data.py) and `registry.ComponentError` are expected failures too.
"""

from __future__ import annotations


class RunError(RuntimeError):
    """A run cannot start or go on, for a reason the user can fix; the message says how."""


class RunDirError(RunError):
    """The output folder is owned by another run, or holds a run that would be replaced."""


class CheckpointError(RunError):
    """A checkpoint is missing, corrupt, or could not be written; the message names the file."""


class ResumeError(RunError):
    """``--resume`` would not continue the same run (a changed config, nothing left to train)."""


class NothingLearnedError(RunError):
    """Every sample's reward failed for too many steps in a row."""


class TrainingStopped(RunError):
    """SIGINT / SIGTERM: the current step finished and a checkpoint was saved."""

    def __init__(self, signal_name: str, signal_number: int, step: int, checkpoint: object):
        self.signal_name, self.signal_number, self.step, self.checkpoint = signal_name, signal_number, step, checkpoint
        super().__init__(f"stopped by {signal_name} after step {step}; checkpoint saved: {checkpoint} "
                         "(continue with the same command and --resume)")


class EngineDisagreementError(RunError):
    """The rollout engine's log-probs disagree with the trainer's beyond the configured bound, or a weight
    push did not take effect (`rl/rollout/agreement.py`, `rl/rollout/sync_probe.py`)."""
