"""Exceptions that carry a user-facing message: the CLI prints them as one line and exits 2."""

from __future__ import annotations


class MuonftError(Exception):
    """Base class for errors caused by user input or missing resources (not bugs)."""


class DataMissingError(MuonftError):
    """A corpus, model or tokenizer is not in the cache; the message names the fetch command."""


class ChecksumError(MuonftError):
    """A downloaded or cached file does not have the expected sha256."""


class CheckpointError(MuonftError):
    """A checkpoint is missing, truncated, corrupt or does not match the run it should resume."""


class ConfigError(MuonftError, ValueError):
    """A spec or config value is invalid; the message names the field and the allowed values."""


class StoreError(MuonftError):
    """The results store is damaged; the message names the file and how to rebuild it."""
