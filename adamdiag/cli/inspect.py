"""``inspect``: checkpoints → per-tensor moment statistics (``adamdiag.inspect/1``) → a renderer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from adamdiag.cli.app import app, emit, guarded
from adamdiag.cli.options import (
    AssumeBeta2Opt,
    AssumeEpsOpt,
    AssumeLrOpt,
    Convention,
    ConventionOpt,
    JobsOpt,
    TableFormat,
    TableFormatOpt,
    TrustOpt,
    assumptions,
    convention_value,
)

if TYPE_CHECKING:
    from adamdiag.io.checkpoints.hyper import Assumptions


@app.command()
@guarded
def inspect(
    checkpoints: Annotated[
        list[Path], typer.Argument(help="Checkpoint files or directories (one, or two of one run).")
    ],
    format: TableFormatOpt = TableFormat.text,
    convention: ConventionOpt = Convention.auto,
    trust_checkpoint: TrustOpt = False,
    latest: Annotated[
        bool,
        typer.Option(
            "--latest",
            help="Of each directory (or TF 'checkpoint' file), only the checkpoint with the highest step.",
        ),
    ] = False,
    all_: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Text: every checkpoint and pair in full (more than two are one line each, the last in full).",
        ),
    ] = False,
    assume_lr: AssumeLrOpt = None,
    assume_beta2: AssumeBeta2Opt = None,
    assume_eps: AssumeEpsOpt = None,
    jobs: JobsOpt = None,
) -> None:
    """Per-tensor Adam moment statistics of checkpoints, sorted by risk; decay ratios for two."""
    assume = assumptions(assume_lr, assume_beta2, assume_eps)
    emit(
        run_inspect(
            checkpoints,
            format.value,
            convention_value(convention),
            trust_checkpoint,
            latest=latest,
            assume=assume,
            jobs=jobs,
            full=all_,
        )
    )


def run_inspect(
    paths: list[Path],
    fmt: str,
    convention: str | None,
    trust_checkpoint: bool,
    *,
    latest: bool = False,
    assume: Assumptions | None = None,
    jobs: int | None = None,
    full: bool = False,
) -> str:
    """The ``inspect`` command: render the statistics of ``paths`` as ``fmt`` (text|json|csv);
    ``jobs``: tensors read in parallel (None: the default); ``full`` (``--all``): the text shows every
    checkpoint in full, not one line each when there are more than two."""
    from adamdiag.errors import InputError
    from adamdiag.pipeline.inspect import collect
    from adamdiag.render.inspect import render_csv, render_text
    from adamdiag.results.inspect import to_json_obj

    if fmt not in ("text", "json", "csv"):
        raise InputError(f"unknown format {fmt!r} (text, json or csv)")
    summaries, pairs = collect(
        list(paths), convention=convention, trust=trust_checkpoint, latest=latest, assume=assume, jobs=jobs
    )
    if fmt == "json":
        return json.dumps(to_json_obj(summaries, pairs), indent=2, allow_nan=False)
    if fmt == "csv":
        return render_csv(summaries, pairs)
    return render_text(summaries, pairs, full=full)
