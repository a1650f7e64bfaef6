"""Pure analysis of a replay: spikes, fidelity against the log, the verdict; and the result object.

No torch, no I/O. The result serializes to the ``adamdiag.replay/1`` JSON contract (docs/architecture.md, "Contracts"); the
renderers (:mod:`adamdiag.render.replay`) only format it.

Blowup step: one definition for scan and replay. The logged curve is judged by
:func:`adamdiag.analysis.signals.detect_loss_events` exactly as ``scan`` judges it; a replayed curve is
the same function on the log up to the checkpoint followed by the replayed losses at the log's own
steps (the curve scan would have seen had the run gone that way). A variant's ``blowup_step`` is the
first blowup (or non-finite loss) after the checkpoint. The older spike rule (:class:`SpikeRule`)
only sets the reference level shown in the text and the plot.

Outcomes (issue 12): ``blowup`` (a blowup after the checkpoint), ``at_risk`` (none within the horizon,
but v is still collapsing at its end -- see :func:`risk_evidence` -- or the variant was cut short by a
budget: ``truncated``), ``avoided`` (neither). Only ``avoided`` proves a fix: a lower lr on a stale v
often only postpones the blowup (docs/architecture.md, "The mechanism": adaptive edge of stability).

Fidelity rule: the replay with the checkpoint's own hyperparameters must reproduce the log, in two
parts. *Tracking*: over the logged steps of the first half of the way from the checkpoint to the
logged blowup (the whole window when none is logged) the maximum relative deviation
|replayed − logged| / |logged| must be ≤ ``FIDELITY_MAX_REL_DEV`` (1e-3: float32 replays on the same
kind of device agree to ~1e-6, bit for bit on the same machine, while a wrong data order, model or
loss is off by 0.3-1 from the first steps). *The event*: the replay must spike iff the log does, within
``spike_tolerance`` steps of the logged blowup. Why not track all the way to the blowup: the run is
already unstable before its loss shows it, and the instability amplifies rounding differences
exponentially. Measured on the shipped sample (checkpoint 600, blowup logged at 663): weights perturbed
by 1e-7 relative deviate by 6e-6 at step 630, 2e-3 at 650 and 0.5 at 662, and blow up at 665; a
replay of that CPU-trained run on an H200 likewise deviated by 0.5 at step 662. A replay on other
hardware reproduces the event, not the last digits of its approach.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from adamdiag.analysis.signals import detect_loss_events
from adamdiag.analysis.thresholds import (
    BLOWUP_FACTOR,
    BLOWUP_HORIZON,
    BLOWUP_PEAK_FACTOR,
    BLOWUP_PERSIST,
    COLLAPSE_R,
    DATA_EVENT_SPREAD,
    FIDELITY_MAX_REL_DEV,
    HORIZON_GAP_FACTOR,
    HORIZON_MEMORIES,
    HORIZON_SCHEDULE_MAX_FACTOR,
    MIN_LOG_SCALE,
    OUTCOME_EPS_FACTOR,
    OUTCOME_WINDOW_MEMORY_FRACTION,
    OUTCOME_WINDOW_MIN_STEPS,
    REPLAY_PREFIX_POINTS,
    SPIKE_STEP_TOLERANCE_FRACTION,
    SPIKE_Z,
    TINY,
    TRACK_FRACTION,
)
from adamdiag.results.report import json_safe

SCHEMA = "adamdiag.replay/1"
REFERENCE_POINTS = 50
SUSTAIN_POINTS = 3
MIN_REFERENCE_POINTS = 5
OUTCOMES = ("avoided", "at_risk", "blowup")  # best first


@dataclass
class SpikeRule:
    """Reference level and threshold for calling a loss curve's rise a spike."""

    level: float  # median reference loss
    scale: float  # robust sigma (log space when ``log``, else absolute)
    threshold: float  # rise (log space when ``log``) that counts
    points: int  # how many logged points made the reference
    log: bool = True

    @property
    def factor(self) -> float:
        """Loss / level that counts as a spike (log rule)."""
        return math.exp(self.threshold) if self.log else float("nan")

    def _z(self, values: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(values) if self.log else values

    def first_spike(self, steps: np.ndarray, values: np.ndarray) -> int | None:
        """First step of ``values`` that spikes (see the module docstring), or None."""
        steps = np.asarray(steps)
        values = np.asarray(values, dtype=np.float64)
        if not len(values):
            return None
        ref = math.log(self.level) if self.log else self.level
        z = self._z(values)
        sustain = math.log(BLOWUP_FACTOR) if self.log else max(abs(self.level), self.scale)
        for i in range(len(values)):
            if not np.isfinite(values[i]):
                return int(steps[i])
            if self.log and values[i] <= 0:  # a loss at/below zero is not a rise
                continue
            if z[i] - ref > self.threshold:
                window = z[i : i + SUSTAIN_POINTS]
                window = np.where(np.isfinite(window), window, np.inf)  # a NaN after it only confirms it
                if float(np.median(window)) - ref > sustain:
                    return int(steps[i])
        return None


def reference_rule(
    logged_steps: np.ndarray, logged_values: np.ndarray, start_step: int, fallback: np.ndarray | None = None
) -> tuple[SpikeRule | None, str | None]:
    """Spike rule from the last REFERENCE_POINTS finite logged losses at steps <= ``start_step``;
    with too few of them, from ``fallback`` (the first replayed losses of the original). Returns the
    rule and a warning, if any."""
    steps = np.asarray(logged_steps)
    vals = np.asarray(logged_values, dtype=np.float64)
    sel = vals[(steps <= start_step) & np.isfinite(vals)][-REFERENCE_POINTS:]
    warning = None
    if len(sel) < MIN_REFERENCE_POINTS:
        fb = np.asarray(fallback if fallback is not None else [], dtype=np.float64)
        fb = fb[np.isfinite(fb)][:REFERENCE_POINTS]
        if len(fb) < MIN_REFERENCE_POINTS:
            return None, "too few logged losses before the checkpoint to set a reference level"
        warning = (
            f"only {len(sel)} logged losses at or before step {start_step}; the spike reference uses "
            f"the first {len(fb)} replayed losses of the original settings"
        )
        sel = fb
    if (sel > 0).all():
        z = np.log(sel)
        med = float(np.median(z))
        scale = max(1.4826 * float(np.median(np.abs(z - med))), MIN_LOG_SCALE)
        return SpikeRule(
            level=math.exp(med), scale=scale, threshold=max(math.log(BLOWUP_FACTOR), SPIKE_Z * scale), points=len(sel)
        ), warning
    med = float(np.median(sel))
    scale = max(1.4826 * float(np.median(np.abs(sel - med))), 0.01 * abs(med), 1e-12)
    return SpikeRule(
        level=med, scale=scale, threshold=max(SPIKE_Z * scale, abs(med)), points=len(sel), log=False
    ), warning


def default_horizon(
    start_step: int, logged_blowup: int | None, last_logged: int | None, beta2s: list[float]
) -> tuple[int | None, str]:
    """Replay length when --steps is not given (issue 12): past the logged blowup by v's memory,
    HORIZON_MEMORIES/(1-β2) steps (the largest β2 among the variants: the slowest v to decay again),
    and at least HORIZON_GAP_FACTOR x the checkpoint->blowup gap; without a logged blowup after the
    checkpoint, to the last logged step. Returns (steps, why) or (None, why) when impossible.

    >>> default_horizon(600, 663, 2000, [0.999])
    (1063, 'to the logged blowup at step 663 + 1/(1-β2) = 1000 steps')
    >>> default_horizon(100, 400, None, [0.9])[0]  # 2x the gap (300) > gap + 10
    600
    """
    if logged_blowup is not None:
        gap = logged_blowup - start_step
        memory = math.ceil(HORIZON_MEMORIES / (1.0 - max(beta2s)))
        n = max(gap + memory, math.ceil(HORIZON_GAP_FACTOR * gap))
        if n == gap + memory:
            return n, f"to the logged blowup at step {logged_blowup} + 1/(1-β2) = {memory} steps"
        return (
            n,
            f"{HORIZON_GAP_FACTOR:g}x the {gap} steps from the checkpoint to the logged blowup at step {logged_blowup}",
        )
    if last_logged is None or last_logged <= start_step:
        return None, f"no logged loss after step {start_step}; pass --steps"
    return last_logged - start_step, "to the last logged step (no blowup logged after the checkpoint)"


def schedule_horizon(
    start_step: int, from_step: int, n: int, lr_at: Callable[[int], Any], beta2s: list[float]
) -> tuple[int, str | None]:
    """The default horizon ``n`` (steps after ``start_step``), run on past a rise of the run's lr schedule
    ``lr_at(t)`` (the lr of update t; a list per param group: the largest) after ``from_step`` (the
    logged blowup): to the step where that rise ends + HORIZON_MEMORIES/(1-β2), at most
    HORIZON_SCHEDULE_MAX_FACTOR x ``n``. A variant that survived only a lower lr than the run goes on to
    — a warm-up still under way — has not shown it avoids the blowup (a smaller step from a larger eps
    only postpones the edge of stability then), and v needs its memory at the final lr to settle.
    Returns (steps, why or None when unchanged); a schedule that raises keeps ``n`` (the replay reports
    it).

    >>> warm = lambda t: 0.3 * min(t, 200) / 200  # linear warm-up over 200 steps
    >>> schedule_horizon(50, 54, 104, warm, [0.99])  # still rising at the plain horizon's end (154)
    (250, 'the lr schedule rises until step 200, after the logged blowup: to there + 1/(1-β2) = 100 steps')
    >>> schedule_horizon(100, 107, 109, warm, [0.99])[0]  # the rise ends inside it (200), too close to its end
    200
    >>> schedule_horizon(250, 260, 133, warm, [0.99])  # past the warm-up: unchanged
    (133, None)
    """
    memory = math.ceil(HORIZON_MEMORIES / (1.0 - max(beta2s)))
    cap = math.ceil(HORIZON_SCHEDULE_MAX_FACTOR * n)

    def lr(t: int) -> float:
        v = lr_at(t)
        return max(float(x) for x in v) if isinstance(v, (list, tuple)) else float(v)

    # Each lr evaluated once (a user's schedule may be costly; the horizon may be 10^6 steps): the last
    # step t in (from_step, end] with lr(t) > lr(t-1), walking back; then forward while it keeps rising.
    try:
        end = start_step + n
        t, later = None, lr(end)
        for u in range(end - 1, max(from_step, start_step) - 1, -1):
            cur = lr(u)
            if later > cur:
                t = u + 1
                break
            later = cur
        if t is None:
            return n, None
        cur = lr(t)
        while t - start_step < cap and (nxt := lr(t + 1)) > cur:
            t, cur = t + 1, nxt
    except Exception:  # noqa: BLE001 - the replay calls the schedule again and reports what it raises
        return n, None
    steps = max(n, min(cap, t - start_step + memory))
    if steps == n:
        return n, None
    if t - start_step >= cap:
        return steps, f"the lr schedule still rises at step {t}: to {HORIZON_SCHEDULE_MAX_FACTOR:g}x the plain horizon"
    return steps, f"the lr schedule rises until step {t}, after the logged blowup: to there + 1/(1-β2) = {memory} steps"


def first_blowup(steps: np.ndarray, values: np.ndarray) -> int | None:
    """The blowup step as ``scan`` reports it: :func:`detect_loss_events`'s blowup, or the first
    non-finite loss when that comes first (the detector analyses the finite prefix only)."""
    ev = detect_loss_events(np.asarray(steps), np.asarray(values, dtype=np.float64))
    return ev.blowup_step if ev.blowup_step is not None else ev.first_nonfinite_step


class BlowupJudge:
    """Blowup steps of the logged and replayed curves, by scan's own detector (module docstring).

    A replayed curve is judged as the log up to the checkpoint (its last REPLAY_PREFIX_POINTS points)
    followed by the replayed losses at the log's steps (and, past the log's end, at its logging
    interval), so a log written every N steps and a replay of every step are read at the same resolution.
    """

    def __init__(self, logged_steps: np.ndarray, logged_values: np.ndarray, start_step: int) -> None:
        steps = np.asarray(logged_steps, dtype=np.int64)
        values = np.asarray(logged_values, dtype=np.float64)
        self.start_step = int(start_step)
        self.logged_blowup = first_blowup(steps, values) if len(steps) else None
        before = steps <= start_step
        # the log before the checkpoint, its last REPLAY_PREFIX_POINTS points (thresholds.py says why)
        self.prefix_steps = steps[before][-REPLAY_PREFIX_POINTS:]
        self.prefix_values = values[before][-REPLAY_PREFIX_POINTS:]
        after = steps[~before]
        self.grid = after  # logged steps after the checkpoint
        diffs = np.diff(steps)
        self.interval = max(1, int(np.median(diffs))) if len(diffs) else 1
        self.last_logged = int(steps.max()) if len(steps) else start_step
        finite = self.prefix_values[np.isfinite(self.prefix_values)]
        # The detector measures rises against medians of the curve itself, so a blowup needs a value
        # a decade above the curve's minimum: a cheap necessary test before running it.
        self.prefix_min = float(finite.min()) if len(finite) else math.inf
        self.positive = bool(len(finite) == 0 or finite.min() > 0)

    def curve(self, losses: list[float]) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values): the log up to the checkpoint, then ``losses`` (entry i = step start+1+i)
        sampled like the log; a non-finite replayed loss is always kept (it ends the curve)."""
        n = len(losses)
        end = self.start_step + n
        grid = self.grid[self.grid <= end]
        if end > self.last_logged:
            first = max(self.last_logged, self.start_step) + self.interval
            grid = np.r_[grid, np.arange(first, end + 1, self.interval, dtype=np.int64)]
        arr = np.asarray(losses, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(arr))
        if len(bad):
            nf = self.start_step + 1 + int(bad[0])
            grid = np.unique(np.r_[grid[grid < nf], nf])
        if self.interval == 1 and len(grid) == n:
            return np.r_[self.prefix_steps, grid], np.r_[self.prefix_values, arr]
        return np.r_[self.prefix_steps, grid], np.r_[self.prefix_values, arr[grid - self.start_step - 1]]

    def blowup_step(self, losses: list[float]) -> int | None:
        """First blowup (or non-finite loss) of the replayed curve after the checkpoint, or None."""
        if not len(losses):
            return None
        arr = np.asarray(losses, dtype=np.float64)
        if np.isfinite(arr).all() and self.positive:
            lo = min(self.prefix_min, float(arr.min()))
            if lo > 0 and float(arr.max()) < BLOWUP_PEAK_FACTOR * lo:
                return None
        steps, values = self.curve(losses)
        b = first_blowup(steps, values)
        return b if b is not None and b > self.start_step else None

    def stop_after(self, losses: list[float]) -> int | None:
        """How many replayed steps settle this variant's blowup step for good, once it has blown up
        (None while it has not): the detector confirms an onset within BLOWUP_HORIZON steps, so an
        earlier onset can still be confirmed until then -- a variant stops that far past its blowup
        (or at its first non-finite loss, after which nothing can be replayed)."""
        b = self.blowup_step(losses)
        if b is None:
            return None
        if not np.isfinite(np.asarray(losses, dtype=np.float64)).all():
            return len(losses)
        return b - self.start_step + BLOWUP_HORIZON


@dataclass
class ScopeSeries:
    """Per-step moments of one scope (all parameters, or one named tensor) of one variant; entry i is
    step start+1+i. ``g2_mean``: mean g² of the (clipped) gradient Adam used; ``vhat_prev_mean``: mean
    v̂_{t-1} before update t; ``median_sqrt_vhat``: median √v̂_t after it (see engine.py)."""

    g2_mean: list[float] = field(default_factory=list)
    vhat_prev_mean: list[float] = field(default_factory=list)
    median_sqrt_vhat: list[float] = field(default_factory=list)


def outcome_window(beta2: float) -> int:
    """Steps at the end of the replay over which at_risk is judged: max(50, 0.2/(1-β2)).

    >>> outcome_window(0.999), outcome_window(0.9), outcome_window(0.99)
    (200, 50, 50)
    """
    return max(OUTCOME_WINDOW_MIN_STEPS, math.ceil(OUTCOME_WINDOW_MEMORY_FRACTION / (1.0 - beta2) - 1e-9))


def risk_evidence(series: ScopeSeries, beta2: float, eps: float, scope: str) -> dict[str, Any]:
    """Is v still collapsing at the end of the replay in this scope? Over the last
    :func:`outcome_window` steps (all of them when fewer were replayed): r = Σ g² / Σ v̂_{t-1}
    (a ratio of window means: one quiet or noisy batch does not decide it) below COLLAPSE_R, and
    median √v̂ at the end above OUTCOME_EPS_FACTOR·eps (eps does not bound the step yet; eps_eff = eps
    in the torch convention, added to √v̂) and below its value at the window's start (still falling).
    """
    n = len(series.g2_mean)
    w = min(outcome_window(beta2), n)
    out: dict[str, Any] = {"scope": scope, "window": w, "at_risk": False}
    if w < 2:
        return out
    g2 = np.asarray(series.g2_mean[-w:], dtype=np.float64)
    vp = np.asarray(series.vhat_prev_mean[-w:], dtype=np.float64)
    med = np.asarray(series.median_sqrt_vhat[-w:], dtype=np.float64)
    r = float(g2.sum() / vp.sum()) if vp.sum() > 0 else math.nan
    start, end = float(med[0]), float(med[-1])
    out.update(r=r, median_sqrt_vhat_start=start, median_sqrt_vhat_end=end, eps=float(eps))
    out["at_risk"] = bool(r < COLLAPSE_R and end > OUTCOME_EPS_FACTOR * eps and end < start)
    return out


def decide_outcome(
    blowup_step: int | None, truncated: bool, scopes: dict[str, ScopeSeries], beta2: float, eps: float
) -> tuple[str, dict[str, Any] | None]:
    """(outcome, the evidence that made it at_risk or None). ``scopes``: "global" first, then the
    named tensors; any scope still collapsing makes the variant at_risk (a small tensor can collapse
    while the global mean does not)."""
    if blowup_step is not None:
        return "blowup", None
    if truncated:
        return "at_risk", {"scope": "budget", "at_risk": True}
    ev = [risk_evidence(s, beta2, eps, name) for name, s in scopes.items()]
    risky = [e for e in ev if e["at_risk"]]
    if risky:
        return "at_risk", risky[0]
    return "avoided", (ev[0] if ev else None)


@dataclass
class Fidelity:
    """Does the replay with the original settings reproduce the log?"""

    max_rel_dev: float  # over logged steps before the logged blowup; NaN when none to compare
    reproduced: bool
    threshold: float = FIDELITY_MAX_REL_DEV
    compared_steps: int = 0
    max_rel_dev_step: int | None = None
    logged_spike_step: int | None = None
    replayed_spike_step: int | None = None
    message: str = ""
    tracked_until: int | None = None  # last step of the tracking window (see the module docstring)
    spike_tolerance: int | None = None  # |replayed - logged blowup step| allowed


def tracking_window_end(start_step: int, logged_spike: int | None, end_step: int) -> int:
    """Last step whose logged loss the replay must match to FIDELITY_MAX_REL_DEV.

    >>> tracking_window_end(600, 663, 700), tracking_window_end(600, None, 700)
    (631, 700)
    """
    if logged_spike is None:
        return end_step
    return start_step + max(1, int((logged_spike - start_step) * TRACK_FRACTION))


def spike_step_tolerance(start_step: int, logged_spike: int, logged_steps: np.ndarray) -> int:
    """How far the replayed blowup may land from the logged one: a tenth of the way from the
    checkpoint (the rounding-amplified timing shift; 2 steps at 63 on the sample), and never less
    than the logging interval there (the log cannot place the blowup more precisely).

    >>> spike_step_tolerance(600, 663, np.arange(600, 700)), spike_step_tolerance(0, 100, np.arange(0, 200, 10))
    (7, 10)
    """
    before = np.asarray(logged_steps)[np.asarray(logged_steps) < logged_spike]
    interval = int(logged_spike - before.max()) if len(before) else 1
    return max(interval, math.ceil((logged_spike - start_step) * SPIKE_STEP_TOLERANCE_FRACTION))


def _rel_dev(
    rep: dict[int, float], logged: dict[int, float], steps: list[int], shift: int = 0
) -> tuple[float, int | None, int]:
    worst, at, n = 0.0, None, 0
    for t in steps:
        if t + shift not in logged or t not in rep:
            continue
        a, b = rep[t], logged[t + shift]
        if not math.isfinite(b):
            continue
        d = abs(a - b) / max(abs(b), 1e-12) if math.isfinite(a) else math.inf
        n += 1
        if d > worst or at is None:
            worst, at = d, t
    return (worst if n else math.nan), at, n


def check_fidelity(
    start_step: int,
    replayed: list[float],
    logged_steps: np.ndarray,
    logged_values: np.ndarray,
    end_step: int,
    *,
    logged_blowup: int | None,
    replayed_blowup: int | None,
) -> Fidelity:
    """Compare the original settings' replay with the log over steps start+1..end_step (the rule
    in the module docstring: track the log, then reproduce the blowup). The blowup steps come from
    :class:`BlowupJudge` (scan's detector); a logged blowup past ``end_step`` is outside the replay."""
    rep = {start_step + 1 + i: float(x) for i, x in enumerate(replayed)}
    win = (logged_steps > start_step) & (logged_steps <= end_step)
    lsteps, lvals = np.asarray(logged_steps)[win], np.asarray(logged_values, dtype=np.float64)[win]
    logged = {int(s): float(v) for s, v in zip(lsteps, lvals)}
    in_window = logged_blowup is not None and start_step < logged_blowup <= end_step
    logged_spike = logged_blowup if in_window else None
    replayed_spike = replayed_blowup
    track_end = tracking_window_end(start_step, logged_spike, end_step)
    tracked = [t for t in sorted(logged) if t <= track_end and (logged_spike is None or t < logged_spike)]
    dev, at, n = _rel_dev(rep, logged, tracked)
    f = Fidelity(
        max_rel_dev=dev,
        reproduced=False,
        compared_steps=n,
        max_rel_dev_step=at,
        logged_spike_step=logged_spike,
        replayed_spike_step=replayed_spike,
        tracked_until=track_end,
    )
    thr = FIDELITY_MAX_REL_DEV
    where = (
        f"up to step {track_end} (half way to the logged blowup at step {logged_spike})"
        if logged_spike is not None
        else "in the replayed steps"
    )
    if not logged:
        f.message = f"no logged loss between steps {start_step + 1} and {end_step} to compare the replay with"
        return f
    if n and not dev <= thr:
        f.message = (
            f"the replay does not reproduce the logged loss: max relative deviation {dev:.3g} at step {at} "
            f"{where} (threshold {thr:g})"
        )
        hints = []
        for shift in (-1, 1):
            d2, _, n2 = _rel_dev(rep, logged, tracked, shift)
            if n2 and d2 <= thr:
                hints.append(
                    f"the replay matches the log shifted by {shift:+d} step: pass --log-step-offset "
                    f"{shift:+d} (or log loss(model, batch(t)) computed before update t at step t)"
                )
        hint = (
            hints[0]
            if hints
            else (
                "check that batch(t) yields the batch of optimizer step t (same data order, "
                "1-based), that the model, loss and clipping match the run, and the device it trained on (--device)"
            )
        )
        f.message += f"; {hint}"
        return f
    if logged_spike is not None and replayed_spike is None:
        f.message = (
            f"the replay does not reproduce the logged blowup at step {logged_spike} "
            f"(max relative deviation {dev:.3g} {where})"
        )
        return f
    if logged_spike is None and replayed_spike is not None:
        f.message = f"the replay spikes at step {replayed_spike} but the log does not"
        return f
    if logged_spike is not None and replayed_spike is not None:
        tol = f.spike_tolerance = spike_step_tolerance(start_step, logged_spike, np.asarray(logged_steps))
        if abs(replayed_spike - logged_spike) > tol:
            when = "before" if replayed_spike < logged_spike else "after"
            f.message = (
                f"the replay blows up at step {replayed_spike}, {abs(replayed_spike - logged_spike)} steps "
                f"{when} the logged blowup at step {logged_spike} (tolerance {tol})"
            )
            return f
    f.reproduced = True
    if n:
        f.message = (
            f"the original settings reproduce the log: max relative deviation {dev:.3g} over {n} logged "
            f"steps {where} (threshold {thr:g})"
        )
    else:
        f.message = (
            f"no logged loss {where} inside the replay; fidelity rests on the reproduced blowup at step "
            f"{replayed_spike}"
        )
    if logged_spike is not None:
        f.message += (
            f"; blowup reproduced at step {replayed_spike} (logged: {logged_spike}, tolerance {f.spike_tolerance})"
        )
    return f


@dataclass
class VariantOutcome:
    """One replayed variant, summarized (the JSON contract's fields first). ``spike``/``spike_step``
    are kept for readers of the first replay/1 files and equal ``blowup_step is not None`` /
    ``blowup_step`` (one definition of the blowup)."""

    name: str
    eps: float
    beta2: float
    lr: float
    max_loss: float
    final_loss: float
    spike: bool
    spike_step: int | None
    max_update_rms: float
    outcome: str = "avoided"  # avoided | at_risk | blowup (module docstring)
    blowup_step: int | None = None
    truncated: bool = False  # cut short by a time budget before the horizon (then at_risk)
    risk: dict[str, Any] | None = None  # the at_risk test's numbers (risk_evidence)
    min_sqrt_vhat: float = math.nan  # min over steps of sqrt(mean v̂)
    max_frac_eps_dominated: float = math.nan  # max over steps of the fraction with √v̂ < eps
    steps_replayed: int = 0
    nonfinite_step: int | None = None
    losses: list[float] = field(default_factory=list)


def _nanmax(xs: list[float]) -> float:
    a = np.asarray(xs, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.max()) if len(a) else math.nan


def _nanmin(xs: list[float]) -> float:
    a = np.asarray(xs, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.min()) if len(a) else math.nan


def summarize_variant(
    name: str,
    eps: float,
    beta2: float,
    lr: float,
    start_step: int,
    losses: list[float],
    update_rms: list[float],
    sqrt_vhat: list[float],
    frac_eps: list[float],
    judge: BlowupJudge,
    *,
    scopes: dict[str, ScopeSeries] | None = None,
    truncated: bool = False,
) -> VariantOutcome:
    """Summary numbers and the outcome of one replayed curve; a non-finite loss makes max_loss infinite."""
    steps = np.arange(start_step + 1, start_step + 1 + len(losses))
    arr = np.asarray(losses, dtype=np.float64)
    nonfinite = int(steps[~np.isfinite(arr)][0]) if len(arr) and not np.isfinite(arr).all() else None
    blowup = judge.blowup_step(losses)
    outcome, risk = decide_outcome(blowup, truncated, scopes or {}, beta2, eps)
    return VariantOutcome(
        name=name,
        eps=float(eps),
        beta2=float(beta2),
        lr=float(lr),
        max_loss=(math.inf if nonfinite is not None else _nanmax(losses)),
        final_loss=float(arr[-1]) if len(arr) else math.nan,
        spike=blowup is not None,
        spike_step=blowup,
        max_update_rms=_nanmax(update_rms),
        outcome=outcome,
        blowup_step=blowup,
        truncated=bool(truncated and blowup is None),
        risk=risk,
        min_sqrt_vhat=_nanmin(sqrt_vhat),
        max_frac_eps_dominated=_nanmax(frac_eps),
        steps_replayed=len(losses),
        nonfinite_step=nonfinite,
        losses=[float(x) for x in losses],
    )


def _risk_phrase(v: VariantOutcome, end_step: int) -> str:
    if v.truncated:
        return f"{v.name} was cut short by the time budget after {v.steps_replayed} steps without a blowup"
    r = v.risk or {}
    where = "" if r.get("scope") in (None, "global") else f" in {r['scope']}"
    if "r" in r:
        return (
            f"{v.name} reaches step {end_step} without a blowup, but v is still collapsing{where} "
            f"(g²/v̂ {r['r']:.2g} < {COLLAPSE_R:g}, median √v̂ {r['median_sqrt_vhat_end']:.2g} > "
            f"{OUTCOME_EPS_FACTOR:g}·eps and falling)"
        )
    return f"{v.name} reaches step {end_step} without a blowup, but v is still collapsing"


def postponed(v: VariantOutcome, orig: VariantOutcome, start_step: int) -> bool:
    """Does ``v`` blow up clearly later than the original? Later by more than the replay's own timing
    jitter -- the fidelity tolerance, a tenth of the way from the checkpoint -- and the detector's
    persistence window (BLOWUP_PERSIST steps): closer than that it is the same blowup."""
    if v.blowup_step is None or orig.blowup_step is None:
        return False
    margin = max(BLOWUP_PERSIST, math.ceil((orig.blowup_step - start_step) * SPIKE_STEP_TOLERANCE_FRACTION))
    return v.blowup_step > orig.blowup_step + margin


def common_blowup(variants: list[VariantOutcome], start_step: int = 0) -> int | None:
    """The step at which every changed variant blows up together, later than the original, whatever its
    change — eps and lr alike, or settings a decade apart: an event in the data or the objective at that
    step (a new data mixture, a loss term switched on), which no optimizer setting moves. None otherwise.

    >>> def v(name, eps, lr, step): return VariantOutcome(name, eps, 0.999, lr, 1.0, 1.0, True, step, 1.0, "blowup", step)
    >>> runs = [v("original", 1e-8, 1e-2, 342), v("eps=0.001", 1e-3, 1e-2, 1201), v("lr=0.001", 1e-8, 1e-3, 1201)]
    >>> common_blowup(runs, 300)
    1201
    >>> common_blowup([runs[0], runs[1], v("lr=0.001", 1e-8, 1e-3, 900)], 300) is None
    True
    """
    orig, alts = variants[0], variants[1:]
    if len(alts) < 2 or not all(v.outcome == "blowup" and postponed(v, orig, start_step) for v in alts):
        return None
    steps = [int(v.blowup_step) for v in alts if v.blowup_step is not None]
    if max(steps) - min(steps) > BLOWUP_PERSIST:
        return None
    return min(steps) if _wide_changes(orig, alts) else None


def _wide_changes(orig: VariantOutcome, alts: list[VariantOutcome]) -> bool:
    """The alternates changed eps and lr alike, or one of them by DATA_EVENT_SPREAD or more between them:
    changes wide enough that a blowup none of them moves is no optimizer setting's."""
    kinds = {("eps" if v.eps != orig.eps else "") + ("lr" if v.lr != orig.lr else "") for v in alts}

    def spread(xs: list[float]) -> float:
        return max(xs) / max(min(xs), TINY)

    return len(kinds) > 1 or max(spread([v.eps for v in alts]), spread([v.lr for v in alts])) >= DATA_EVENT_SPREAD


def unmoved_blowup(variants: list[VariantOutcome]) -> int | None:
    """The original's blowup step when every changed variant blows up there too (within the detector's
    persistence window), whatever its change — eps and lr alike, or settings a decade apart. From the start
    checkpoint on, no optimizer setting moves it: the weights there meet something new in the data or the
    objective at that step (a new vocabulary, a loss term switched on), or were already damaged before the
    checkpoint (weights that drifted during a v collapse, met by the data that returns). None otherwise.

    >>> def v(name, eps, lr, step): return VariantOutcome(name, eps, 0.999, lr, 1.0, 1.0, True, step, 1.0, "blowup", step)
    >>> runs = [v("original", 1e-8, 1e-2, 3000), v("eps=0.1", 1e-1, 1e-2, 3000), v("lr=0.001", 1e-8, 1e-3, 3001)]
    >>> unmoved_blowup(runs)
    3000
    >>> unmoved_blowup([runs[0], runs[1], v("lr=0.001", 1e-8, 1e-3, 3200)]) is None
    True
    """
    orig, alts = variants[0], variants[1:]
    if len(alts) < 2 or orig.outcome != "blowup" or orig.blowup_step is None:
        return None
    if not all(
        v.outcome == "blowup"
        and v.blowup_step is not None
        and abs(v.blowup_step - orig.blowup_step) <= BLOWUP_PERSIST  # never postponed: its margin is wider
        for v in alts
    ):
        return None
    return int(orig.blowup_step) if _wide_changes(orig, alts) else None


def conclude(variants: list[VariantOutcome], start_step: int = 0) -> tuple[str, int, str]:
    """(conclusion, exit code, one sentence). Exit 0 only when some variant is ``avoided``:

    - ``no_blowup``: the original settings are avoided themselves (nothing to fix in these steps);
    - ``fixed``: an alternate is avoided;
    - ``postponed`` (exit 1): the best any variant does is at_risk -- no blowup within the horizon but
      v still collapsing, or a later blowup than the original's (rule AD106);
    - ``not_fixed`` (exit 1): every variant blows up no later than the original.
    A variant that blows up later than the original is named as postponing it either way."""
    orig, alts = variants[0], variants[1:]
    later = [v for v in alts if v.outcome == "blowup" and postponed(v, orig, start_step)]
    notes = "; ".join(f"{v.name} postpones the blowup from {orig.blowup_step} to {v.blowup_step}" for v in later)
    risky = [v for v in alts if v.outcome == "at_risk"]
    risk_notes = "; ".join(_risk_phrase(v, start_step + v.steps_replayed) for v in risky)
    extra = "; ".join(x for x in (notes, risk_notes) if x)
    if orig.outcome == "avoided":
        return "no_blowup", 0, "the original settings do not blow up in the replayed steps: nothing to fix here"
    good = [v for v in alts if v.outcome == "avoided"]
    what = (
        f"the blowup that the original settings reproduce at step {orig.blowup_step}"
        if orig.blowup_step is not None
        else "the risk the original settings end in"
    )
    if good:
        names = ", ".join(v.name for v in good)
        text = f"{names} avoid{'s' if len(good) == 1 else ''} {what}"
        return "fixed", 0, text + (f" ({extra})" if extra else "")
    at = common_blowup(variants, start_step)
    if at is not None:
        return (
            "postponed",
            1,
            f"no variant avoids the blowup, but every one moves it from {orig.blowup_step} to step {at} whatever "
            f"its change: something in the data or the objective at step {at} (a new data mix, a loss term "
            f"switched on), not the optimizer; judge the fix up to step {at - 1} (replay --steps {at - 1 - start_step})",
        )
    if risky or later or orig.outcome == "at_risk":
        head = "no variant avoids the blowup"
        if orig.outcome == "at_risk":
            head += f"; {_risk_phrase(orig, start_step + orig.steps_replayed)}"
        return "postponed", 1, f"{head}: {extra}" if extra else head
    if unmoved_blowup(variants) is not None:
        return (
            "not_fixed",
            1,
            f"every variant blows up at the original's own step {orig.blowup_step}, whatever its change: from "
            f"step {start_step} on no optimizer setting moves it — the weights there meet something new in the "
            f"data or the objective at step {orig.blowup_step}, or were damaged before step {start_step} "
            "(replay from an earlier checkpoint)",
        )
    return (
        "not_fixed",
        1,
        f"every variant blows up like the original (step {orig.blowup_step}); none of them fixes this run",
    )


def outcome_findings(variants: list[VariantOutcome], start_step: int) -> list[dict[str, Any]]:
    """AD106 findings: each variant that is at risk at the end of the replay, and each that blows up
    later than the original (a postponement, not a fix)."""
    orig = variants[0]
    out: list[dict[str, Any]] = []
    for i, v in enumerate(variants):
        msg = None
        if v.outcome == "at_risk":
            msg = _risk_phrase(v, start_step + v.steps_replayed)
        elif i and postponed(v, orig, start_step):
            msg = f"{v.name} postpones the blowup from {orig.blowup_step} to {v.blowup_step}: a postponement, not a fix"
        if msg:
            step = v.blowup_step if v.blowup_step is not None else start_step + v.steps_replayed
            out.append({"id": "AD106", "severity": "warning", "step": step, "variant": v.name, "message": msg})
    return out


@dataclass
class ReplayResult:
    """Everything a replay produced; renderers format it, nothing is recomputed."""

    checkpoint: str
    start_step: int
    steps: int
    fidelity: Fidelity
    variants: list[VariantOutcome]
    conclusion: str = ""
    exit_code: int = 0
    summary: str = ""
    tool_version: str = ""
    run: str | None = None
    loss_tag: str = "train/loss"
    entry: str = ""
    device: str = "cpu"
    mode: str = "batched"
    clip_grad_norm: float | None = None
    reference: dict[str, Any] = field(default_factory=dict)
    logged: dict[str, list] = field(default_factory=lambda: {"steps": [], "values": []})
    warnings: list[str] = field(default_factory=list)
    forced: bool = False
    # how the length was chosen: {"steps", "why", "source": "default"|"--steps"}
    horizon: dict[str, Any] = field(default_factory=dict)
    named_tensors: list[str] = field(default_factory=list)  # scopes judged besides the global one
    # rule findings (AD106 at risk / postponed): {"id", "severity", "step", "variant", "message"}
    findings: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The ``adamdiag.replay/1`` object (contract fields first), JSON-safe."""
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "checkpoint": self.checkpoint,
            "start_step": self.start_step,
            "steps": self.steps,
            "fidelity": asdict(self.fidelity),
            "variants": [asdict(v) for v in self.variants],
        }
        for k in (
            "conclusion",
            "exit_code",
            "summary",
            "tool_version",
            "run",
            "loss_tag",
            "entry",
            "device",
            "mode",
            "clip_grad_norm",
            "reference",
            "logged",
            "warnings",
            "forced",
            "horizon",
            "named_tensors",
            "findings",
        ):
            out[k] = getattr(self, k)
        return json_safe(out)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplayResult:
        """Inverse of :meth:`to_dict` (nulls that stood for non-finite numbers come back as NaN/inf)."""
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not an {SCHEMA} object (schema={data.get('schema')!r})")

        def restore(d: dict[str, Any], names: set[str]) -> dict[str, Any]:
            d = dict(d)
            for k in list(d):
                if k.endswith("_nonfinite"):
                    base = k[: -len("_nonfinite")]
                    d[base] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[d.pop(k)]
            return {k: v for k, v in d.items() if k in names}

        fid = Fidelity(**restore(data["fidelity"], set(Fidelity.__dataclass_fields__)))
        variants = []
        for v in data["variants"]:
            v = restore(v, set(VariantOutcome.__dataclass_fields__))
            v["losses"] = [math.nan if x is None else x for x in v.get("losses", [])]
            variants.append(VariantOutcome(**v))
        rest = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k not in ("fidelity", "variants")}
        return cls(fidelity=fid, variants=variants, **rest)
