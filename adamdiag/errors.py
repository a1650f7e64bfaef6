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


def remote_location(path: object) -> str | None:
    """``path`` as the URL it was typed as when it names a remote location (``gs://``, ``s3://``,
    ``hdfs://`` — a Path makes ``gs://b`` into ``gs:/b``), else None.

    >>> remote_location("gs:/bucket/logs"), remote_location("runs/x"), remote_location("C:/runs")
    ('gs://bucket/logs', None, None)
    """
    import re

    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):/+(.*)$", str(path))
    if m and len(m.group(1)) > 1:  # (a one-letter scheme would be a Windows drive)
        return f"{m.group(1)}://{m.group(2)}"
    return None


def missing_path(path: object, what: str = "", missing: str = "no such file or directory") -> InputError:
    """The error for a path that does not exist; a remote location says that only local files are read,
    and what to do.

    >>> str(missing_path("gs:/bucket/logs"))
    'gs://bucket/logs: a remote location; adamdiag reads local files only: copy the logs or checkpoints here first (e.g. gsutil -m cp -r, aws s3 sync)'
    >>> str(missing_path("runs/x", "--logdir"))
    '--logdir runs/x: no such file or directory'
    """
    url = remote_location(path)
    if url is not None:
        return InputError(
            f"{url}: a remote location; adamdiag reads local files only: copy the logs or checkpoints here first "
            "(e.g. gsutil -m cp -r, aws s3 sync)"
        )
    link = _broken_link(path)
    return InputError(f"{what + ' ' if what else ''}{path}: {link or missing}")


def _broken_link(path: object) -> str | None:
    """What is wrong with ``path`` when it is a symbolic link that leads nowhere — a loop, or a target
    that does not exist — so "no such file" does not send the user looking for a missing file that
    ``ls`` shows them. None when it is no symbolic link."""
    import errno
    import os

    p = os.fspath(path) if isinstance(path, str | os.PathLike) else str(path)
    if not os.path.islink(p):
        return None
    try:
        os.stat(p)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link loop (never resolves to a file)"
    try:
        target = os.readlink(p)
    except OSError:
        return "a broken symbolic link"
    return f"a symbolic link to {target}, which does not exist"
