"""Markdown (for PR comments and CI summaries)."""

from __future__ import annotations

from adamdiag.render.common import (
    fmt_step,
    input_problem_lines,
    lead,
    recommendation_line,
    tags_line,
    verdict_line,
    verification_lines,
)
from adamdiag.results.report import Report


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report) -> str:
    lines = [
        "# adamdiag report",
        "",
        "| run | verdict | blowup step | warning step | lead time |",
        "|---|---|---|---|---|",
    ]
    for r in report.runs:
        lines.append(
            f"| {_cell(r.run)} | **{r.verdict}** | {fmt_step(r.blowup_step)} | {fmt_step(r.warning_step)} | {lead(r)} |"
        )
    for r in report.runs:
        lines += ["", f"## {_cell(r.run)} — {verdict_line(r)}", ""]
        tl = tags_line(r)
        if tl:
            lines += [f"Tags: {tl}", ""]
        for line in verification_lines(r):
            lines += [f"Verification: {_cell(line)}", ""]
        if r.findings:
            lines += ["| id | severity | step | tensor | message |", "|---|---|---|---|---|"]
            for f in r.findings:
                problems = input_problem_lines(f, r.run)  # AD902: every problem, one per line of the cell
                msg = "<br>".join(_cell(x) for x in problems) if problems else _cell(f.message)
                lines.append(f"| {f.id} | {f.severity} | {fmt_step(f.step)} | {_cell(f.tensor or '-')} | {msg} |")
        rec = recommendation_line(r)
        if rec:
            lines += ["", f"**Recommendation:** {_cell(rec)}"]
    return "\n".join(lines) + "\n"
