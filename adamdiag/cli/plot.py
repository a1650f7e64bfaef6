"""``plot``: the diagnosis of each run drawn as a PNG (loss, gradient norm, warning and blowup steps)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adamdiag.cli.app import app, guarded
from adamdiag.cli.options import CheckpointsOpt, Convention, ConventionOpt, RunsArg, TrustOpt
from adamdiag.cli.scan import diagnose_paths
from adamdiag.console import err


@app.command()
@guarded
def plot(
    runs: RunsArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file (one run) or directory (many).")] = Path(
        "adamdiag.png"
    ),
    checkpoints: CheckpointsOpt = None,
    convention: ConventionOpt = Convention.auto,
    trust_checkpoint: TrustOpt = False,
) -> None:
    """Plot loss and gradient norm with the diagnosed warning and blowup steps (PNG per run)."""
    from adamdiag.pipeline.scan import load_series
    from adamdiag.render.plot import plot_runs

    report = diagnose_paths(runs, checkpoints, convention, trust_checkpoint)
    for path in plot_runs(report, load_series, output):
        err(f"wrote {path}")
