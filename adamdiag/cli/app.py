"""The typer app, the exit-code contract and ``main``.

Exit codes: 0 clean, 1 findings at/above ``--fail-on`` (check) or a failed replay variant verdict,
2 usage/input error or internal failure (one line on stderr, never a bare traceback).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

from adamdiag.console import err

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Explain why an Adam/AdamW training run blew up (v collapse vs its look-alikes).",
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., object])


def guarded(fn: F) -> F:
    """Map exceptions to exit codes: InputError -> 2 with its message; anything else -> 2 with a
    one-line 'internal error' (set ADAMDIAG_DEBUG=1 for the traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from adamdiag.errors import InputError

        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except InputError as e:
            err(f"adamdiag: error: {e}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err("adamdiag: interrupted")
            raise typer.Exit(130) from None
        except Exception as e:  # noqa: BLE001 - last line of defence: never a bare traceback
            if os.environ.get("ADAMDIAG_DEBUG"):
                raise
            err(f"adamdiag: internal error: {type(e).__name__}: {e} (set ADAMDIAG_DEBUG=1 for details)")
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def emit(text: str) -> None:
    """Write a rendered result to stdout, newline-terminated."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


# The command modules register themselves on ``app`` in this order (the order of ``--help``); they
# import ``app`` from here, so they are imported after it exists.
from adamdiag.cli import scan  # noqa: E402, F401, I001
from adamdiag.cli import inspect  # noqa: E402, F401
from adamdiag.cli import tags  # noqa: E402, F401
from adamdiag.cli import replay  # noqa: E402, F401
from adamdiag.cli import plot  # noqa: E402, F401


@app.command()
def version() -> None:
    """Print the version."""
    from adamdiag import __version__

    emit(__version__)


def main() -> None:
    app()
