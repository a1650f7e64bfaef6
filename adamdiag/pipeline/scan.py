"""Glue between readers and the pure diagnosis: paths in, a :class:`Report` out.

This is the only place that knows both the file system and the analysis; the CLI calls it and
renders the result. Progress goes to stderr (rich), only when stderr is a terminal.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from adamdiag import __version__
from adamdiag.console import stderr_progress
from adamdiag.results.report import Report


def load_checkpoint_summaries(
    root: Path, *, trust: bool, convention: str | None, warnings: list[str]
) -> tuple[list, list[str]]:
    """Summaries of every optimizer checkpoint under ``root``; unreadable ones become warnings
    (a diagnosis from the event files is still honest without them)."""
    from adamdiag.errors import InputError, UntrustedCheckpointError
    from adamdiag.io.checkpoints import find_checkpoints
    from adamdiag.pipeline.summary import summarize_checkpoint

    out, paths = [], []
    for p in find_checkpoints(root):
        try:
            out.append(summarize_checkpoint(p, trust=trust, convention=convention))
            paths.append(str(p))
        except UntrustedCheckpointError:
            raise
        except InputError as e:
            warnings.append(f"checkpoint {p}: {e}")
    return out, paths


def scan_paths(
    paths: Sequence[Path],
    *,
    checkpoints: Path | None = None,
    convention: str | None = None,
    trust_checkpoint: bool = False,
) -> Report:
    """Diagnose every run found under ``paths``.

    Raises :class:`adamdiag.errors.InputError` when a path is missing or holds no event files.
    """
    from adamdiag.analysis.diagnose import RunInputs, diagnose
    from adamdiag.errors import InputError
    from adamdiag.io.events import find_runs, read_run, read_runs
    from adamdiag.results.report import Finding, RunReport

    if checkpoints is not None and not Path(checkpoints).exists():
        raise InputError(f"--checkpoints {checkpoints}: no such file or directory")
    report = Report(tool_version=__version__)
    with stderr_progress() as prog:
        task = prog.add_task("reading event files", total=None)
        unreadable: list[RunReport] = []
        try:
            all_events = read_runs(
                [Path(p) for p in paths], progress=lambda done, total: prog.update(task, completed=done, total=total)
            )
        except InputError:
            # One unreadable run must not hide the diagnosis of the others: read them one by one and
            # report the broken ones (a single run still fails with its one-line error).
            runs = find_runs([Path(p) for p in paths])
            if len(runs) == 1:
                raise
            all_events = []
            for run in runs:
                try:
                    all_events.append(read_run(run))
                except InputError as e:
                    unreadable.append(
                        RunReport(
                            run=str(run),
                            verdict="inconclusive",
                            warnings=[str(e)],
                            findings=[Finding("AD902", "warning", f"unreadable: {e}")],
                        )
                    )
        prog.update(task, description="diagnosing", completed=0, total=len(all_events))
        report.runs.extend(unreadable)
        for events in all_events:
            run_dir = Path(events.run)
            warnings = list(events.warnings)
            if len(events.scalars) == 0 and len(events.histograms) == 0:
                if len(all_events) == 1:
                    detail = f": {warnings[0]}" if warnings else ""
                    raise InputError(f"no scalar or histogram events in {run_dir}{detail}")
                warnings.append(f"{run_dir}: the event files hold no scalars or histograms")
            ck_root = (
                Path(checkpoints) if checkpoints is not None else (run_dir if run_dir.is_dir() else run_dir.parent)
            )
            summaries, ck_paths = load_checkpoint_summaries(
                ck_root, trust=trust_checkpoint, convention=convention, warnings=warnings
            )
            conv = convention or (summaries[0].convention if summaries else "torch")
            inp = RunInputs(
                run=str(run_dir),
                scalars=events.scalars,
                histograms=events.histograms,
                checkpoints=summaries,
                warnings=warnings,
                convention=conv,
                checkpoint_paths=ck_paths,
            )
            report.runs.append(diagnose(inp))
            prog.advance(task)
    return report
