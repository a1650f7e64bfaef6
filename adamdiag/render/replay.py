"""Renderers of a :class:`ReplayResult`: text (rich table), markdown, JSON, JUnit XML. Pure formatting."""

from __future__ import annotations

import io
import json
import math
import os
from xml.etree import ElementTree as ET

from adamdiag.replay.result import ReplayResult, VariantOutcome

COLUMNS = (
    "variant",
    "eps",
    "beta2",
    "lr",
    "outcome",
    "blowup step",
    "max loss",
    "final loss",
    "max update RMS",
    "min √v̂",
    "steps",
)


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.4g}"


def _outcome(v: VariantOutcome) -> str:
    return "at_risk (truncated)" if v.truncated else v.outcome


def _row(v: VariantOutcome) -> list[str]:
    return [
        v.name,
        f"{v.eps:g}",
        f"{v.beta2:g}",
        f"{v.lr:.3g}",  # 3 digits: a derived lr (0.01/3) reads 0.00333, not 0.00333333
        _outcome(v),
        str(v.blowup_step) if v.blowup_step is not None else "-",
        _num(v.max_loss),
        _num(v.final_loss),
        _num(v.max_update_rms),
        _num(v.min_sqrt_vhat),
        str(v.steps_replayed),
    ]


def _header(r: ReplayResult) -> str:
    end = r.start_step + r.steps
    why = r.horizon.get("why") if r.horizon else None
    horizon = f"; horizon: {why}" if why and r.horizon.get("source") == "default" else ""
    # a framework-neutral entry (mode "entry") ran every variant in its own framework
    how = (
        f"variants replayed by the entry {r.entry}"
        if r.mode == "entry"
        else f"variants on {r.device}; original with torch.optim.Adam, alternates {r.mode}"
    )
    return (
        f"replay of {r.checkpoint}: steps {r.start_step + 1}–{end} ({r.steps} steps{horizon}; {len(r.variants)} {how})"
    )


def _fidelity_line(r: ReplayResult) -> str:
    state = "ok" if r.fidelity.reproduced else ("NOT REPRODUCED (--force)" if r.forced else "NOT REPRODUCED")
    return f"fidelity {state}: {r.fidelity.message}"


def _reference_line(r: ReplayResult) -> str | None:
    """How outcomes are decided, in one line (docs/replay.md has the rule)."""
    scopes = "globally" + (f" or in {', '.join(r.named_tensors)}" if r.named_tensors else "")
    return (
        "blowup = scan's blowup rule on the log up to the checkpoint + the replayed losses; at_risk = no "
        f"blowup, but at the end g²/v̂ < 0.1 {scopes} with median √v̂ > 10·eps and falling (may be postponed)"
    )


def render_text(r: ReplayResult, width: int | None = None) -> str:
    """Sentences are soft-wrapped (one line each: a terminal wraps them, a pipe or a log file keeps
    them whole); only the table is laid out, to ``width`` (None: the terminal's, or 110 into a pipe:
    :func:`adamdiag.console.stdout_width`) or to its own width where that is wider — a folded number
    cell reads as two numbers."""
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table

    from adamdiag.console import stdout_width

    buf = io.StringIO()
    color = os.isatty(1) and not os.environ.get("NO_COLOR")
    con = Console(file=buf, width=width or stdout_width(), force_terminal=color, no_color=not color, highlight=False)
    con.print(_header(r), markup=False, soft_wrap=True)
    con.print(_fidelity_line(r), markup=False, style=None if r.fidelity.reproduced else "bold red", soft_wrap=True)
    ref = _reference_line(r)
    if ref:
        con.print(ref, markup=False, soft_wrap=True)
    table = Table(title_justify="left")
    for c in COLUMNS:
        table.add_column(c, justify="left" if c == "variant" else "right")
    for i, v in enumerate(r.variants):
        row = _row(v)
        style = None if not i else {"avoided": "green", "at_risk": "yellow"}.get(v.outcome, "red")
        table.add_row(*row, style=style)
    con.width = max(con.width, Measurement.get(con, con.options.update_width(10_000), table).maximum)
    con.print(table)
    for f in r.findings:
        con.print(f"{f['id']} {f['message']}", markup=False, style="yellow", soft_wrap=True)
    for w in r.warnings:
        con.print(f"warning: {w}", markup=False, style="yellow", soft_wrap=True)
    con.print(f"verdict: {r.summary} (exit {r.exit_code})", markup=False, style="bold", soft_wrap=True)
    return buf.getvalue()


