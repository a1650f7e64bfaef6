"""Option types and choices shared by several commands."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from adamdiag.io.checkpoints.hyper import Assumptions


class Format(str, Enum):
    text = "text"
    json = "json"
    markdown = "markdown"
    junit = "junit"
    github = "github"


class TableFormat(str, Enum):
    text = "text"
    json = "json"
    csv = "csv"


class FailOn(str, Enum):
    error = "error"
    warning = "warning"
    info = "info"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class ReplayMode(str, Enum):
    auto = "auto"
    batched = "batched"
    sequential = "sequential"


class Convention(str, Enum):
    auto = "auto"
    torch = "torch"
    tf = "tf"


def convention_value(c: Convention) -> str | None:
    """None for auto (each checkpoint says its own), else the forced convention."""
    return None if c is Convention.auto else c.value


RunsArg = Annotated[
    list[Path],
    typer.Argument(
        help="Run directories (searched recursively) or event files; also a framework's own log: trainer_state.json, "
        "metrics.csv, run-ID.wandb, mlflow.db (or one of its runs as scan names it), an MLflow run folder."
    ),
]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]
TableFormatOpt = Annotated[TableFormat, typer.Option("--format", "-f", help="Output format (csv: one flat table).")]
CheckpointsOpt = Annotated[
    Path | None, typer.Option("--checkpoints", help="Directory with optimizer checkpoints (default: under each run).")
]
ConventionOpt = Annotated[
    Convention, typer.Option("--convention", help="Adam convention: torch (eps on bias-corrected sqrt(v̂)) or tf.")
]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-checkpoint", help="Allow checkpoints that need arbitrary unpickling (runs code from the file!)."
    ),
]

# Values for hyperparameters a checkpoint does not store (adamdiag.io.checkpoints.hyper: a stored value
# always wins; the output says which values were assumed).
AssumeLrOpt = Annotated[
    float | None,
    typer.Option("--assume-lr", help="lr to use where a checkpoint does not store it (marked 'user')."),
]
AssumeBeta2Opt = Annotated[
    float | None,
    typer.Option(
        "--assume-beta2",
        help="beta2 to use where a checkpoint does not store it (marked 'user'), and for a run scanned without "
        "checkpoints (instead of what its writer logged, or the default).",
    ),
]
AssumeEpsOpt = Annotated[
    float | None,
    typer.Option(
        "--assume-eps",
        help="eps to use where a checkpoint does not store it (marked 'user'), and for a run scanned without "
        "checkpoints (instead of what its writer logged, or the default).",
    ),
]

JobsOpt = Annotated[
    int | None,
    typer.Option(
        "--jobs",
        "-j",
        min=1,
        help="Tensors (and shards) of a checkpoint read in parallel; default min(4, CPUs). Results do not depend on it.",
    ),
]


def _usage_error(ctx: typer.Context, message: str) -> Exception:
    from typer import _click as click  # typer vendors click: its UsageError is the one-line usage error (exit 2)

    return click.exceptions.UsageError(message, ctx)


def positive_number(ctx: typer.Context, param: typer.CallbackParam, value: float | None) -> float | None:
    """Option callback: a positive finite number (``--grad-clip``), checked when the command line is parsed
    — before any file is read, and also when the option is unused by the rest of the command line."""
    if value is not None and not ctx.resilient_parsing and not (math.isfinite(value) and value > 0):
        raise _usage_error(ctx, f"{param.opts[0]} must be a positive number, got {value}")
    return value


def positive_seconds(ctx: typer.Context, param: typer.CallbackParam, value: float | None) -> float | None:
    """Option callback: a time budget in seconds (``--verify-budget``): positive; ``inf`` is accepted
    and means no limit, as leaving the option out does. Checked when the command line is parsed, so a
    bad value fails whether or not the option that uses it (``--verify``) is given."""
    if value is not None and not ctx.resilient_parsing and not value > 0:  # nan fails `> 0` too
        raise _usage_error(ctx, f"{param.opts[0]} must be a positive number of seconds, got {value}")
    return value


def step_offset(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    """Option callback: ``auto`` or an integer that fits the int64 steps of an event file
    (``--log-step-offset``; a larger one overflowed the step arithmetic: an internal error)."""
    if value is None or ctx.resilient_parsing or str(value).strip().lower() == "auto":
        return value
    try:
        off = int(str(value).strip())
    except ValueError:
        raise _usage_error(ctx, f"{param.opts[0]} must be auto or an integer, got {value!r}") from None
    if not -(2**63) < off < 2**63:
        raise _usage_error(ctx, f"{param.opts[0]} must be auto or an integer of at most 63 bits, got {value!r}")
    return value


def assumptions(lr: float | None, beta2: float | None, eps: float | None) -> Assumptions | None:
    """The --assume-* values, checked (InputError: exit 2); None when none was given."""
    from adamdiag.io.checkpoints.hyper import Assumptions

    if lr is None and beta2 is None and eps is None:
        return None
    return Assumptions(lr=lr, beta2=beta2, eps=eps).validate()
