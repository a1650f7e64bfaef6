"""Every finding's message must agree with its own evidence (issue 12: "a rule never reads as its
opposite"). Used on real runs by tests/validation/test_messages.py (fast) and by
bench/check_messages.py over the whole validation matrix (make validate)."""

from __future__ import annotations

import re
from typing import Any

from adamdiag.analysis.thresholds import COLLAPSE_DEPTH, COLLAPSE_R

HEALTHY_WORDS = ("o(1)", "healthy", "tracked the gradients")


def message_problems(run: dict[str, Any]) -> list[str]:
    """Contradictions between a run's messages and the numbers they stand on (empty when none)."""
    out = []
    for f in run.get("findings", []):
        msg, ev, fid = f["message"], f.get("evidence") or {}, f["id"]
        low = msg.lower()
        if "'none'" in low or "(none)" in low:
            out.append(f"{fid}: message shows a missing value: {msg}")
        if fid == "AD201":
            r = ev.get("median_r_before")
            if r is not None and r < COLLAPSE_R and any(w in low for w in HEALTHY_WORDS):
                out.append(f"AD201 calls r={r:.3g} (< {COLLAPSE_R}) healthy: {msg}")
            if r is not None and r >= COLLAPSE_R and "was low" in low:
                out.append(f"AD201 calls r={r:.3g} low: {msg}")
        if fid == "AD101" and f["severity"] == "error":
            rs = [t.get("median_r") for t in ev.get("tensors", [])] + [ev.get("median_r")]
            if any(r is not None and r >= COLLAPSE_R for r in rs):
                out.append(f"AD101 names a collapse with median r >= {COLLAPSE_R}: {ev}")
            fall = ev.get("sqrt_vhat_fall")  # rule shrunken_v: the fall itself is the evidence
            if fall is not None and fall**2 < 1 / COLLAPSE_DEPTH:
                out.append(f"AD101 names a v̂ fall of only {fall:.3g}x (√) as a collapse: {msg}")
        if fid == "AD001" and ev.get("peak_step") is not None:
            m = re.search(r"peak \S+ at step (\d+)", msg)
            if m and int(m.group(1)) != ev["peak_step"]:
                out.append(f"AD001 names peak step {m.group(1)} but its evidence says {ev['peak_step']}")
    rec = run.get("recommendation") or {}
    rmsg = (rec.get("message") or "").lower()
    if any(w in rmsg for w in HEALTHY_WORDS) and (run.get("alternative") or run.get("verdict") != "lr_too_high"):
        out.append(
            f"recommendation calls v healthy although {run.get('verdict')}/{run.get('alternative')} fits: {rmsg}"
        )
    return out
