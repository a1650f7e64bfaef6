"""``scan`` and ``check``: event files (+ checkpoints) → :class:`Report` → a renderer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from adamdiag.cli.app import app, guarded, publish
from adamdiag.cli.options import (
    AssumeBeta2Opt,
    AssumeEpsOpt,
    AssumeLrOpt,
    CheckpointsOpt,
    Convention,
    ConventionOpt,
    FailOn,
    Format,
    FormatOpt,
    JobsOpt,
    RunsArg,
    TrustOpt,
    assumptions,
    convention_value,
    positive_number,
    positive_seconds,
)
from adamdiag.results.report import Report

LossTagOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--loss-tag",
        help="Scalar tag of the training loss (default: auto-picked). Repeatable: the first is the total loss "
        "(it sets the blowup step), the others per-task losses whose events are reported by name.",
    ),
]
VerifyOpt = Annotated[
    bool,
    typer.Option(
        "--verify",
        help="Replay each blown-up run from its checkpoint before the blowup with the fix and the competing "
        "cause's fix (needs a replay entry) and let the outcome confirm or correct the verdict.",
    ),
]
VerifyBudgetOpt = Annotated[
    float | None,
    typer.Option("--verify-budget", callback=positive_seconds, help="Seconds all --verify replays may take together."),
]
EntryOpt = Annotated[
    str | None, typer.Option("--entry", help="Replay entry for --verify: module:function or file.py:function.")
]
TrustEntryOpt = Annotated[
    bool,
    typer.Option(
        "--trust-entry",
        help="Let --verify import a replay entry found in an adamdiag.toml inside the scanned tree (runs its code).",
    ),
]
WithSeriesOpt = Annotated[
    bool,
    typer.Option(
        "--with-series",
        help="Add each run's downsampled curves (loss, gradient norm, r of all parameters and per tensor, √v̂ "
        "band; with --verify each replayed variant's loss) to the report, so `adamdiag show` can draw it later "
        "(JSON output).",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="Device for --verify replays: auto, cpu or cuda.")]
GradNormTagOpt = Annotated[
    str | None,
    typer.Option("--grad-norm-tag", help="Scalar tag of the (clipped) gradient norm (default: auto-picked)."),
]
GradClipOpt = Annotated[
    float | None,
    typer.Option(
        "--grad-clip",
        metavar="NORM",
        callback=positive_number,
        help="The gradient-norm clip the training used, when the logged norm is the one before clipping "
        "(clip_grad_norm_'s return value; Lightning's gradient_clip_val): v is reconstructed from min(norm, NORM). "
        "HF Trainer's max_grad_norm, Megatron-LM's clip_grad and fairseq's --clip-norm are read from their logs.",
    ),
]


def diagnose_paths(
    runs: list[Path],
    checkpoints: Path | None,
    convention: Convention,
    trust: bool,
    loss_tags: list[str] | None = None,
    grad_norm_tag: str | None = None,
    assume: tuple[float | None, float | None, float | None] = (None, None, None),
    jobs: int | None = None,
    grad_clip: float | None = None,
):
    """scan_paths with the command line's options; ``assume``: (--assume-lr, --assume-beta2, --assume-eps);
    ``jobs``: --jobs; ``grad_clip``: --grad-clip."""
    from adamdiag.errors import InputError
    from adamdiag.pipeline.scan import scan_paths

    if grad_clip is not None and not (math.isfinite(grad_clip) and grad_clip > 0):
        raise InputError(f"--grad-clip must be a positive number, got {grad_clip}")
    return scan_paths(
        runs,
        checkpoints=checkpoints,
        convention=convention_value(convention),
        trust_checkpoint=trust,
        loss_tags=loss_tags or None,
        grad_norm_tag=grad_norm_tag,
        assume=assumptions(*assume),
        jobs=jobs,
        grad_clip=grad_clip,
    )


@dataclass
class VerifyOptions:
    """What --verify needs from the command line (shared by scan and check)."""

    entry: str | None
    trust_entry: bool
    trust_checkpoint: bool
    budget: float | None
    device: str
    assume: tuple[float | None, float | None, float | None] = (None, None, None)  # --assume-lr/-beta2/-eps


def verify(report: Report, o: VerifyOptions, *, curves: bool = False) -> None:
    """--verify: replay the blown-up runs and let the outcomes confirm or correct the verdicts
    (``curves``: keep each variant's loss curve for the report's series)."""
    from adamdiag.console import info
    from adamdiag.errors import InputError
    from adamdiag.pipeline.verify import verify_report

    if o.budget is not None and not o.budget > 0:
        raise InputError(f"--verify-budget must be a positive number of seconds, got {o.budget}")
    if o.device not in ("auto", "cpu", "cuda"):
        raise InputError(f"--device must be auto, cpu or cuda, got {o.device!r}")
    verify_report(
        report.runs,
        entry=o.entry,
        trust_entry=o.trust_entry,
        trust_checkpoint=o.trust_checkpoint,
        budget_s=o.budget,
        device=o.device,
        say=info,
        curves=curves,
        assume=assumptions(*o.assume),
    )


def build_report(
    runs: list[Path],
    checkpoints: Path | None,
    convention: Convention,
    trust: bool,
    loss_tags: list[str] | None,
    grad_norm_tag: str | None,
    assume: tuple[float | None, float | None, float | None],
    jobs: int | None,
    verify_options: VerifyOptions | None,
    series: bool,
    grad_clip: float | None = None,
) -> Report:
    """What scan, check and report share: diagnose, then --verify (``verify_options``), then the curves
    (``series``: --with-series / report; with --verify each replayed variant's loss too)."""
    report = diagnose_paths(runs, checkpoints, convention, trust, loss_tags, grad_norm_tag, assume, jobs, grad_clip)
    if verify_options is not None:
        verify(report, verify_options, curves=series)
    if series:
        from adamdiag.pipeline.series import attach_series

        report = attach_series(report, trust_checkpoint=trust, checkpoints_dir=checkpoints, assume=assumptions(*assume))
    return report


@app.command()
@guarded
def scan(
    runs: RunsArg,
    format: FormatOpt = Format.text,
    checkpoints: CheckpointsOpt = None,
    convention: ConventionOpt = Convention.auto,
    trust_checkpoint: TrustOpt = False,
    loss_tag: LossTagOpt = None,
    grad_norm_tag: GradNormTagOpt = None,
    grad_clip: GradClipOpt = None,
    verify_: VerifyOpt = False,
    verify_budget: VerifyBudgetOpt = None,
    entry: EntryOpt = None,
    trust_entry: TrustEntryOpt = False,
    device: DeviceOpt = "auto",
    with_series: WithSeriesOpt = False,
    assume_lr: AssumeLrOpt = None,
    assume_beta2: AssumeBeta2Opt = None,
    assume_eps: AssumeEpsOpt = None,
    jobs: JobsOpt = None,
) -> None:
    """Diagnose one or many runs. Exits 0 when at least one run could be read (an unreadable or
    undiagnosable run is an `inconclusive` entry with its reason); use `check` to gate CI."""
    assume = (assume_lr, assume_beta2, assume_eps)
    report = build_report(
        runs,
        checkpoints,
        convention,
        trust_checkpoint,
        loss_tag,
        grad_norm_tag,
        assume,
        jobs,
        VerifyOptions(entry, trust_entry, trust_checkpoint, verify_budget, device, assume) if verify_ else None,
        with_series,
        grad_clip,
    )
    publish(report, format.value)


@app.command()
@guarded
def check(
    runs: RunsArg,
    fail_on: Annotated[FailOn, typer.Option("--fail-on", help="Lowest severity that fails the check.")] = FailOn.error,
    format: FormatOpt = Format.text,
    checkpoints: CheckpointsOpt = None,
    convention: ConventionOpt = Convention.auto,
    trust_checkpoint: TrustOpt = False,
    loss_tag: LossTagOpt = None,
    grad_norm_tag: GradNormTagOpt = None,
    grad_clip: GradClipOpt = None,
    allow_inconclusive: Annotated[
        bool,
        typer.Option("--allow-inconclusive", help="Pass runs that could not be diagnosed (unreadable, no loss, ...)."),
    ] = False,
    verify_: VerifyOpt = False,
    verify_budget: VerifyBudgetOpt = None,
    entry: EntryOpt = None,
    trust_entry: TrustEntryOpt = False,
    device: DeviceOpt = "auto",
    with_series: WithSeriesOpt = False,
    assume_lr: AssumeLrOpt = None,
    assume_beta2: AssumeBeta2Opt = None,
    assume_eps: AssumeEpsOpt = None,
    jobs: JobsOpt = None,
) -> None:
    """CI gate: exit 0 if healthy, 1 if any finding is at/above --fail-on or a run could not be diagnosed
    (unless --allow-inconclusive), 2 on a usage error or when no run could be read."""
    from adamdiag.results.report import SEVERITY_RANK

    assume = (assume_lr, assume_beta2, assume_eps)
    report = build_report(
        runs,
        checkpoints,
        convention,
        trust_checkpoint,
        loss_tag,
        grad_norm_tag,
        assume,
        jobs,
        VerifyOptions(entry, trust_entry, trust_checkpoint, verify_budget, device, assume) if verify_ else None,
        with_series,
        grad_clip,
    )
    publish(report, format.value, fail_on=fail_on.value)
    threshold = SEVERITY_RANK[fail_on.value]
    failing = [f for r in report.runs for f in r.findings if SEVERITY_RANK[f.severity] >= threshold]
    # A gate that passes when nothing could be diagnosed means nothing: an inconclusive run fails it.
    undiagnosed = [r for r in report.runs if r.verdict == "inconclusive"] if not allow_inconclusive else []
    if failing or undiagnosed:
        raise typer.Exit(1)
