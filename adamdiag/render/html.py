"""One self-contained HTML file: the summary table, then per run the loss (and gradient norm)
with the warning and blowup steps, r = g²/v̂ over time against the collapse threshold (all
parameters, and per tensor for the tensors that matter), the checkpoints' √v̂ band against eps, the
checkpoint decay-ratio table, the findings, the recommendation and the verification replay (table,
and its variants' losses drawn over the logged loss) when there was one. Figures are inline SVG drawn by matplotlib from the report's ``series`` block;
nothing is fetched from the network (no scripts, no fonts, no stylesheets from elsewhere), so the
file can be mailed, attached to a CI run or opened offline. Pure: a saved report renders the same."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable
from typing import Any

from adamdiag.render.common import VERDICT_TEXT, fmt_step, lead, recommendation_line
from adamdiag.render.plot import log_y, tight
from adamdiag.results.report import Report, RunReport

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}.v-healthy{color:#18794e}.v-inconclusive{color:#a16207}.v-bad{color:#b42318;font-weight:600}
.sev-error{color:#b42318;font-weight:600}.sev-warning{color:#a16207}.sev-info{color:#555}
.rec{background:#f0f7ff;border-left:4px solid #3b82f6;padding:.5em .8em;white-space:pre-wrap}
figure{margin:.5em 0}figure svg{max-width:100%;height:auto}.muted{color:#777}
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _vclass(verdict: str) -> str:
    return {"healthy": "v-healthy", "inconclusive": "v-inconclusive"}.get(verdict, "v-bad")


def _svg(r: RunReport, salt: str) -> str | None:
    """The run's curves as inline SVG, or None without a series block. ``salt`` makes the SVG's
    element ids unique in the page and the same on every render (a saved report re-renders byte for byte)."""

    ser = r.series or {}
    loss = ser.get("loss")
    if not loss or not loss.get("step"):
        return None

    from adamdiag.render.plot import _figure

    gn = ser.get("grad_norm")
    view = RunReport(**{**r.__dict__, "loss_tag": loss.get("tag"), "grad_norm_tag": (gn or {}).get("tag")})
    return _export(lambda: _figure(view, _arrays(loss), _arrays(gn) if gn and gn.get("step") else None), salt)


def _arrays(c: dict[str, Any]) -> tuple[Any, Any]:
    """(steps, values) of a series curve; ``None`` values back to NaN/±inf from ``nonfinite``."""
    import numpy as np

    bad = c.get("nonfinite", {})
    vals = [(float(bad.get(str(s), "nan")) if v is None else v) for s, v in zip(c["step"], c["value"])]
    return np.asarray(c["step"], np.int64), np.asarray(vals, np.float64)


def _export(make: Any, salt: str) -> str:
    """Run ``make()`` (a matplotlib figure) and return it as inline SVG markup."""
    import io
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    with warnings.catch_warnings(), matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        warnings.simplefilter("ignore")
        fig = make()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
        plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML declaration and DOCTYPE (not valid inside HTML)
    return re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)


def _signals_svg(r: RunReport, salt: str) -> str | None:
    """r = g²/v̂ over time against the collapse threshold, and the checkpoints' √v̂ band against eps."""
    ser = r.series or {}
    rr: dict[str, Any] = ser.get("r") or {}
    band: dict[str, Any] = ser.get("sqrt_vhat") or {}
    panels = [p for p, c in (("r", rr), ("band", band)) if c.get("step")]
    if not panels:
        return None

    def make() -> Any:
        import matplotlib.pyplot as plt
        import numpy as np

        fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.8 * len(panels)), squeeze=False)
        for ax, kind in zip(axes[:, 0], panels):
            if kind == "r":
                x, y = _arrays(rr)
                y = np.where(y > 0, y, np.nan)
                ax.plot(x, y, lw=0.8, color="tab:purple", label=rr.get("tag", "g²/v̂"))
                ax.axhline(rr.get("threshold", 0.1), color="tab:gray", ls=":", label="collapse threshold")
                log_y(ax)
                ax.set_ylabel("g²/v̂ (log scale)")
            else:
                st = np.asarray(band["step"], np.float64)
                ax.fill_between(st, band["p01"], band["p99"], color="tab:green", alpha=0.2, label="√v̂ p01–p99")
                ax.plot(st, band["p50"], "o-", color="tab:green", ms=3, lw=1, label="√v̂ median")
                if band.get("eps"):
                    ax.axhline(band["eps"], color="tab:red", ls="--", lw=1, label=f"eps = {band['eps']:g}")
                log_y(ax)
                ax.set_ylabel("√v̂ at checkpoints (log)")
            _markers(ax, r)
            ax.set_xlabel("step")
            ax.grid(True, alpha=0.3)
            ax.legend(loc="best", fontsize=8)
        tight(fig)
        return fig

    return _export(make, salt)


