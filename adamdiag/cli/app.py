"""The typer app, the exit-code contract and ``main``.

Exit codes: 0 clean, 1 findings at/above ``--fail-on`` (check) or a failed replay variant verdict,
2 usage/input error or internal failure (one line on stderr, never a bare traceback).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from typer import _click as click  # typer >= 0.2x vendors click: its exceptions and classes live here
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from adamdiag.console import err

HELP = "Explain why an Adam/AdamW training run blew up (v collapse vs its look-alikes)."


def _tidy_param(p: click.Parameter) -> None:
    """Help that reads like click/ruff: ``RUN...`` instead of ``{runs}... <list[Path]>``, no
    ``<bool>`` after a flag, ``<str>`` instead of ``<list[str]>`` on a repeatable option."""
    if isinstance(p, TyperArgument):
        name = (p.metavar or (p.name or "arg").upper()).rstrip(".")
        if p.nargs != 1 and p.metavar is None and name.endswith("S"):
            name = name[:-1]  # RUNS -> RUN...
        shown = name + ("..." if p.nargs != 1 else "")
        usage = shown if p.required else f"[{shown}]"
        p.metavar = shown
        # typer draws these two from methods: replaced on the instance (setattr: not part of click's API)
        setattr(p, "_usage_display_name", lambda: usage)  # noqa: B010
        setattr(p, "display_type_rich", lambda ctx: None)  # noqa: B010
    elif p.param_type_name == "option":
        if getattr(p, "is_flag", False) or getattr(p, "count", False):
            setattr(p, "display_type_rich", lambda ctx: None)  # noqa: B010
        elif p.metavar is None and isinstance(p, TyperOption):
            shown = p.display_type(click.globals.get_current_context(silent=True))  # type: ignore[arg-type]
            if shown.startswith("<list[") and shown.endswith("]>"):
                shown = "<" + shown[len("<list[") : -2] + ">"
            setattr(p, "display_type_rich", lambda ctx, s=shown: s)  # noqa: B010


def _common_params() -> list[click.Parameter]:
    """``-q`` and ``-v`` on every command (handled by :class:`Command`, never seen by the command
    function). Built by typer itself from a signature, so help renders them like any option."""

    def _flags(
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No warnings or progress on stderr.")] = False,
        verbose: Annotated[
            bool, typer.Option("--verbose", "-v", help="Say which config file was used (on stderr).")
        ] = False,
    ) -> None: ...

    tmp = typer.Typer(add_completion=False)
    tmp.command()(_flags)
    return list(typer.main.get_command(tmp).params)


class Command(TyperCommand):
    """Every adamdiag command: tidy help, ``-q``/``-v``, ``-h``."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not any(p.name == "quiet" for p in self.params):
            self.params.extend(_common_params())
        params = super().get_params(ctx)
        for p in params:
            _tidy_param(p)
        return params

    def invoke(self, ctx: click.Context) -> Any:
        from adamdiag import console

        # -q for this command only: a library caller (or the next test) in the same process gets its
        # notices again afterwards
        before = console.QUIET
        console.QUIET = bool(ctx.params.pop("quiet", False))
        try:
            verbose = bool(ctx.params.pop("verbose", False))
            if verbose:
                used = ctx.meta.get("adamdiag.config")
                err(f"adamdiag: config: {used}" if used else "adamdiag: config: none (built-in defaults)")
            return super().invoke(ctx)
        finally:
            console.QUIET = before


