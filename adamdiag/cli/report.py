"""``report`` (runs → a diagnosis with curves → one self-contained HTML file, or its JSON) and
``show`` (a saved JSON report → html/text/markdown/..., re-rendered without recomputing)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from adamdiag.cli.app import app, emit, guarded
from adamdiag.cli.options import (
    AssumeBeta2Opt,
    AssumeEpsOpt,
    AssumeLrOpt,
    CheckpointsOpt,
    Convention,
    ConventionOpt,
    RunsArg,
    TrustOpt,
)
from adamdiag.cli.scan import (
    DeviceOpt,
    EntryOpt,
    GradClipOpt,
    GradNormTagOpt,
    LossTagOpt,
    TrustEntryOpt,
    VerifyBudgetOpt,
    VerifyOpt,
)
from adamdiag.console import info

if TYPE_CHECKING:
    from adamdiag.results.report import Report


class ShowFormat(str, Enum):
    html = "html"
    text = "text"
    markdown = "markdown"
    json = "json"
    junit = "junit"
    github = "github"


def _render_html(rep: Report) -> str:
    """The HTML page, with a progress bar on a terminal (one step per run: its figures are the slow part)."""
    from adamdiag.console import stderr_progress
    from adamdiag.render import render

    with stderr_progress() as prog:
        task = prog.add_task("drawing figures", total=len(rep.runs))
        return render(rep, "html", progress=lambda done, total: prog.update(task, completed=done, total=total))


def _write(path: Path, text: str) -> None:
    from adamdiag.errors import InputError

    if path.exists() and path.is_dir():
        raise InputError(f"-o {path} is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}") from None


@app.command()
@guarded
def report(
    runs: RunsArg,
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="report.html (one self-contained page) or report.json (the report with its curves, for `show`).",
        ),
    ] = Path("adamdiag-report.html"),
    checkpoints: CheckpointsOpt = None,
    convention: ConventionOpt = Convention.auto,
    trust_checkpoint: TrustOpt = False,
    verify_: VerifyOpt = False,
    verify_budget: VerifyBudgetOpt = None,
    entry: EntryOpt = None,
    trust_entry: TrustEntryOpt = False,
    device: DeviceOpt = "auto",
    loss_tag: LossTagOpt = None,
    grad_norm_tag: GradNormTagOpt = None,
    grad_clip: GradClipOpt = None,
    assume_lr: AssumeLrOpt = None,
    assume_beta2: AssumeBeta2Opt = None,
    assume_eps: AssumeEpsOpt = None,
) -> None:
    """Diagnose runs and write one HTML page: summary, curves with markers, findings, recommendation
    (with --verify: the replayed variants' losses drawn over the original)."""
    import json

    from adamdiag.cli.scan import VerifyOptions, build_report
    from adamdiag.errors import InputError

    suffix = output.suffix.lower()
    if suffix not in (".html", ".htm", ".json"):
        raise InputError(f"-o {output}: use a .html or .json file name")
    assume = (assume_lr, assume_beta2, assume_eps)
    verify_options = VerifyOptions(entry, trust_entry, trust_checkpoint, verify_budget, device, assume)
    rep = build_report(
        runs,
        checkpoints,
        convention,
        trust_checkpoint,
        loss_tag,
        grad_norm_tag,
        assume,
        None,
        verify_options if verify_ else None,
        True,
        grad_clip,
    )
    if suffix == ".json":
        _write(output, json.dumps(rep.to_dict(), indent=1, allow_nan=False) + "\n")
    else:
        _write(output, _render_html(rep))
    info(f"wrote {output} ({len(rep.runs)} run(s))")


@app.command()
@guarded
def show(
    saved: Annotated[
        Path, typer.Argument(metavar="REPORT", help="A JSON report (scan --format json, report -o x.json).")
    ],
    format: Annotated[ShowFormat, typer.Option("--format", "-f", help="Output format.")] = ShowFormat.text,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", metavar="FILE", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Re-render a saved report (no event file or checkpoint is read again)."""
    import json

    from adamdiag.errors import InputError
    from adamdiag.io.checkpoints import non_regular
    from adamdiag.render import render
    from adamdiag.results.report import Report

    if what := non_regular(saved):  # reading a FIFO blocks until someone writes to it: never opened
        raise InputError(f"{saved}: a {what}, not a report file (not opened)")
    try:
        data = json.loads(saved.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"cannot read {saved}: {e.strerror or e}") from None
    except ValueError as e:
        raise InputError(f"{saved} is not JSON: {e}") from None
    try:
        rep = Report.from_dict(data)
    except (ValueError, TypeError, AttributeError) as e:
        raise InputError(f"{saved}: {e}") from None
    text = _render_html(rep) if format == ShowFormat.html else render(rep, format.value)
    if output is None:
        emit(text)
    else:
        _write(output, text if text.endswith("\n") else text + "\n")
        info(f"wrote {output}")
