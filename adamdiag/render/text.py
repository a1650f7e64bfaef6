"""Human-readable text: one summary table, then findings and a recommendation per run."""

from __future__ import annotations

import io
import os

from rich.markup import escape

from adamdiag.render.common import (
    display_names,
    fmt_step,
    input_problem_lines,
    lead,
    recommendation_line,
    repeated_findings,
    tags_line,
    verdict_counts,
    verdict_line,
    verification_lines,
)
from adamdiag.results.report import Report

_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}
_VERDICT_STYLE = {"healthy": "green", "inconclusive": "yellow"}


def render_text(report: Report, width: int | None = None) -> str:
    """The text report, ``width`` columns wide (None: the terminal's, or 110 into a pipe or a file:
    :func:`adamdiag.console.stdout_width`)."""
    from rich import box
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    from adamdiag.console import stdout_width

    width = width or stdout_width()
    buf = io.StringIO()
    # Colour only when stdout is a terminal and NO_COLOR is unset; data must stay plain in pipes.
    color = os.isatty(1) and not os.environ.get("NO_COLOR")
    con = Console(file=buf, width=width, force_terminal=color, no_color=not color, highlight=False)
    # run names elided in the middle to what the other columns leave on a narrow terminal (they take ~56
    # columns laid out compactly), at most 40 characters
    names, prefix = display_names([r.run for r in report.runs], width=min(40, max(16, width - 56)))
    where = f" under {prefix}" if prefix else ""
    rows = [
        (
            escape(name),
            f"[{_VERDICT_STYLE.get(r.verdict, 'bold red')}]{r.verdict}[/]",
            fmt_step(r.blowup_step),
            fmt_step(r.warning_step),
            lead(r),
            ", ".join(r.sources) or "-",
        )
        for r, name in zip(report.runs, names)
    ]

    def table_of(compact: bool) -> Table:
        """The summary table; ``compact`` (a terminal narrower than it): no outer border and no column
        rules, headers and the sources list wrap — never a run name, a verdict or a step number."""
        kw: dict = {"box": box.SIMPLE_HEAD, "show_edge": False, "pad_edge": False, "collapse_padding": True}
        kw = kw if compact else {}
        steps = "; blowup and warning steps" if compact else ""
        title = f"adamdiag — {len(report.runs)} run(s){escape(where)}{steps}"
        table = Table(title=title, title_justify="left", **kw)
        cells = list(zip(*rows)) or [()] * 6
        table.add_column("run", no_wrap=True)
        table.add_column("verdict", no_wrap=True)
        for i, col in ((2, "blowup step"), (3, "warning step")):
            head = col.split()[0] if compact else col  # the title row says these are steps
            fit = max([len(head)] + [Text.from_markup(c).cell_len for c in cells[i]])
            table.add_column(head, no_wrap=True, width=fit if compact else None)
        table.add_column("lead time")  # "419 steps" may wrap after the number
        table.add_column("sources", min_width=len("checkpoints,"))
        for row in rows:
            table.add_row(*row)
        return table

    table = table_of(compact=False)
    if Measurement.get(con, con.options.update_width(10_000), table).maximum > width:
        table = table_of(compact=True)
    con.print(table)
    repeated = repeated_findings(report)
    for r in report.runs:
        con.print()
        con.print(f"[bold]{escape(r.run)}[/]: {escape(verdict_line(r))}", soft_wrap=True)
        tl = tags_line(r)
        if tl:
            con.print(f"  [dim]tags: {escape(tl)}[/]", soft_wrap=True)
        for f in r.findings:
            if (f.id, f.severity, f.message.replace(r.run, "<run>")) in repeated:
                continue
            where = f" step {f.step}" if f.step is not None else ""
            problems = input_problem_lines(f, r.run)
            if problems:  # every input problem on its own line, repeated ones once with "× N alike"
                head = f"  [{_STYLE[f.severity]}]{f.id} {f.severity}[/]{where}: {escape(problems[0])}"
                con.print(head, soft_wrap=True)
                for line in problems[1:]:
                    con.print(f"    - {escape(line)}", soft_wrap=True)
                continue
            con.print(f"  [{_STYLE[f.severity]}]{f.id} {f.severity}[/]{where}: {escape(f.message)}", soft_wrap=True)
        for line in verification_lines(r):
            con.print(f"  [bold]verification:[/] {escape(line)}", soft_wrap=True)
        rec = recommendation_line(r)
        if rec:
            con.print(f"  [bold]recommendation:[/] {escape(rec)}", soft_wrap=True)
    if repeated:
        con.print()
        con.print("[bold]in many runs[/] (shown once):", soft_wrap=True)
        for (fid, sev, msg), n in sorted(repeated.items(), key=lambda kv: -kv[1]):
            con.print(f"  [{_STYLE[sev]}]{fid} {sev}[/] × {n}: {escape(msg)}", soft_wrap=True)
    for w in report.warnings:
        con.print(f"[yellow]warning:[/] {escape(w)}", soft_wrap=True)
    if len(report.runs) > 1:
        con.print()
        con.print(verdict_counts(report), soft_wrap=True)
    return buf.getvalue()
