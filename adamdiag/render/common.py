"""Small formatting helpers shared by the renderers."""

from __future__ import annotations

from adamdiag.results.report import RunReport

VERDICT_TEXT = {
    "v_collapse": "v collapse (second moment decayed, then gradients re-grew)",
    "lr_too_high": "learning rate too high",
    "bad_batch": "bad batch (one-step spike)",
    "nonfinite": "non-finite values (NaN/Inf)",
    "eps_too_large": "eps too large (Adam behaves like SGD)",
    "healthy": "healthy",
    "inconclusive": "inconclusive",
}


def fmt_step(step: int | None) -> str:
    return "-" if step is None else str(step)


def lead(run: RunReport) -> str:
    lt = run.lead_time
    return "-" if lt is None else f"{lt} steps"


def recommendation_line(run: RunReport) -> str | None:
    rec = run.recommendation
    if not rec:
        return None
    msg = rec.get("message") or rec.get("action", "")
    if rec.get("verify"):
        msg += f"\n  verify: {rec['verify']}"
    return msg