def _markers(ax: Any, r: RunReport) -> None:
    for step, color in ((r.warning_step, "tab:olive"), (r.blowup_step, "tab:red")):
        if step is not None:
            ax.axvline(step, color=color, ls="--", lw=0.8)


def _tensor_r_svg(r: RunReport, salt: str) -> str | None:
    """r = g²/v̂ per tensor (the tensors the findings name, else the lowest r), one line each, against
    the collapse threshold. Checkpoint-pair points are interval means drawn at the interval's end; an
    r of 0 (v only decayed) is drawn as a triangle on the bottom of the axis, which log scale cannot show."""
    block: dict[str, Any] = (r.series or {}).get("r_tensors") or {}
    curves = [c for c in block.get("curves") or [] if isinstance(c, dict) and c.get("step")]
    if not curves:
        return None

    def make() -> Any:
        import matplotlib.pyplot as plt
        import numpy as np

        fig, ax = plt.subplots(figsize=(9, 3.2))
        data = [(c, *_arrays(c)) for c in curves]
        pos = np.concatenate([y[np.isfinite(y) & (y > 0)] for _, _, y in data])
        floor = float(pos.min()) / 10 if len(pos) else 1e-12
        zero_shown = False
        for c, x, y in data:
            where = {"monitor": "monitor", "histograms": "histograms", "checkpoints": "checkpoint pairs"}
            label = f"{c.get('tensor', '?')} ({where.get(str(c.get('source')), c.get('source'))})"
            line = ax.plot(x, np.where(y > 0, y, np.nan), lw=0.9, marker="o" if len(x) <= 60 else None, ms=3)
            line[0].set_label(label)
            zero = y == 0
            if zero.any():
                ax.plot(
                    x[zero],
                    np.full(int(zero.sum()), floor),
                    "v",
                    color=line[0].get_color(),
                    ms=5,
                    label=None if zero_shown else "r = 0 (v only decayed)",
                )
                zero_shown = True
        ax.axhline(block.get("threshold", 0.1), color="tab:gray", ls=":", label="collapse threshold")
        _markers(ax, r)
        log_y(ax)
        ax.set_ylabel("g²/v̂ per tensor (log scale)")
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=7, ncol=2)
        tight(fig)
        return fig

    return _export(make, salt)


