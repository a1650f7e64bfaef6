"""``scan`` and ``check``: event files (+ checkpoints) → :class:`Report` → a renderer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adamdiag.cli.app import app, emit, guarded
from adamdiag.cli.options import (
    CheckpointsOpt,
    Convention,
    ConventionOpt,
    FailOn,
    Format,
    FormatOpt,
    RunsArg,
    TrustOpt,
    convention_value,
)


def diagnose_paths(runs: list[Path], checkpoints: Path | None, convention: Convention, trust: bool):
    from adamdiag.pipeline.scan import scan_paths

    return scan_paths(runs, checkpoints=checkpoints, convention=convention_value(convention), trust_checkpoint=trust)


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

    report = diagnose_paths(runs, checkpoints, convention, trust_checkpoint)
    emit(render(report, format.value))


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
    from adamdiag.results.report import SEVERITY_RANK

    report = diagnose_paths(runs, checkpoints, convention, trust_checkpoint)
    emit(render(report, format.value))
    threshold = SEVERITY_RANK[fail_on.value]
    failing = [f for r in report.runs for f in r.findings if SEVERITY_RANK[f.severity] >= threshold]
    if failing:
        raise typer.Exit(1)
