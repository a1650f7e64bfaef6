"""GitHub Actions workflow commands: one ``::error``/``::warning``/``::notice`` annotation per
finding (shown on the run's summary page and in the log), then the verdict counts."""

from __future__ import annotations

from adamdiag.render.common import verdict_counts
from adamdiag.results.report import Report

_LEVEL = {"error": "error", "warning": "warning", "info": "notice"}


def _data(text: str) -> str:
    """Escape a command's message (GitHub's rules: %, CR and LF)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _prop(text: str) -> str:
    """Escape a property value: the message rules plus ':' and ','."""
    return _data(text).replace(":", "%3A").replace(",", "%2C")


def render_github(report: Report) -> str:
    lines = []
    for r in report.runs:
        for f in r.findings:
            where = f" at step {f.step}" if f.step is not None else ""
            title = _prop(f"adamdiag {f.id} {r.verdict}{where}")
            lines.append(f"::{_LEVEL[f.severity]} file={_prop(r.run)},title={title}::{_data(f.message)}")
    for w in report.warnings:
        lines.append(f"::warning title=adamdiag::{_data(w)}")
    lines.append(verdict_counts(report) if report.runs else "0 runs")
    return "\n".join(lines)