def _replay_svg(r: RunReport, salt: str) -> str | None:
    """The --verify replay over the logged loss: the original curve around the replay window and one
    line per replayed variant, labelled with its outcome (and blowup step)."""
    rep: dict[str, Any] = (r.series or {}).get("replay") or {}
    variants = [v for v in rep.get("variants") or [] if isinstance(v, dict) and v.get("step")]
    if not variants:
        return None
    loss = (r.series or {}).get("loss") or {}

    def make() -> Any:
        import matplotlib.pyplot as plt
        import numpy as np

        fig, ax = plt.subplots(figsize=(9, 3.4))
        start = int(rep.get("start_step") or 0)
        end = max(int(v["step"][-1]) for v in variants)
        lo = start - max((end - start) // 4, 10)
        ys: list[Any] = []
        if loss.get("step"):
            x, y = _arrays(loss)
            sel = (x >= lo) & (x <= end)
            ax.plot(
                x[sel],
                np.where(np.isfinite(y[sel]), y[sel], np.nan),
                color="black",
                lw=1.6,
                alpha=0.5,
                label=f"logged loss ({loss.get('tag', 'loss')})",
            )
            ys.append(y[sel])
        for v in variants:
            x, y = _arrays(v)
            at = f" at {v['blowup_step']}" if v.get("blowup_step") is not None else ""
            ax.plot(x, np.where(np.isfinite(y), y, np.nan), lw=0.9, label=f"{v.get('name')}: {v.get('outcome')}{at}")
            ys.append(y)
        ax.axvline(start, color="tab:blue", ls=":", lw=1, label=f"replay start (step {start})")
        _markers(ax, r)
        allv = np.concatenate(ys) if ys else np.zeros(0)
        allv = allv[np.isfinite(allv)]
        if len(allv) and allv.min() > 0:
            log_y(ax)
        ax.set_xlim(lo, end + 1)
        ax.set_ylabel("loss")
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=7)
        tight(fig)
        return fig

    return _export(make, salt)


def _decay_table(r: RunReport) -> list[str]:
    rows = (r.series or {}).get("decay") or []
    if not rows:
        return []
    out = [
        "<h3>Checkpoint decay ratios</h3>",
        '<p class="muted">v_b/(β2^Δ·v_a) between consecutive checkpoints (≈1: v only decayed) and the implied '
        "g²/v̂ of the interval, element-weighted medians; quiet tensors = share of elements in tensors whose mean implied g²/v̂ &lt; 0.1 (by tensor means: <code>adamdiag inspect A B</code> counts it per element)</p>",
        "<table><tr><th>from step</th><th>to step</th><th>decay ratio</th><th>implied g²/v̂</th><th>quiet tensors</th></tr>",
    ]
    for d in rows:
        out.append(
            f"<tr><td>{_e(d['from_step'])}</td><td>{_e(d['to_step'])}</td><td>{_e(_g(d.get('decay_ratio_p50')))}</td>"
            f"<td>{_e(_g(d.get('r_interval_p50')))}</td><td>{_e(_pct(d.get('pure_decay')))}</td></tr>"
        )
    out.append("</table>")
    return out


