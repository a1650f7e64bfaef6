"""Text that can be written anywhere: a terminal, JSON, JUnit XML, HTML, a pandas string column.

A file name that is not valid UTF-8 reaches Python as a str holding lone surrogates (``os.fsdecode``'s
surrogateescape); those cannot be encoded as UTF-8, so any writer of that text fails. Paths are kept as
they are for opening files; what adamdiag *reports* goes through :func:`printable` first.
"""

from __future__ import annotations


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (False for a name with an undecodable byte).

    >>> is_utf8("ok"), is_utf8(b"run_\\xff".decode("utf-8", "surrogateescape"))
    (True, False)
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """``text`` with each undecodable byte as a ``\\xNN`` escape (unchanged when it is valid UTF-8).

    >>> printable(b"run_\\xff".decode("utf-8", "surrogateescape"))
    'run_\\\\xff'
    >>> printable("ok")
    'ok'
    """
    if is_utf8(text):
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
