"""The live form of scan's rules: AD101, AD102, AD103 and AD401, evaluated point by point.

One code path with scan: the thresholds come from :mod:`adamdiag.analysis.thresholds` and the
findings (ids, severities, texts) from scan's own functions in :mod:`adamdiag.analysis.findings`,
fed with the monitor's exact numbers. What is live-specific is only *when* to ask them: a
:class:`Track` per trajectory (all parameters, or one tensor) follows the running stretch of
r < ``COLLAPSE_R`` point by point, and the moment it becomes sustained and deep it hands scan's
:func:`~adamdiag.analysis.evidence.collapse_stretch` the same points (the peak so far and the
stretch), so the warning step, first step and median are scan's by construction
(``tests/monitor/test_monitor_rules.py`` checks this against scan's rule on a whole run).

The all-parameters trajectory also keeps its recent points, so the monitor can ask scan's verdict
rules what a blowup at a given step reads as (:func:`blowup_evidence`: scan's
:func:`~adamdiag.analysis.evidence.logged_collapses`, :func:`~adamdiag.analysis.evidence.vhat_fall` and
:func:`~adamdiag.analysis.verdicts.decide` with the event put at that step): when the fed loss blows up,
that call gives scan's verdict and warning step. A stale v (a quiet stretch that is not deep) or a
shrunken v̂ is scan's v-collapse evidence only in hindsight — early training shows it on almost every
run, healthy ones included — so the monitor gives no live finding for it.

>>> t = Track()  # quiet and deep from step 20; at step 30 v's memory is 30 steps (v̂ = the mean so far)
>>> [t.update(s, r=0.01, vhat=v, every=10, beta2=0.999) for s, v in [(10, 1.0), (20, 1e-3), (30, 1e-3)]]
[False, False, True]
>>> min_points(10, 0.999)  # 200 steps of a stretch at one point per 10 steps
20
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adamdiag.analysis import findings as F
from adamdiag.analysis.evidence import (
    Evidence,
    StateProblem,
    Trajectory,
    abrupt_gradient_jump,
    collapse_span,
    collapse_stretch,
    episode_start,
    jump_is_isolated,
    logged_collapses,
    pre_event_r,
    spike_cycles,
    vhat_fall,
)
from adamdiag.analysis.signals import LossEvents, detect_loss_events
from adamdiag.analysis.thresholds import (
    COLLAPSE_DEPTH,
    COLLAPSE_MIN_POINTS,
    COLLAPSE_R,
    EPS_BOUND_FACTOR,
    MAX_NAMES_SHOWN,
    MIN_LOSS_POINTS,
    REGROWTH_R,
    REGROWTH_WINDOW,
    UPDATE_RMS_LIMIT,
)
from adamdiag.results.report import Finding, json_safe

__all__ = [
    "COLLAPSE_R",
    "EPS_BOUND_FACTOR",
    "BlowupEvidence",
    "MAX_NAMES_SHOWN",
    "REGROWTH_R",
    "REGROWTH_WINDOW",
    "UPDATE_RMS_LIMIT",
    "Finding",
    "Track",
    "blowup_evidence",
    "collapse_finding",
    "event_start",
    "json_safe",
    "loss_events",
    "loss_findings",
    "min_points",
    "nonfinite_finding",
    "regrowth_findings",
    "update_rms_finding",
]

# How many points of a running stretch are kept (bounded memory per tensor on a long collapse;
# scan's rule only needs the first min_points of it to fire).
STRETCH_WINDOW = 4096
# How far back r peaks are remembered: scan's re-growth window before the blowup plus the time the
# loss-event detector may take to confirm a blowup (it looks up to ~100 steps ahead) and some slack.
R_PEAKS_KEPT = 4 * REGROWTH_WINDOW + 200


def min_points(every: int, beta2: float, step: int | None = None) -> int:
    """Logged points a stretch needs at ``step``: scan's ``collapse_stretch`` rule with one point per
    ``every`` steps, against v's memory at that step (``collapse_span``; the long-run memory without one).

    >>> min_points(1, 0.999), min_points(100, 0.99), min_points(10, 0.9999, step=300)
    (200, 3, 6)
    """
    return max(COLLAPSE_MIN_POINTS, int(math.ceil(collapse_span(step, beta2) / max(1, every))))


@dataclass
class Track:
    """Streaming collapse state of one trajectory (all parameters, or one tensor)."""

    peak: float = 0.0  # largest finite v̂ seen so far
    peak_step: int = 0
    fired: bool = False  # AD101 already emitted for the running stretch
    collapsed: bool = False  # an AD101 was emitted at some point
    # recent points with r > REGROWTH_R: (step, r), kept for R_PEAKS_KEPT steps (AD102 reads them when
    # the fed loss blows up: scan's re-growth is r far above 1 just before the event)
    r_peaks: list[tuple[int, float]] = field(default_factory=list)
    rms_over: bool = False  # update RMS above the limit (AD103 re-arms well below it)
    nonfinite_fired: bool = False
    # the running stretch of r < COLLAPSE_R: (step, g², v̂, r) per point
    stretch: list[tuple[int, float, float, float]] = field(default_factory=list)
    run_len: int = 0
    # every logged point (step, g², v̂, r), the last STRETCH_WINDOW of them: kept for the all-parameters
    # trajectory only (``history=True``), whose blowup evidence is asked on the whole recent trajectory
    history: deque[tuple[int, float, float, float]] | None = None

    @classmethod
    def with_history(cls) -> Track:
        """A Track that keeps its recent points (the all-parameters trajectory)."""
        return cls(history=deque(maxlen=STRETCH_WINDOW))

    def see_peak(self, vhat: float, step: int = 0) -> None:
        """A point that only raises the peak (the dense first steps before the logging grid)."""
        if math.isfinite(vhat) and vhat > self.peak:
            self.peak, self.peak_step = vhat, step

    def note_r(self, step: int, r: float) -> None:
        """Remember a point whose r is above REGROWTH_R (and forget those too old to matter)."""
        if self.r_peaks and self.r_peaks[0][0] < step - R_PEAKS_KEPT:
            self.r_peaks = [x for x in self.r_peaks if x[0] >= step - R_PEAKS_KEPT]
        if math.isfinite(r) and r > REGROWTH_R:
            self.r_peaks.append((step, r))

    def peak_r(self, lo: int, hi: int) -> tuple[float, int] | None:
        """The largest remembered r with lo ≤ step < hi, and its step."""
        pts = [(r, s) for s, r in self.r_peaks if lo <= s < hi]
        return max(pts) if pts else None

    def update(self, step: int, r: float, vhat: float, every: int, beta2: float, g2: float = math.nan) -> bool:
        """Feed one logged point; True when the collapse becomes sustained and deep at this point
        (once per stretch): then :meth:`trajectory` holds what scan's rule needs."""
        self.see_peak(vhat, step)
        if self.history is not None:
            self.history.append((step, g2, vhat, r))
        if not (math.isfinite(r) and r < COLLAPSE_R):
            self.run_len, self.fired = 0, False
            self.stretch.clear()
            return False
        self.run_len += 1
        if len(self.stretch) < STRETCH_WINDOW:
            self.stretch.append((step, g2, vhat, r))
        deep = math.isfinite(vhat) and vhat <= COLLAPSE_DEPTH * self.peak
        if not self.fired and deep and self.run_len >= min_points(every, beta2, step):
            self.fired = self.collapsed = True
            return True
        return False

    def trajectory(self, label: str, eps: float, beta2: float, *, recent: bool = False) -> Trajectory:
        """The peak so far and the running stretch (``recent``: the recent points, of a Track with
        history), as scan's :class:`Trajectory`: on these points scan's ``collapse_stretch`` finds the
        same stretch, warning step and median."""
        pts_of = list(self.history or []) if recent else self.stretch
        pts = [(self.peak_step, math.nan, self.peak, math.nan)] if pts_of and self.peak_step < pts_of[0][0] else []
        pts += pts_of
        a = np.array(pts, dtype=np.float64).reshape(-1, 4)
        return Trajectory(
            label=label,
            steps=a[:, 0].astype(np.int64),
            g2=a[:, 1],
            vhat=a[:, 2],
            r=a[:, 3],
            exact=True,
            eps=eps,
            beta2=beta2,
        )


