"""Command-line interface: a thin typer app.

Each command parses options, calls the readers/analysis/renderers and maps errors to exit codes:
0 clean, 1 findings at/above ``--fail-on`` (check) or a failed replay variant verdict, 2 usage/input
error or internal failure (one line on stderr, never a bare traceback). Heavy imports (torch,
pandas, matplotlib) happen inside the commands so ``adamdiag --help`` stays instant.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, TypeVar

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Explain why an Adam/AdamW training run blew up (v collapse vs its look-alikes).",
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., object])


class Format(str, Enum):
    text = "text"
    json = "json"
    markdown = "markdown"
    junit = "junit"


class InspectFormat(str, Enum):
    text = "text"
    json = "json"
    csv = "csv"


class FailOn(str, Enum):
    error = "error"
    warning = "warning"
    info = "info"


class Convention(str, Enum):
    auto = "auto"
    torch = "torch"
    tf = "tf"


def err(message: str) -> None:
    """One line on stderr, coloured only when stderr is a TTY and NO_COLOR is unset."""
    from rich.console import Console

    Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), highlight=False, soft_wrap=True).print(
        message, markup=False
    )


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


RunsArg = Annotated[list[Path], typer.Argument(help="Run directories (searched recursively) or event files.")]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]
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


def _diagnose(runs: list[Path], checkpoints: Path | None, convention: Convention, trust: bool):
    from adamdiag.scan import scan_paths

    return scan_paths(
        runs,
        checkpoints=checkpoints,
        convention=None if convention is Convention.auto else convention.value,
        trust_checkpoint=trust,
    )


def _emit(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


@app.command()
@guarded
def scan(
    runs: RunsArg,
    format: FormatOpt = Format.text,
    checkpoints: CheckpointsOpt = None,
    convention: ConventionOpt = Convention.auto,
    trust_checkpoint: TrustOpt = False,
) -> None:
    """Diagnose one or many runs. Always exits 0 when the input could be read (use `check` to gate CI)."""
    from adamdiag.render import render

    report = _diagnose(runs, checkpoints, convention, trust_checkpoint)
    _emit(render(report, format.value))


@app.command()
@guarded
def check(
    runs: RunsArg,
    fail_on: Annotated[FailOn, typer.Option("--fail-on", help="Lowest severity that fails the check.")] = FailOn.error,
    format: FormatOpt = Format.text,
    checkpoints: CheckpointsOpt = None,
    convention: ConventionOpt = Convention.auto,
    trust_checkpoint: TrustOpt = False,
) -> None:
    """CI gate: exit 0 if healthy, 1 if any finding is at/above --fail-on, 2 on input errors."""
    from adamdiag.render import render
    from adamdiag.report import SEVERITY_RANK

    report = _diagnose(runs, checkpoints, convention, trust_checkpoint)
    _emit(render(report, format.value))
    threshold = SEVERITY_RANK[fail_on.value]
    failing = [f for r in report.runs for f in r.findings if SEVERITY_RANK[f.severity] >= threshold]
    if failing:
        raise typer.Exit(1)


@app.command()
@guarded
def inspect(
    checkpoints: Annotated[
        list[Path], typer.Argument(help="Checkpoint files or directories (one, or two of one run).")
    ],
    format: Annotated[InspectFormat, typer.Option("--format", "-f")] = InspectFormat.text,
    convention: ConventionOpt = Convention.auto,
    trust_checkpoint: TrustOpt = False,
) -> None:
    """Per-tensor Adam moment statistics of checkpoints, sorted by risk; decay ratios for two."""
    from adamdiag.inspect_cmd import run_inspect

    _emit(
        run_inspect(
            checkpoints,
            fmt=format.value,
            convention=None if convention is Convention.auto else convention.value,
            trust_checkpoint=trust_checkpoint,
        )
    )


@app.command()
@guarded
def tags(runs: RunsArg, format: Annotated[InspectFormat, typer.Option("--format", "-f")] = InspectFormat.text) -> None:
    """Tags of the event files: kind, count, step range, writer."""
    from adamdiag.io.tags_cmd import run_tags

    _emit(run_tags(runs, fmt=format.value))


@app.command()
@guarded
def export(
    runs: RunsArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="out.parquet or out.csv")],
    histograms: Annotated[bool, typer.Option("--histograms", help="Export the histogram frame instead.")] = False,
) -> None:
    """Write the long frame (run, tag, step, wall_time, value, segment, source_file) to parquet/csv."""
    from adamdiag.io.tags_cmd import run_export

    run_export(runs, output, histograms=histograms)


@app.command()
@guarded
def replay(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to start from (saved before the blowup).")],
    eps: Annotated[list[str] | None, typer.Option("--eps", help="Alternate eps (repeatable or comma list).")] = None,
    beta2: Annotated[list[str] | None, typer.Option("--beta2", help="Alternate beta2 (repeatable).")] = None,
    lr: Annotated[list[str] | None, typer.Option("--lr", help="Alternate lr (repeatable).")] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Steps to replay (default: to the blowup + margin).")
    ] = None,
    entry: Annotated[str | None, typer.Option("--entry", help="module:function or file.py:function.")] = None,
    logdir: Annotated[Path | None, typer.Option("--logdir", help="Run directory with the logged loss.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto|cpu|cuda")] = "auto",
    format: FormatOpt = Format.text,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the loss overlay PNG here.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Report variants even when fidelity fails.")] = False,
    trust_checkpoint: TrustOpt = False,
    loss_tag: Annotated[str, typer.Option("--loss-tag", help="Scalar tag of the logged training loss.")] = "train/loss",
    log_step_offset: Annotated[
        str,
        typer.Option(
            "--log-step-offset",
            help="The loss of update t is logged at step t+N; auto: -1 for Lightning checkpoints, else 0.",
        ),
    ] = "auto",
    mode: Annotated[
        str,
        typer.Option(
            "--mode", help="auto|batched|sequential: alternates in one vmap pass, or one by one with torch.optim.Adam."
        ),
    ] = "auto",
) -> None:
    """Counterfactual replay: re-run the suspect steps with the original and alternate eps/beta2/lr."""
    from adamdiag.replay.command import run_replay

    code = run_replay(
        checkpoint,
        eps=eps,
        beta2=beta2,
        lr=lr,
        steps=steps,
        entry=entry,
        logdir=logdir,
        device=device,
        fmt=format.value,
        plot=plot,
        force=force,
        trust_checkpoint=trust_checkpoint,
        loss_tag=loss_tag,
        mode=mode,
        log_offset=log_step_offset,
    )
    if code:
        raise typer.Exit(code)


@app.command()
@guarded
def plot(
    runs: RunsArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file (one run) or directory (many).")] = Path(
        "adamdiag.png"
    ),
    checkpoints: CheckpointsOpt = None,
    convention: ConventionOpt = Convention.auto,
) -> None:
    """Plot loss and gradient norm with the diagnosed warning and blowup steps (PNG per run)."""
    from adamdiag.render.plot import plot_runs

    report = _diagnose(runs, checkpoints, convention, False)
    for path in plot_runs(report, runs, output):
        err(f"wrote {path}")


@app.command()
def version() -> None:
    """Print the version."""
    from adamdiag import __version__

    _emit(__version__)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
