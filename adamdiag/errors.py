"""Errors that the CLI turns into one clear line on stderr and exit code 2."""

from __future__ import annotations


class InputError(Exception):
    """Bad or unusable input (missing path, no event files, non-Adam checkpoint, ...).

    The message is shown to the user as-is, on one line, so it must say what was wrong and,
    where possible, what to do about it.
    """


class UntrustedCheckpointError(InputError):
    """The checkpoint needs arbitrary unpickling; only ``--trust-checkpoint`` may load it."""


class NotAdamError(InputError):
    """The checkpoint holds another optimizer's state (SGD, Adafactor, ...): not an input error for a
    scan (a finding, AD903), but nothing adamdiag can read Adam moments from."""