@functools.cache
def _empty_fields() -> tuple[tuple[str, str], ...]:
    """(name, kind of empty value) of Evidence's required fields (read once: type hints are slow)."""
    hints = typing.get_type_hints(Evidence)
    out = []
    for f in dataclasses.fields(Evidence):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            t = str(hints.get(f.name, ""))
            kind = (
                "none"  # an optional field (``dict | None``: the grad-norm jump) is absent, not empty
                if "None" in t
                else "list"
                if t.startswith("list")
                else "dict"
                if t.startswith("dict")
                else "bool"
                if t == "<class 'bool'>"
                else "int"
                if t == "<class 'int'>"
                else "float"
                if t == "<class 'float'>"
                else "none"
            )
            out.append((f.name, kind))
    return tuple(out)


_EMPTY: dict[str, Any] = {"bool": False, "int": 0, "float": math.nan, "none": None}


def _evidence(**given: Any) -> Evidence:
    """scan's Evidence with only the given fields set (the others empty): the live monitor feeds
    scan's finding functions the numbers it has, nothing else."""
    kw: dict[str, Any] = {}
    for name, kind in _empty_fields():
        if name not in given:
            kw[name] = [] if kind == "list" else {} if kind == "dict" else _EMPTY[kind]
    return Evidence(**kw, **given)