def _cell(s: str) -> str:
    return s.replace("|", "\\|")


def render_markdown(r: ReplayResult) -> str:
    lines = [f"### adamdiag replay — `{r.checkpoint}`", "", _cell(_header(r)), "", f"- {_cell(_fidelity_line(r))}"]
    ref = _reference_line(r)
    if ref:
        lines.append(f"- {_cell(ref)}")
    lines += [f"- **verdict**: {_cell(r.summary)} (exit {r.exit_code})", ""]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "|".join("---" if c == "variant" else "---:" for c in COLUMNS) + "|")
    for v in r.variants:
        lines.append("| " + " | ".join(_cell(x) for x in _row(v)) + " |")
    if r.findings or r.warnings:
        lines.append("")
        lines += [f"> {f['id']} {_cell(f['message'])}" for f in r.findings]
        lines += [f"> warning: {_cell(w)}" for w in r.warnings]
    return "\n".join(lines) + "\n"


def render_json(r: ReplayResult) -> str:
    return json.dumps(r.to_dict(), indent=2, allow_nan=False)


def render_junit(r: ReplayResult) -> str:
    """One testcase per variant. The original is expected to reproduce the logged behaviour (it fails
    when fidelity fails); an alternate fails unless it is ``avoided`` (a blowup, or at risk: postponed)."""
    suite = ET.Element("testsuite", name="adamdiag.replay", tests=str(len(r.variants)))
    failures = 0
    for i, v in enumerate(r.variants):
        case = ET.SubElement(suite, "testcase", classname=f"adamdiag.replay.{r.checkpoint}", name=v.name)
        if i == 0:
            if not r.fidelity.reproduced:
                failures += 1
                ET.SubElement(case, "failure", message=r.fidelity.message, type="fidelity")
            else:
                case.set("name", f"{v.name} (reproduces the log)")
            continue
        if v.outcome == "blowup":
            failures += 1
            fail = ET.SubElement(case, "failure", message=f"{v.name} blows up at step {v.blowup_step}", type="blowup")
            fail.text = f"max loss {_num(v.max_loss)}, max update RMS {_num(v.max_update_rms)}"
        elif v.outcome == "at_risk":
            failures += 1
            why = "cut short by the time budget" if v.truncated else "v still collapsing at the end of the replay"
            ET.SubElement(case, "failure", message=f"{v.name} is at risk: {why}", type="at_risk")
    suite.set("failures", str(failures))
    root = ET.Element("testsuites", name="adamdiag.replay", tests=str(len(r.variants)), failures=str(failures))
    root.append(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode")


def render_github(r: ReplayResult) -> str:
    """One GitHub Actions annotation with the verdict: an error when the replay failed its purpose."""
    from adamdiag.render.github import _data, _prop

    level = "notice" if r.exit_code == 0 else "error"
    return f"::{level} file={_prop(r.checkpoint)},title=adamdiag replay::{_data(r.summary)}"


def render(r: ReplayResult, fmt: str) -> str:
    if fmt == "text":
        return render_text(r)
    if fmt == "markdown":
        return render_markdown(r)
    if fmt == "json":
        return render_json(r)
    if fmt == "junit":
        return render_junit(r)
    if fmt == "github":
        return render_github(r)
    raise ValueError(f"unknown format {fmt!r}")
