"""The one stderr console and the one progress bar of every command.

Data goes to stdout; messages, warnings and progress go to stderr, coloured only when stderr is a
terminal and NO_COLOR is unset, so pipes and CI logs stay clean. rich is imported lazily.
"""

from __future__ import annotations

import os
import sys
from typing import Any

# What the reports print beyond ASCII, as an ASCII console shows it (PYTHONIOENCODING=ascii, some CI and
# Windows consoles): an unencodable character would otherwise end the command in UnicodeEncodeError and
# lose the whole report. Anything else unencodable becomes "?".
_ASCII = {
    "—": "-", "–": "-", "−": "-", "√": "sqrt ", "→": "->", "←": "<-", "×": "x", "…": "...", "≤": "<=", "≥": ">=",
    "≈": "~", "·": "*", "²": "^2", "\u0302": "^", "β": "beta", "ε": "eps", "η": "eta", "μ": "mu", "σ": "sigma",
    "“": '"', "”": '"', "‘": "'", "’": "'", "✓": "ok", "✗": "x", "•": "*", "±": "+/-",
}  # fmt: skip
_BOX = {"─": "-", "━": "-", "│": "|", "┃": "|", "═": "=", "║": "|"}


def _ascii_fallback(e: UnicodeError) -> tuple[str, int]:
    """codecs error handler "adamdiag-ascii": each unencodable character as its ASCII stand-in."""
    if not isinstance(e, UnicodeEncodeError):
        raise e
    out = []
    for ch in e.object[e.start : e.end]:
        stand_in = _ASCII.get(ch) or _BOX.get(ch)
        if stand_in is None and "\u2500" <= ch <= "\u257f":  # other box drawing: corners and joints
            stand_in = "+"
        out.append(stand_in if stand_in is not None else "?")
    return "".join(out), e.end


def tolerant_streams() -> None:
    """Let stdout and stderr print what their encoding cannot (an ASCII console): ASCII stand-ins for the
    characters the reports use (— √ → box drawing), "?" for the rest, instead of UnicodeEncodeError."""
    import codecs

    try:
        codecs.lookup_error("adamdiag-ascii")
    except LookupError:
        codecs.register_error("adamdiag-ascii", _ascii_fallback)
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("_", "-")
        if encoding.startswith("utf") or not hasattr(stream, "reconfigure"):
            continue  # UTF-8/16/32 encode everything; a stream that cannot be reconfigured is left as is
        try:
            stream.reconfigure(errors="adamdiag-ascii")
        except (ValueError, OSError):  # closed or detached: nothing will print there anyway
            pass


def stderr_console() -> Any:
    """A rich ``Console`` on stderr: soft-wrapped (one message = one line), no markup highlighting."""
    from rich.console import Console

    return Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), highlight=False, soft_wrap=True)


def err(message: str) -> None:
    """Print one message line on stderr (markup off: paths with brackets print as they are)."""
    stderr_console().print(message, markup=False)


# The text report's width: a terminal's own width (or COLUMNS), never under TEXT_MIN_WIDTH; output that
# goes to a pipe or a file is TEXT_PIPE_WIDTH wide whatever terminal it was run from, so saved reports,
# diffs and tests see the same text.
TEXT_PIPE_WIDTH = 110
TEXT_MIN_WIDTH = 72


def stdout_width() -> int:
    """Columns for text on stdout: ``COLUMNS`` when it is set to a number (as rich and the shell tools
    read it), else the terminal's width when stdout is a terminal, else ``TEXT_PIPE_WIDTH``; at least
    ``TEXT_MIN_WIDTH`` (a narrower table folds every cell)."""
    cols = os.environ.get("COLUMNS", "").strip()
    if cols.isdigit() and int(cols) > 0:
        width = int(cols)
    else:
        try:
            width = os.get_terminal_size(sys.stdout.fileno()).columns if sys.stdout.isatty() else TEXT_PIPE_WIDTH
        except (OSError, ValueError, AttributeError):  # no real file behind stdout (captured, closed)
            width = TEXT_PIPE_WIDTH
    return max(TEXT_MIN_WIDTH, width)


# ``--quiet``: no warnings and no progress (errors are still printed). Set by the CLI per command.
QUIET = False


def warn(message: str) -> None:
    """One warning line on stderr: ``adamdiag: warning: <message>`` (nothing with ``--quiet``)."""
    if not QUIET:
        err(f"adamdiag: warning: {message}")


def warn_all(messages: list[str], *, limit: int = 20) -> None:
    """Warnings on stderr, each kind once: messages that differ only in paths and numbers (the same
    problem in 2000 runs) become the first of them with "(× N alike)"; at most ``limit`` lines."""
    import re
    from collections import Counter

    def template(m: str) -> str:
        return re.sub(r"\d+", "#", re.sub(r"\S*/\S*", "<path>", m))

    counts = Counter(template(m) for m in messages)
    first: dict[str, str] = {}
    for m in messages:
        first.setdefault(template(m), m)
    shown = 0
    for t, n in counts.items():
        if shown == limit:
            warn(f"{len(counts) - limit} more kinds of warning (of {len(messages)} warnings in all)")
            break
        warn(first[t] if n == 1 else f"{first[t]} (× {n} alike)")
        shown += 1


def info(message: str) -> None:
    """A progress note on stderr ("wrote x.png"); nothing with ``--quiet``."""
    if not QUIET:
        err(message)


def progress_shown() -> bool:
    """Whether progress is drawn: stderr is a terminal, no ``--quiet``, and not under CI (``CI=true``:
    GitHub Actions, GitLab and most runners set it; some give the job a pseudo-terminal, whose log would
    fill with redraws)."""
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return not QUIET and not ci and sys.stderr.isatty()


def stderr_progress() -> Any:
    """A rich ``Progress`` (description, bar, done/total, elapsed) drawn on stderr; disabled unless
    :func:`progress_shown`. Transient: gone when done."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),  # "3/40" runs; "3/?" while the total is not known yet (never "0/None")
        TimeElapsedColumn(),
        console=stderr_console(),
        transient=True,
        disable=not progress_shown(),
    )