class Group(TyperGroup):
    """The app: one-line usage errors (``adamdiag: error: ...``, exit 2), config defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for cmd in self.commands.values():
            if type(cmd) is TyperCommand:
                cmd.__class__ = Command  # same object, the class above adds only behaviour

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        for p in params:
            _tidy_param(p)
        return params

    _config_origins: tuple[str, dict[tuple[str, str], str]] | None = None  # file, (command, param) -> "[scan] key"

    def _from_config(self, e: click.exceptions.UsageError) -> str | None:
        """``FILE [section] key = value`` when ``e`` is a bad value that came from the config file, else None."""
        param, ctx = getattr(e, "param", None), e.ctx
        if self._config_origins is None or param is None or param.name is None or ctx is None:
            return None
        # by name: typer may carry its own copy of click, whose ParameterSource is another enum
        if getattr(ctx.get_parameter_source(param.name), "name", None) != "DEFAULT_MAP":
            return None
        path, origins = self._config_origins
        key = origins.get((ctx.info_name or "", param.name))
        value = (ctx.default_map or {}).get(param.name)
        return f"{path} {key} = {value!r}" if key else None

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any):
        if "default_map" not in extra and not os.environ.get("_ADAMDIAG_COMPLETE"):
            from adamdiag.cli.config import default_map, find_config

            found = find_config()
            if found is not None:
                params = {
                    name: {p.name: p for p in cmd.params if p.param_type_name == "option" and p.name}
                    for name, cmd in self.commands.items()
                }
                origins: dict[tuple[str, str], str] = {}
                extra["default_map"] = default_map(found[0], found[1], params, origins)
                self._config_origins = (str(found[0]), origins)
            ctx = super().make_context(info_name, args, parent=parent, **extra)
            ctx.meta["adamdiag.config"] = str(found[0]) if found else None
            return ctx
        return super().make_context(info_name, args, parent=parent, **extra)

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        from adamdiag.console import tolerant_streams
        from adamdiag.errors import InputError

        tolerant_streams()  # an ASCII console gets stand-ins for — √ →, not UnicodeEncodeError and no report
        extra["windows_expand_args"] = windows_expand_args
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name or "adamdiag", complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:
            e.show()
            sys.exit(2)
        except click.exceptions.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "adamdiag"
            msg = " ".join(e.format_message().split()).replace("Value error, ", "")  # one line
            from_config = self._from_config(e)
            if from_config is not None:  # the user typed no such option: name the file and key instead
                err(f"adamdiag: error: {from_config}: {' '.join(e.message.split()).replace('Value error, ', '')}")
                sys.exit(2)
            err(f"adamdiag: error: {msg} (see '{where} -h')")
            sys.exit(2)
        except InputError as e:  # a bad config file, found before any command runs
            err(f"adamdiag: error: {e}")
            sys.exit(2)
        except click.exceptions.ClickException as e:
            err(f"adamdiag: error: {' '.join(e.format_message().split())}")
            sys.exit(e.exit_code)
        except typer.Abort:
            err("adamdiag: aborted")
            sys.exit(1)
        except Exception as e:  # noqa: BLE001 - outside any command (config, help): still one line
            if os.environ.get("ADAMDIAG_DEBUG"):
                raise
            err(f"adamdiag: internal error: {type(e).__name__}: {e} (set ADAMDIAG_DEBUG=1 for details)")
            sys.exit(2)
        sys.exit(rv if isinstance(rv, int) else 0)


def _version(value: bool) -> None:
    if value:
        from adamdiag import __version__

        sys.stdout.write(f"adamdiag {__version__}\n")
        raise typer.Exit(0)


app = typer.Typer(
    cls=Group,
    name="adamdiag",
    add_completion=True,
    no_args_is_help=True,
    help=HELP,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # help paragraphs reflow (docstrings wrap at 120 in the source)
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", help="Print the version and exit.", is_eager=True, callback=_version),
    ] = False,
) -> None:
    pass


F = TypeVar("F", bound=Callable[..., object])


# 128 + SIGPIPE: what a shell reports for a pipe stage whose reader closed the pipe
SIGPIPE_EXIT = 141


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
        except BrokenPipeError:
            # the reader went away (`adamdiag export RUN -o - | head`): stop quietly, as a pipe stage does.
            # stdout is pointed at /dev/null first, so the interpreter's final flush cannot fail again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(SIGPIPE_EXIT) from None
        except Exception as e:  # noqa: BLE001 - last line of defence: never a bare traceback
            if os.environ.get("ADAMDIAG_DEBUG"):
                raise
            err(f"adamdiag: internal error: {type(e).__name__}: {e} (set ADAMDIAG_DEBUG=1 for details)")
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def emit(text: str) -> None:
    """Write a rendered result to stdout, newline-terminated."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def publish(result: Any, fmt: str, *, fail_on: str = "error") -> None:
    """Render a scan/check report to stdout; under GitHub Actions (``$GITHUB_STEP_SUMMARY`` set)
    also append its Markdown to the job summary page."""
    from adamdiag.render import render

    emit(render(result, fmt, fail_on=fail_on))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            with open(summary, "a", encoding="utf-8") as f:
                f.write(render(result, "markdown") + "\n")
        except OSError as e:
            from adamdiag.console import warn

            warn(f"cannot append to $GITHUB_STEP_SUMMARY ({summary}): {e.strerror or e}")


# The command modules register themselves on ``app`` in this order (the order of ``--help``); they
# import ``app`` from here, so they are imported after it exists.
from adamdiag.cli import scan  # noqa: E402, F401, I001
from adamdiag.cli import inspect  # noqa: E402, F401
from adamdiag.cli import tags  # noqa: E402, F401
from adamdiag.cli import replay  # noqa: E402, F401
from adamdiag.cli import plot  # noqa: E402, F401
from adamdiag.cli import report  # noqa: E402, F401


@app.command(hidden=True)
def version() -> None:
    """Print the version (same as --version)."""
    from adamdiag import __version__

    emit(__version__)


def main() -> None:
    app(prog_name="adamdiag")
