"""Renderers: a Report in, text out. They never recompute anything (a saved JSON report
re-renders identically)."""

from __future__ import annotations

from collections.abc import Callable

from adamdiag.printable import printable
from adamdiag.results.report import Report


def render(
    report: Report, fmt: str, *, fail_on: str = "error", progress: Callable[[int, int], None] | None = None
) -> str:
    """Render ``report`` as ``text`` (rich table), ``json``, ``markdown``, ``junit`` (a run fails
    at/above ``fail_on``, as ``check`` does), ``github`` (workflow-command annotations) or ``html``. The
    text can be written anywhere: a path that is not UTF-8 shows its odd bytes as ``\\xNN``.
    ``progress(done, total)``: called after each run's figures are drawn (html only, the slow one)."""
    return printable(_render(report, fmt, fail_on, progress))


def _render(report: Report, fmt: str, fail_on: str, progress: Callable[[int, int], None] | None = None) -> str:
    if fmt == "json":
        import json

        return json.dumps(report.to_dict(), indent=2, allow_nan=False)
    if fmt == "markdown":
        from adamdiag.render.markdown import render_markdown

        return render_markdown(report)
    if fmt == "junit":
        from adamdiag.render.junit import render_junit

        return render_junit(report, fail_on=fail_on)
    if fmt == "html":
        from adamdiag.render.html import render_html

        return render_html(report, progress=progress)
    if fmt == "github":
        from adamdiag.render.github import render_github

        return render_github(report)
    from adamdiag.render.text import render_text

    return render_text(report)
