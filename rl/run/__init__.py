"""A run's lifecycle: its folder, checkpoints and resume, signals, guards, logging and progress."""
