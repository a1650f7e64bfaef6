"""``plot``: the diagnosis of each run drawn as a PNG (loss, gradient norm, warning and blowup steps)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adamdiag.cli.app import app, guarded
from adamdiag.cli.options import CheckpointsOpt, Convention, ConventionOpt, RunsArg, TrustOpt
from adamdiag.cli.scan import GradClipOpt, GradNormTagOpt, LossTagOpt, diagnose_paths
from adamdiag.console import info, warn


@app.command()
@guarded
def plot(
    runs: RunsArg,
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            help="X.png or X.svg: one image (one run); a directory (an existing one, or a name without a suffix): "
            "one PNG per run, named from the run's path, never overwriting a file.",
        ),
    ] = Path("adamdiag-plots"),
    checkpoints: CheckpointsOpt = None,
    convention: ConventionOpt = Convention.auto,
    trust_checkpoint: TrustOpt = False,
    loss_tag: LossTagOpt = None,
    grad_norm_tag: GradNormTagOpt = None,
    grad_clip: GradClipOpt = None,
) -> None:
    """Plot loss and gradient norm with the diagnosed warning and blowup steps (one image per run).
    --loss-tag, --grad-norm-tag and --grad-clip are scan's: the same curves and markers as scan's."""
    from adamdiag.errors import InputError
    from adamdiag.io.events import find_runs
    from adamdiag.pipeline.scan import load_series
    from adamdiag.render.plot import IMAGE_SUFFIXES, plot_runs

    # Say it before the diagnosis, not after: one image file cannot hold several runs, and "-o x.jpg" or
    # "-o x.txt" is a file name with a type matplotlib is not asked to write, not a folder to create.
    if output.suffix and output.suffix.lower() not in IMAGE_SUFFIXES and not output.is_dir():
        raise InputError(
            f"-o {output}: {output.suffix} is no image type written here; use "
            f"{', '.join(sorted(IMAGE_SUFFIXES))} or a directory (an existing one, or a name without a suffix)"
        )
    if output.suffix.lower() in IMAGE_SUFFIXES and len(found := find_runs(runs)) > 1:
        raise InputError(f"-o {output} is one image but there are {len(found)} runs: give a directory (e.g. -o plots)")

    report = diagnose_paths(
        runs, checkpoints, convention, trust_checkpoint, loss_tag, grad_norm_tag, grad_clip=grad_clip
    )
    written, skipped = plot_runs(report, load_series, output)
    for msg in skipped:
        warn(msg)
    for path in written:
        info(f"wrote {path}")
