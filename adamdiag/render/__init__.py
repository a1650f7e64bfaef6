"""Renderers: a Report in, text out. They never recompute anything (a saved JSON report
re-renders identically)."""

from __future__ import annotations

from adamdiag.results.report import Report


def render(report: Report, fmt: str) -> str:
    """Render ``report`` as ``text`` (rich table), ``json``, ``markdown`` or ``junit``."""
    if fmt == "json":
        import json

        return json.dumps(report.to_dict(), indent=2, allow_nan=False)
    if fmt == "markdown":
        from adamdiag.render.markdown import render_markdown

        return render_markdown(report)
    if fmt == "junit":
        from adamdiag.render.junit import render_junit

        return render_junit(report)
    from adamdiag.render.text import render_text

    return render_text(report)
