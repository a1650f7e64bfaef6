"""The progress bar used by commands: on stderr, only when stderr is a terminal, gone when done."""

from __future__ import annotations

import sys
from typing import Any


def stderr_progress() -> Any:
    """A rich ``Progress`` (description, bar, done/total, elapsed) drawn on stderr; disabled when
    stderr is not a terminal, so pipes and CI logs stay clean. rich is imported here, lazily."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not sys.stderr.isatty(),
    )
