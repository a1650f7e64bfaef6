"""The live form of scan's rules: AD101, AD102, AD103 and AD401, evaluated point by point.

The thresholds are scan's (imported, never copied): a collapse is r = g²/v̂_prev below
``COLLAPSE_R`` for at least ``COLLAPSE_MIN_MEMORY_FRACTION/(1-β2)`` steps (at least 3 logged
points) with v̂ at most ``COLLAPSE_DEPTH`` of its peak so far — the streaming equivalent of
:func:`adamdiag.analysis.diagnose.collapse_stretch` on the logged points, which
``tests/monitor/test_rules_live.py`` checks step for step. The messages follow scan's texts
for a run that has not blown up (yet).

>>> t = Track()
>>> [t.update(s, r=0.01, vhat=v, every=10, beta2=0.999) for s, v in [(10, 1.0), (20, 1e-3), (30, 1e-3)]]
[None, None, None]
>>> t.update(40, r=0.01, vhat=1e-3, every=10, beta2=0.999) is None  # 200 steps needed, 40 seen
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

try:  # the lead moves the thresholds into their own module; follow them wherever they are
    from adamdiag.analysis.thresholds import (  # type: ignore[import-not-found]
        COLLAPSE_DEPTH,
        COLLAPSE_MIN_MEMORY_FRACTION,
        COLLAPSE_R,
        REGROWTH_R,
        UPDATE_RMS_LIMIT,
    )
except ImportError:  # pragma: no cover - depends on the state of the refactor
    from adamdiag.analysis.diagnose import (
        COLLAPSE_DEPTH,
        COLLAPSE_MIN_MEMORY_FRACTION,
        COLLAPSE_R,
        REGROWTH_R,
        UPDATE_RMS_LIMIT,
    )

try:
    from adamdiag.results.report import Finding, json_safe  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the state of the refactor
    from adamdiag.report import Finding, json_safe

__all__ = [
    "COLLAPSE_DEPTH",
    "COLLAPSE_MIN_MEMORY_FRACTION",
    "COLLAPSE_R",
    "REGROWTH_R",
    "UPDATE_RMS_LIMIT",
    "Finding",
    "Track",
    "json_safe",
    "min_points",
]

# How many r values of a running stretch are kept for its median (bounded memory per tensor).
MEDIAN_WINDOW = 4096


def min_points(every: int, beta2: float) -> int:
    """Logged points a stretch needs: scan's ``collapse_stretch`` rule with one point per ``every`` steps.

    >>> min_points(10, 0.999), min_points(1, 0.999), min_points(100, 0.99)
    (20, 200, 3)
    """
    span = COLLAPSE_MIN_MEMORY_FRACTION / (1.0 - beta2)
    return max(3, int(math.ceil(span / max(1, every))))


@dataclass
class Track:
    """Streaming collapse state of one trajectory (all parameters, or one tensor)."""

    run_len: int = 0  # consecutive logged points with r < COLLAPSE_R
    run_start: int | None = None  # step of the first point of the running stretch
    peak: float = 0.0  # largest finite v̂ seen so far
    fired: bool = False  # AD101 already emitted for the running stretch
    collapsed: bool = False  # an AD101 was emitted at some point (arms AD102)
    regrowth_fired: bool = False
    rms_over: bool = False  # update RMS currently above the limit (AD103 re-arms below it)
    rs: list[float] = field(default_factory=list)

    def see_peak(self, vhat: float) -> None:
        """A point that only raises the peak (the dense first steps before the logging grid)."""
        if math.isfinite(vhat) and vhat > self.peak:
            self.peak = vhat

    def update(self, step: int, r: float, vhat: float, every: int, beta2: float) -> tuple[int, float] | None:
        """Feed one logged point; returns (first step, median r) when the collapse becomes sustained
        and deep at this point (once per stretch), else None."""
        self.see_peak(vhat)
        below = math.isfinite(r) and r < COLLAPSE_R
        if not below:
            self.run_len, self.run_start, self.fired = 0, None, False
            self.rs.clear()
            return None
        if self.run_len == 0:
            self.run_start = step
        self.run_len += 1
        if len(self.rs) < MEDIAN_WINDOW:
            self.rs.append(r)
        deep = math.isfinite(vhat) and vhat <= COLLAPSE_DEPTH * self.peak
        if not self.fired and deep and self.run_len >= min_points(every, beta2):
            self.fired = self.collapsed = True
            rs = sorted(self.rs)
            m = len(rs)
            med = rs[m // 2] if m % 2 else 0.5 * (rs[m // 2 - 1] + rs[m // 2])
            return int(self.run_start or step), float(med)
        return None


def name_list(names: list[str], shown: int = 3) -> str:
    """Scan's way of naming several tensors.

    >>> name_list(["a", "b", "c", "d", "e"])
    '`a`, `b`, `c` and 2 more'
    """
    head = ", ".join(f"`{n}`" for n in names[:shown])
    return head + (f" and {len(names) - shown} more" if len(names) > shown else "")


def collapse_finding(
    label: str | list[str], step: int, first: int, med: float, bounded: bool, evidence: dict[str, Any]
) -> Finding:
    """AD101 with scan's text for a collapse in a run that has not blown up (yet)."""
    if isinstance(label, list):
        where, tensor = (name_list(label), label[0]) if len(label) > 1 else (label[0], label[0])
    else:
        where, tensor = ("all parameters", None) if label == "global" else (label, label)
    tail = (
        "; eps bounds the step"
        if bounded
        else "; eps does not bound the step: a return of larger gradients would blow up the update"
    )
    return Finding(
        "AD101",
        "info" if bounded else "warning",
        f"v is collapsing in {where} from step {first} (g²/v̂ median {med:.3g}){tail}",
        step=step,
        tensor=tensor,
        evidence={"median_r": med, "first_step": first, "threshold": COLLAPSE_R, **evidence},
    )


def regrowth_finding(label: str, step: int, r: float) -> Finding:
    """AD102 (scan's text): after a collapse, the gradients are back — the blowup is imminent."""
    return Finding(
        "AD102",
        "error",
        f"gradients re-grew in {'all parameters' if label == 'global' else label}: g²/v̂ = {r:.3g} at step {step}",
        step=step,
        tensor=None if label == "global" else label,
        evidence={"r": r, "threshold": REGROWTH_R},
    )


def update_rms_finding(label: str, step: int, value: float) -> Finding:
    """AD103 (scan's text)."""
    return Finding(
        "AD103",
        "warning",
        f"update RMS {value:.3g} > 1 in {'all parameters' if label == 'global' else label} at step {step}",
        step=step,
        tensor=None if label == "global" else label,
        evidence={"update_rms": value, "threshold": UPDATE_RMS_LIMIT},
    )


def nonfinite_finding(step: int, tensors: list[str] | None = None, source: str = "state") -> Finding:
    """AD401 (scan's text for the loss; the tensors named for gradients/state)."""
    if tensors:
        msg = f"non-finite values (NaN/Inf) in the gradients or Adam state of {name_list(tensors)} from step {step}"
        return Finding("AD401", "error", msg, step=step, tensor=tensors[0], evidence={"tensors": tensors[:50]})
    return Finding(
        "AD401", "error", f"non-finite values (NaN/Inf) from step {step}", step=step, evidence={"tag": source}
    )
