"""Errors of loading a policy from a model folder."""

from __future__ import annotations


class ModelFolderError(ValueError):
    """A model folder that cannot be loaded as a policy: missing or unreadable files, weights that do not
    match the config or are not finite. The message names the folder or file (the command line prints it
    as one ``error: ...`` line, exit status 2)."""