@dataclass
class BlowupEvidence:
    """What scan would make of a blowup on the monitor's all-parameters trajectory and per-step gradient norm."""

    verdict: str  # scan's verdict on this evidence: "v_collapse", "bad_batch" or "lr_too_high"
    rule: str  # scan's verdict rule, e.g. "deep_collapse", "stale_v", "shrunken_v", "one_batch", "diverged"
    warning_step: int | None  # scan's warning step: a v_collapse rule's, or the bad batch's step; else None
    findings: list[Finding] = field(default_factory=list)  # scan's AD301 for a bad batch


def blowup_evidence(
    track: Track,
    eps: float,
    beta2: float,
    at: int,
    grad_norm: tuple[np.ndarray, np.ndarray] | None = None,
    blowup: int | None = None,
    lr_series: tuple[np.ndarray, np.ndarray] | None = None,
    spikes: list[int] | None = None,
) -> BlowupEvidence | None:
    """scan's verdict rules on the monitor's all-parameters trajectory (``track``: a Track with history)
    with the loss event put at ``at`` (the start of the instability episode): the evidence
    :func:`~adamdiag.analysis.evidence.gather` collects from a logged trajectory
    (:func:`~adamdiag.analysis.evidence.logged_collapses`, :func:`~adamdiag.analysis.evidence.vhat_fall`)
    and, from the per-step gradient norm ``grad_norm`` (steps, values), scan's one-step jump at the
    ``blowup`` step (:func:`~adamdiag.analysis.evidence.abrupt_gradient_jump`,
    :func:`~adamdiag.analysis.evidence.jump_is_isolated`), and from the optimizer's lr at the observed steps
    (``lr_series``) and the fed loss's recovered ``spikes``, scan's spike cycles
    (:func:`~adamdiag.analysis.evidence.spike_cycles`, with :func:`~adamdiag.analysis.evidence.pre_event_r`),
    decided by scan's
    :func:`~adamdiag.analysis.verdicts.decide`: its verdict and rule, and scan's warning step
    (:func:`~adamdiag.analysis.verdicts.v_collapse_warning_step`; the jump's step for a bad batch).
    ``None`` with fewer than two points."""
    from adamdiag.analysis.verdicts import decide, v_collapse_warning_step

    tr = track.trajectory("global", eps, beta2, recent=True)
    if len(tr.steps) < 2:
        return None
    collapses = logged_collapses([tr], at)
    fall = vhat_fall([tr], [], at, beta2)
    event = at if blowup is None else blowup
    jump = abrupt_gradient_jump(event, grad_norm) if grad_norm is not None and len(grad_norm[0]) else None
    if jump is not None:
        jump["isolated"] = jump_is_isolated(jump, grad_norm)
        jump["source"] = "monitor: per-step estimate from a strided sample of the gradients"
    cycles = spike_cycles([tr], lr_series, list(spikes or []), event, beta2) if lr_series is not None else None
    ev = _evidence(
        loss_tag="loss (log_loss)",
        n_loss_points=MIN_LOSS_POINTS,
        events=LossEvents(blowup_step=event),
        event_step=event,
        trajectories=[tr],
        collapses=collapses,
        vhat_fall=fall,
        grad_jump=jump,
        pre_event_r=pre_event_r([tr], event),
        spike_cycles=cycles,
        beta2=beta2,
        eps=eps,
    )
    d = decide(ev)
    if d.verdict == "bad_batch" and jump is not None:
        return BlowupEvidence(d.verdict, d.rule, int(jump["step"]), F.bad_batch(ev, d))
    warn = v_collapse_warning_step(ev, d)  # scan's warning step of the decided rule (None: not v_collapse)
    return BlowupEvidence(d.verdict, d.rule, warn)