def _num(x: Any, spec: str) -> str | None:
    """A number in ``spec``; NaN/±inf by name (a saved report restores them), anything else as is."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None if x is None else str(x)
    return format(x, spec) if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))


def _g(x: Any) -> str:
    return "-" if x is None else f"{x:.3g}"


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _findings(r: RunReport) -> list[str]:
    if not r.findings:
        return ['<p class="muted">no findings</p>']
    out = ["<table><tr><th>id</th><th>severity</th><th>step</th><th>tensor</th><th>message</th></tr>"]
    for f in r.findings:
        out.append(
            f'<tr><td>{_e(f.id)}</td><td class="sev-{_e(f.severity)}">{_e(f.severity)}</td>'
            f"<td>{_e(fmt_step(f.step))}</td><td>{_e(f.tensor or '-')}</td><td>{_e(f.message)}</td></tr>"
        )
    out.append("</table>")
    return out


def _verification(r: RunReport) -> list[str]:
    v = r.verification
    if not v or not v.get("variants"):
        return []
    out = [
        "<h3>Verification replay</h3>",
        f"<p>from {_e(v.get('checkpoint'))}, step {_e(v.get('start_step'))}, "
        f"{_e(v.get('horizon_steps'))} steps; confirms the diagnosis: {_e(v.get('confirms'))}</p>",
        "<table><tr><th>variant</th><th>eps</th><th>beta2</th><th>lr</th><th>outcome</th><th>blowup step</th>"
        "<th>final loss</th></tr>",
    ]
    for var in v["variants"]:
        # lr to 3 digits (a derived 0.01/3 reads 0.00333, as in the replay table); eps/β2 as given
        cells = [
            var.get("name"),
            _num(var.get("eps"), "g"),
            _num(var.get("beta2"), "g"),
            _num(var.get("lr"), ".3g"),
            var.get("outcome"),
            var.get("blowup_step"),
            _num(var.get("final_loss"), ".4g"),
        ]
        out.append("<tr>" + "".join(f"<td>{_e('-' if c is None else c)}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    return out


def render_html(report: Report, progress: Callable[[int, int], None] | None = None) -> str:
    """The page; ``progress(done, total)`` after each run's figures (matplotlib takes ~0.2 s a figure)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>adamdiag report — {len(report.runs)} run(s)</title><style>{CSS}</style></head><body>",
        f'<h1>adamdiag report</h1><p class="muted">{len(report.runs)} run(s); adamdiag {_e(report.tool_version)}; '
        f"{_e(report.schema)}</p>",
        '<section id="summary"><h2>Summary</h2>',
    ]
    if not report.runs:
        parts.append('<p class="muted">no runs in this report</p>')
    else:
        parts.append(
            "<table><tr><th>run</th><th>verdict</th><th>blowup step</th><th>warning step</th><th>lead time</th>"
            "<th>confidence</th></tr>"
        )
        for i, r in enumerate(report.runs):
            parts.append(
                f'<tr><td><a href="#run-{i}">{_e(r.run)}</a></td><td class="{_vclass(r.verdict)}">{_e(r.verdict)}</td>'
                f"<td>{_e(fmt_step(r.blowup_step))}</td><td>{_e(fmt_step(r.warning_step))}</td><td>{_e(lead(r))}</td>"
                f"<td>{_e(r.confidence)}</td></tr>"
            )
        parts.append("</table>")
    for w in report.warnings:
        parts.append(f'<p class="sev-warning">warning: {_e(w)}</p>')
    parts.append("</section>")
    for i, r in enumerate(report.runs):
        parts.append(f'<section class="run" id="run-{i}">')
        parts.append(
            f'<h2>{_e(r.run)} — <span class="{_vclass(r.verdict)}">{_e(VERDICT_TEXT.get(r.verdict, r.verdict))}</span></h2>'
        )
        svg = _svg(r, f"adamdiag-run-{i}")
        if svg:
            parts.append(f'<figure class="curves">{svg}</figure>')
        else:
            parts.append('<p class="muted">no curves in this report (written without a series block)</p>')
        parts.append("<h3>Findings</h3>")
        parts += _findings(r)
        rec = recommendation_line(r)
        parts.append("<h3>Recommendation</h3>")
        parts.append(f'<div class="rec">{_e(rec)}</div>' if rec else '<p class="muted">none</p>')
        parts += _verification(r)
        overlay = _replay_svg(r, f"adamdiag-replay-{i}")
        if overlay:
            parts.append(
                '<h3>Replay overlay</h3><p class="muted">each replayed variant\'s loss over the logged loss, '
                f'from the checkpoint the replay started at</p><figure class="replay">{overlay}</figure>'
            )
        sig = _signals_svg(r, f"adamdiag-signals-{i}")
        if sig:
            parts.append(f'<h3>Second moment</h3><figure class="signals">{sig}</figure>')
        per = _tensor_r_svg(r, f"adamdiag-tensors-{i}")
        if per:
            block = (r.series or {}).get("r_tensors") or {}
            why = "named by the findings" if block.get("selected_by") == "findings" else "with the lowest g²/v̂"
            parts.append(
                f'<h3>g²/v̂ per tensor</h3><p class="muted">{_e(len(block.get("curves") or []))} of '
                f'{_e(block.get("candidates", "?"))} tensors, {why}</p><figure class="r-tensors">{per}</figure>'
            )
        parts += _decay_table(r)
        parts.append("</section>")
        if progress is not None:
            progress(i + 1, len(report.runs))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
