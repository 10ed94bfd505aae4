"""The project's exception tree: every error a user can cause derives from DefenseSearchError."""

from __future__ import annotations


class DefenseSearchError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(DefenseSearchError, ValueError):
    """A configuration value is invalid; the message names the value and what is allowed."""


class DataError(DefenseSearchError):
    """A data set cannot be loaded (missing files, malformed contents)."""


class ModelFileError(DefenseSearchError):
    """A saved defended model cannot be loaded (missing, unreadable, or not one of ours)."""


class TrialFailedError(DefenseSearchError):
    """A trial cannot go on, for a reason that would come back on a retry (it diverged, its
    recipe trains nothing): a search records it as failed and does not retry it."""