def grad_norm_pending(grad_norm: tuple[np.ndarray, np.ndarray], blowup: int | None) -> bool:
    """True while the per-step gradient norm does not yet reach the points scan's one-batch test reads:
    the steps next to the ``blowup`` and the one after a jump there (is it gone at the next step?).
    The fed loss of a step usually arrives before that step's optimizer update."""
    steps = grad_norm[0]
    if blowup is None or not len(steps):
        return False
    return int(steps[-1]) < int(blowup) + 2


def collapse_finding(track: Track, label: str, eps: float, beta2: float) -> Finding | None:
    """AD101 as scan reports a collapse in a run that has not blown up (yet) — scan's own function."""
    tr = track.trajectory(label, eps, beta2)
    if collapse_stretch(tr, None, beta2) is None:  # pragma: no cover - the Track fired on the same rule
        return None
    out = F.collapse_in_progress(_evidence(trajectories=[tr], beta2=beta2, eps=eps), beta2)
    return out[0] if out else None


def regrowth_findings(peaks: list[tuple[str, float, int]]) -> list[Finding]:
    """AD102 (scan's function) for (label, r, step) peaks just before a blowup: the gradients re-grew."""
    return F.regrowth(_evidence(regrowth=peaks)) if peaks else []


def update_rms_finding(label: str, step: int, value: float) -> Finding:
    """AD103 (scan's function)."""
    return F.update_rms(_evidence(update_rms=[(label, value, step)]))[0]


def nonfinite_finding(step: int, tensors: list[str] | None = None, source: str = "loss") -> Finding:
    """AD401 (scan's function): a non-finite loss, or NaN/Inf in the gradients or state of ``tensors``."""
    events = types.SimpleNamespace(first_nonfinite_step=None if tensors else step)
    problems = [StateProblem(step=step, tensor=t, kind="nonfinite") for t in tensors or []]
    return F.nonfinite(_evidence(events=events, state_problems=problems, loss_tag=source))[0]


def loss_events(points: list[tuple[int, float]]) -> LossEvents:
    """scan's loss-event detector on the fed loss points (step, value)."""
    if len(points) < 2:
        return LossEvents()
    a = np.array(points, dtype=np.float64)
    return detect_loss_events(a[:, 0].astype(np.int64), a[:, 1])


def loss_findings(points: list[tuple[int, float]], events: LossEvents | None = None) -> list[Finding]:
    """AD001/AD002 (scan's detector and texts) on the fed loss points (step, value); ``events``: the
    detector's result on them when already computed."""
    ev = loss_events(points) if events is None else events
    return F.loss_events(_evidence(events=ev, loss_tag="loss (log_loss)", task_events={}))


def event_start(events: LossEvents) -> int | None:
    """Where scan measures the collapse against: the start of the instability episode that ends in the
    blowup (scan's :func:`~adamdiag.analysis.evidence.episode_start`), None without a blowup."""
    return episode_start(events) if events.blowup_step is not None else None
