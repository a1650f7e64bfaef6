"""Robust signals on logged series: loss blowups/spikes and the second-moment reconstruction.

Pure functions of numpy arrays (steps, values); no I/O. Every threshold is relative (a ratio or a
robust z-score against the series' own trailing level) and justified by the mechanism, never a
fixed level on raw values, so the same code works for a loss of 1e-4 and one of 1e3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# The thresholds live in one module with their reasons; re-exported here for existing importers.
from adamdiag.analysis.thresholds import (  # noqa: E402
    BLOWUP_FACTOR,
    BLOWUP_HORIZON,
    BLOWUP_PEAK_FACTOR,
    BLOWUP_PERSIST,
    MIN_BASELINE_POINTS,
    MIN_LOG_SCALE,
    ONSET_Z,
    SPARSE_FALL_Z,
    SPIKE_Z,
    TRAILING_STEPS,
)

__all__ = [
    "BLOWUP_FACTOR",
    "BLOWUP_HORIZON",
    "BLOWUP_PEAK_FACTOR",
    "BLOWUP_PERSIST",
    "MIN_LOG_SCALE",
    "ONSET_Z",
    "SPIKE_Z",
    "LossEvents",
    "detect_loss_events",
    "detect_loss_events_ref",
    "ema_second_moment",
    "ema_second_moment_ref",
    "rolling_mad",
    "rolling_trend",
    "rolling_median",
    "steps_per_point",
    "sustained_runs",
    "sustained_runs_ref",
]


@dataclass
class LossEvents:
    """What the loss curve shows, in step numbers of the series."""

    first_nonfinite_step: int | None = None
    blowup_step: int | None = None
    # Level (median of the trailing window) before the blowup and the peak after it.
    pre_level: float | None = None
    peak: float | None = None
    peak_step: int | None = None  # step of ``peak``
    spikes: list[int] = field(default_factory=list)  # short spikes that recovered
    # the loss level each spike rose from, as the detector measured it (NaN for a signed loss): on a sparse log of a
    # falling loss the level follows the fall (_LossLevels.of), which a median of the points before the spike does not
    spike_levels: list[float] = field(default_factory=list)
    best_step: int | None = None  # step of the lowest trailing level before the blowup
    # A rise that would have been a blowup but had fewer than MIN_BASELINE_POINTS finite points
    # before it: its step (the caller reports "too few points before the rise", never a blowup).
    unbased_rise_step: int | None = None


# the trailing window's fewest points: a stable median
WINDOW_MIN_POINTS = 10


def steps_per_point(steps: np.ndarray) -> float:
    """The log's typical spacing: the median step difference between points, at least 1 (1 for one point).

    >>> steps_per_point(np.arange(49, 500, 50)), steps_per_point(np.array([7]))
    (50.0, 1.0)
    """
    return max(1.0, float(np.median(np.diff(steps)))) if len(steps) > 1 else 1.0


def _window(n: int, per_point: float) -> int:
    """Trailing window in points covering ~TRAILING_STEPS steps (the "normal" level of the loss) of a log of ``n``
    points ``per_point`` steps apart (:func:`steps_per_point`), at least WINDOW_MIN_POINTS points for a stable
    median and at most 200."""
    return int(min(200, max(WINDOW_MIN_POINTS, round(TRAILING_STEPS / per_point), min(n // 50, 100))))


def _recent_points(per_point: float) -> int | None:
    """Points of the *recent* level of a sparse log (points ``per_point`` steps apart): those covering
    ~TRAILING_STEPS steps, at least 3 for a median; None for a log dense enough that the trailing window
    already covers ~TRAILING_STEPS. A log sparser than one point per TRAILING_STEPS/WINDOW_MIN_POINTS steps
    stretches the window's fewest points far past TRAILING_STEPS (500 steps at Lightning's default of one point
    in 50, 5000 at HF's 500), and on a loss that falls a decade in that time — the converging runs in which v
    collapses — their median is the level of hundreds of steps ago: a 20x jump off the current level reads as
    4x off that one, and no blowup.

    >>> _recent_points(50.0), _recent_points(10.0)
    (3, None)
    """
    k = max(3, round(TRAILING_STEPS / per_point))
    return k if k < WINDOW_MIN_POINTS else None


def rolling_median(x: np.ndarray, w: int) -> np.ndarray:
    """Trailing median over the previous ``w`` points (excluding the current one); NaN for i == 0."""
    import pandas as pd

    s = pd.Series(x)
    out: np.ndarray = s.shift(1).rolling(w, min_periods=1).median().to_numpy()
    return out


def rolling_trend(x: np.ndarray, w: int) -> np.ndarray:
    """Trailing median of the first differences over the previous ``w`` points: the loss's change per point
    (in log-loss, the factor it falls by) that its noise sits around; NaN for the first two points.

    >>> rolling_trend(np.log(0.5 ** np.arange(6.0)), 10).round(3).tolist()
    [nan, nan, -0.693, -0.693, -0.693, -0.693]
    """
    import pandas as pd

    out: np.ndarray = pd.Series(np.diff(x, prepend=np.nan)).shift(1).rolling(w, min_periods=1).median().to_numpy()
    return out


def rolling_mad(x: np.ndarray, w: int, *, trend: np.ndarray | None = None) -> np.ndarray:
    """Trailing robust noise scale over the previous ``w`` points, as a Gaussian sigma.

    Estimated from first differences (1.4826·median|Δx|/√2), not from deviations around a rolling
    median: on a trending loss (falling early in training, climbing in a slow blowup) the latter
    measures the trend's lag, not the noise, and would hide real jumps. ``trend``: :func:`rolling_trend`
    of ``x``, to take the differences around it — on a sparse log the trend per point is no longer small against the
    noise (a loss falling 3.5x from one point to the next, 50 steps apart, is no 3.5x noise).

    >>> z = np.log(0.5 ** np.arange(12.0))  # halving at every point, no noise
    >>> round(float(rolling_mad(z, 10)[-1]), 3), round(float(rolling_mad(z, 10, trend=rolling_trend(z, 10))[-1]), 3)
    (0.727, 0.0)
    """
    import pandas as pd

    d = pd.Series(np.diff(x, prepend=np.nan)).shift(1)
    if trend is not None:
        d = d - trend
    out: np.ndarray = (1.4826 / math.sqrt(2.0)) * d.abs().rolling(w, min_periods=1).median().to_numpy()
    return out


def _held_level(z: np.ndarray) -> np.ndarray:
    """The level held from each point: the median of it and the next two points (fewer at the end of
    the log, so a blowup the log ends on still counts). A slow climb's 10x must be reached by this, not
    by one point: near interpolation (losses ~1e-4 on mini batches) a single batch 10x above a level
    that merely doubled is noise, and the labeller's blowup (a 10x that persists) does not see one there.

    >>> import numpy as np
    >>> _held_level(np.array([0.0, 9.0, 0.0, 0.0, 5.0, 5.0, 1.0])).tolist()  # the lone 9 is no level
    [0.0, 0.0, 0.0, 5.0, 5.0, 3.0, 1.0]
    """
    import pandas as pd

    held: np.ndarray = pd.Series(z[::-1]).rolling(3, min_periods=1).median().to_numpy()[::-1]
    return held


@dataclass
class _LossLevels:
    """What both loss-event detectors (the vectorised one and its point-loop reference) compute before
    scanning: the log-level z of the finite prefix, its trailing median and robust scale, the forward
    median, the best based level so far and the running maximum ahead — and the two decisions they
    share (a confirmed blowup, and recording one)."""

    steps: np.ndarray
    values: np.ndarray
    z: np.ndarray
    lo: float
    med: np.ndarray
    scale: np.ndarray
    fwd: np.ndarray
    based: np.ndarray
    best: np.ndarray
    held: np.ndarray  # _held_level(z): the level held from each point (two of three points)
    suffix_max: np.ndarray
    warmup: int
    onset: float = math.log(BLOWUP_FACTOR)
    decade: float = math.log(BLOWUP_PEAK_FACTOR)

    @property
    def n(self) -> int:
        return len(self.values)

    @classmethod
    def of(cls, steps: np.ndarray, values: np.ndarray, ev: LossEvents) -> _LossLevels | None:
        """The levels of the series' finite prefix (``ev.first_nonfinite_step`` set on the way); None
        when fewer than 8 finite points lead it."""
        import pandas as pd

        steps = np.asarray(steps, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            ev.first_nonfinite_step = int(steps[~finite][0])
        # Analyse the finite prefix only: after the first NaN the curve says nothing about the cause.
        cut = len(values) if finite.all() else int(np.argmax(~finite))
        steps, values = steps[:cut], values[:cut]
        n = len(values)
        if n < 8:
            return None
        # A loss can't be resolved below float32 precision of its own scale (~1e-7 of the first values):
        # a non-negative loss (rounding noise aside) is floored there, so noise around zero is not read
        # as decades of change. A genuinely signed loss (e.g. a negative log-likelihood) is shifted.
        head = np.abs(values[:10])
        floor = 1e-7 * float(np.median(head)) if len(head) and np.median(head) > 0 else 1e-30
        lo = values.min()
        if lo > -100 * floor:
            z = np.log(np.maximum(values, max(floor, 1e-300)))
            lo = max(lo, floor)
        else:
            z = np.log(values - lo + max(1e-12, abs(lo) * 1e-3 + 1e-12))
        per_point = steps_per_point(steps)
        w = _window(n, per_point)
        med = rolling_median(z, w)
        scale = np.maximum(rolling_mad(z, w), MIN_LOG_SCALE)
        k = _recent_points(per_point)
        if k is not None:
            # A sparse log (see _recent_points) of a loss that falls from one point to the next by more than
            # SPARSE_FALL_Z of its own noise sigmas around that fall: there the window's median lags the loss and
            # its first differences are the trend, so the level is the lowest of the window's median, the recent
            # points' median and where the fall has got to by the last point, and the noise is measured around the
            # trend. The recent median is itself (k-1)/2 points behind: a loss falling 8-10x per point, logged every
            # 100 steps, read a 13-200x blowup point as 2-4x over it. Where the fall has got to: the larger of the
            # last point and the recent median moved on by the trend to it — never projected past the last point
            # (a fall that stops would read its first flat points as rises), and one low point alone does not set
            # it (the larger of the two); only where the loss falls ≥ BLOWUP_FACTOR per point, the fall at which a
            # median a point behind hides an onset by itself (a flat loss with σ 0.6 is "falling" by chance over
            # its first few points, and the last point as its level made 4 of 100 such logs every 20 steps blow up
            # early; 1 with this bound). Not on a flat or noisy sparse log: the lower of two medians, one of three
            # points, sits below a noisy loss's level and turns its ordinary 10x swings into blowups (on a flat
            # lognormal loss with σ 0.6 logged every 20 steps: 52 of 100 runs instead of 10).
            trend = rolling_trend(z, w)
            around = np.maximum(rolling_mad(z, w, trend=trend), MIN_LOG_SCALE)
            with np.errstate(invalid="ignore"):
                falling = trend < -SPARSE_FALL_Z * around
                steep = falling & (trend < -math.log(BLOWUP_FACTOR))
            recent = rolling_median(z, k)
            reached = np.maximum(np.r_[np.nan, z[:-1]], recent + trend * (k - 1) / 2)
            med = np.where(falling, np.fmin(med, recent), med)
            med = np.where(steep, np.fmin(med, reached), med)
            scale = np.where(falling, around, scale)
        # The best level reached: only trailing medians of at least MIN_BASELINE_POINTS points count (one
        # near-zero first point must not become the level a slow climb is measured from).
        based = np.arange(n) >= MIN_BASELINE_POINTS
        held = _held_level(z)
        return cls(
            steps=steps,
            values=values,
            z=z,
            lo=float(lo),
            med=med,
            scale=scale,
            fwd=pd.Series(z[::-1]).rolling(max(3, w // 2), min_periods=1).median().to_numpy()[::-1],
            based=based,
            best=np.minimum.accumulate(np.where(np.isnan(med) | ~based, np.inf, med)),
            held=held,
            # the highest level held from each point on (_held_level: two of three points), for a slow climb
            suffix_max=np.maximum.accumulate(held[::-1])[::-1],
            warmup=max(3, min(w, n // 10)),  # the first points have no trailing level worth comparing to
        )

    def confirmed(self, i: int, base: float, *, noise_aware: bool = False) -> bool:
        """Reaches a decade above ``base`` within the horizon and the median over the persistence
        window stays above the onset level (a median, so one dip inside an oscillating blowup does not
        undo it): ≥ 2x, and with ``noise_aware`` (an excursion from a trailing level) also ONSET_Z robust
        sigmas above it — the level the excursion's onset had to pass. A converged fit whose loss swings
        a decade from step to step (AdamW β2 0.95 at its noise floor: a 7x burst, back at once, and a
        separate 10x point 100 steps on) does not hold a level it only touches; a real blowup holds it."""
        # the window ends in Python ints, capped at the largest step: steps[i] + horizon in int64 wraps
        # to a negative step for a step logged near 2^63 (an empty window, then a crash on its max)
        top = int(self.steps[-1])
        h_end = int(np.searchsorted(self.steps, min(int(self.steps[i]) + BLOWUP_HORIZON, top), side="right"))
        p_end = int(np.searchsorted(self.steps, min(int(self.steps[i]) + BLOWUP_PERSIST, top + 1), side="left"))
        p_end = max(p_end, i + 1)
        z = self.z
        held = self.onset if not noise_aware else max(self.onset, ONSET_Z * float(self.scale[i]))
        return bool(z[i:h_end].max() - base >= self.decade and np.median(z[i:p_end]) - base > held)

    def spike(self, ev: LossEvents, i: int, base: float) -> None:
        """Record a recovered spike at point ``i`` that rose from the log-level ``base``: its step and its level."""
        ev.spikes.append(int(self.steps[i]))
        ev.spike_levels.append(float(np.exp(base)) if self.lo > 0 else math.nan)

    def record(self, ev: LossEvents, i: int, base: float, best_i: int) -> int | None:
        """The blowup at point ``i`` (or, with fewer than MIN_BASELINE_POINTS points before it, only
        the step of an unbased rise, or of a recovered spike) into ``ev``. Returns None, or for a recovered
        spike the point where its excursion ended — or, for an excursion longer than BLOWUP_HORIZON steps, the
        first point with a based level when that comes sooner: the search goes on from there."""
        # The excursion ends where the loss is back within 2x of the level it rose from for good (the point
        # and its forward median).
        back = (self.z[i + 1 :] - base <= self.onset) & (self.fwd[i + 1 :] - base <= self.onset)
        if i < MIN_BASELINE_POINTS:
            if back.any():
                # Back at the starting level later: an lr too high for the first steps that the run came
                # back from (the out-of-family probe's no-warm-up runs: up 60-2000x at step 2, below the
                # starting loss a few hundred steps on) — a recovered spike, not a run that never had a level.
                # The search goes on after it: a sparse log's 100-step horizon spans a few points, so a 5x point
                # back at the next one was "confirmed" by a separate 3400x blowup four points on and ended the
                # search before it (a Lightning every-20 relog of the lab's mlp_small_hot s211 read `healthy`).
                # Not past the first point with a based level, though, when the excursion outlasts the horizon that
                # confirmed it: an excursion from a 2.7x blip at point 4 of a log every 20 steps ran until the loss was
                # back within 2x of that blip's level, 480 steps on, and hid the 670x blowup two points after it (a
                # point with a level of its own is judged against it). A shorter excursion is skipped whole.
                self.spike(ev, i, base)
                end = i + 1 + int(np.argmax(back))
                if int(self.steps[end]) - int(self.steps[i]) > BLOWUP_HORIZON:
                    end = min(end, max(i + 1, MIN_BASELINE_POINTS))
                return end
            ev.unbased_rise_step = int(self.steps[i])
            return None
        ev.blowup_step = int(self.steps[i])
        ev.pre_level = float(np.exp(base)) if self.lo > 0 else None
        # The peak of this excursion only (up to where it ended), so a later, unrelated event (a data shift
        # hundreds of steps on) is not reported as this blowup's peak.
        end = i + 1 + int(np.argmax(back)) if back.any() else self.n
        j = i + int(np.argmax(self.values[i:end]))
        ev.peak, ev.peak_step = float(self.values[j]), int(self.steps[j])
        ev.best_step = int(self.steps[best_i])
        return None

    def early_rise(self, ev: LossEvents) -> bool:
        """Look at the warm-up window, which has no trailing level worth comparing to, for a loss that rose
        a decade above every level before it — its starting loss included — and held it (:meth:`confirmed`):
        a run that diverged in its first steps (an lr far too high without warm-up) is no healthy run.
        Records it (a blowup, or with fewer than MIN_BASELINE_POINTS points before it the unbased rise) and
        says whether it was a blowup; the detectors then stop, or go on past the warm-up after an unbased
        rise. One code path for both detectors: the jumps are looked for in the window (at most 200 points),
        the climb's 10x anywhere after it, but only a climb that started in the window counts.

        >>> import numpy as np
        >>> s = np.arange(1, 401); y = np.r_[np.full(10, 0.5), np.full(390, 60.0)]
        >>> ev = LossEvents(); lv = _LossLevels.of(s, y, ev); lv.early_rise(ev), ev.blowup_step
        (True, 11)
        """
        z, w = self.z, self.warmup
        hi = np.maximum.accumulate(z[:w])  # hi[i - 1]: the highest level before point i
        jump = next(
            (
                i
                for i in (np.flatnonzero(z[1:w] - hi[:-1] > self.onset) + 1).tolist()
                if self.confirmed(i, float(hi[i - 1]))
            ),
            None,
        )
        # A climb too gradual for any one point to double the level before it (a sparse log of an early
        # divergence): the level held later (two of three points) reaches 10x the starting loss, and the
        # climb started inside the window — where the loss left the 2x band around the start for good.
        z0 = float(z[0])
        up = np.flatnonzero(self.held[1:] - z0 >= self.decade)
        climb = None
        if len(up):
            i = int(up[0]) + 1
            end = min(i + 3, self.n)  # the held level at i looks two points ahead
            left = (z[1:end] - z0 > self.onset) & (self.fwd[1:end] - z0 > self.onset)
            k = 1 + int(np.argmax(left)) if left.any() else i
            climb = k if k < w else None
        if jump is not None and (climb is None or jump <= climb):
            self.record(ev, jump, float(hi[jump - 1]), int(np.argmin(z[:jump])))
        elif climb is not None:
            self.record(ev, climb, z0, 0)
        else:
            return False
        return ev.blowup_step is not None


def detect_loss_events(steps: np.ndarray, values: np.ndarray) -> LossEvents:
    """Find the first non-finite loss, the first blowup and the short spikes before it.

    Works on log(loss) when the loss is positive (relative changes matter, not absolute ones),
    otherwise on the loss shifted to be positive. An excursion starts where the loss is ≥ 2x its
    trailing median and SPIKE_Z robust sigmas above it (or, for a slow climb, where the trailing
    level itself doubled from the best level reached). It is a blowup when it reaches 10x within
    BLOWUP_HORIZON steps and stays ≥ 2x for BLOWUP_PERSIST steps (or to the end of the log); a slow
    climb when the level it holds later (two of three consecutive points, :func:`_held_level`) reaches
    10x the best level.

    The same decisions as :func:`detect_loss_events_ref`, which visits every point in a Python loop
    (~1.3 s on a 10^6-point loss): here both point conditions (excursion onset, slow climb) are
    evaluated as whole-array masks and only the points where one holds are visited, in order, so the
    first blowup, the spikes before it and every reported number are those of the reference
    (tests/analysis/test_signals_fast.py checks it on random series).

    >>> import numpy as np
    >>> s = np.arange(1, 401); y = np.r_[np.linspace(1, 0.1, 300), np.full(100, 5.0)]
    >>> detect_loss_events(s, y).blowup_step
    301
    """
    ev = LossEvents()
    lv = _LossLevels.of(steps, values, ev)
    if lv is None:
        return ev
    steps, z, med, scale, fwd, best, based = lv.steps, lv.z, lv.med, lv.scale, lv.fwd, lv.best, lv.based
    onset, decade = lv.onset, lv.decade

    if lv.early_rise(ev):
        return ev
    warmup = lv.warmup
    # The reference's two tests at point i, for every i at once (same float64 operations, so the
    # same booleans; NaN compares False in both).
    rise = z - med
    with np.errstate(invalid="ignore"):
        excursion = (rise > onset) & (rise > ONSET_Z * scale)
        climb = np.isfinite(best) & (lv.suffix_max - best >= decade) & (med - best > onset) & (fwd - best > onset)
    excursion[:warmup] = False
    climb[:warmup] = False
    resume = 0  # after a recovered early spike: the point its excursion ended
    for i in np.flatnonzero(excursion | climb).tolist():
        if i < resume:
            continue
        if excursion[i]:
            ref = med[i]
            if lv.confirmed(i, ref, noise_aware=True):
                end = lv.record(ev, i, ref, int(np.argmin(np.where(np.isnan(med[: i + 1]), np.inf, med[: i + 1]))))
                if end is None:
                    break
                resume = end
                continue
            # The reference's ``in_excursion``: the previous point (from warmup on, past a recovered spike's
            # excursion) was an excursion.
            if not (i > max(warmup, resume) and excursion[i - 1]) and rise[i] > SPIKE_Z * scale[i]:
                lv.spike(ev, i, float(ref))
            continue
        # Slow climb (not an excursion point): the reference's climb branch.
        best_i = int(np.argmin(np.where(np.isnan(med[: i + 1]) | ~based[: i + 1], np.inf, med[: i + 1])))
        base = best[i]
        # The first point from best_i on that left the 2x band for good; i when none before it.
        left = (z[best_i:i] - base > onset) & (fwd[best_i:i] - base > onset)
        k = best_i + int(np.argmax(left)) if left.any() else i
        lv.record(ev, k, base, best_i)
        break
    return ev


def detect_loss_events_ref(steps: np.ndarray, values: np.ndarray) -> LossEvents:
    """Reference (point-by-point loop) of :func:`detect_loss_events`; same results, kept for the
    agreement test. Find the first non-finite loss, the first blowup and the short spikes before it.

    Works on log(loss) when the loss is positive (relative changes matter, not absolute ones),
    otherwise on the loss shifted to be positive. An excursion starts where the loss is ≥ 2x its
    trailing median and SPIKE_Z robust sigmas above it (or, for a slow climb, where the trailing
    level itself doubled from the best level reached). It is a blowup when it reaches 10x within
    BLOWUP_HORIZON steps and stays ≥ 2x for BLOWUP_PERSIST steps (or to the end of the log); a slow
    climb when the level it holds later (two of three consecutive points, :func:`_held_level`) reaches
    10x the best level.

    >>> import numpy as np
    >>> s = np.arange(1, 401); y = np.r_[np.linspace(1, 0.1, 300), np.full(100, 5.0)]
    >>> detect_loss_events_ref(s, y).blowup_step
    301
    """
    ev = LossEvents()
    lv = _LossLevels.of(steps, values, ev)
    if lv is None:
        return ev
    steps, z, med, scale, fwd, best, based, n = lv.steps, lv.z, lv.med, lv.scale, lv.fwd, lv.best, lv.based, lv.n
    onset, decade, suffix_max = lv.onset, lv.decade, lv.suffix_max

    if lv.early_rise(ev):
        return ev
    warmup = lv.warmup
    in_excursion = False
    i = warmup
    while i < n:
        ref = med[i]
        rise = z[i] - ref
        if rise > onset and rise > ONSET_Z * scale[i]:
            if lv.confirmed(i, ref, noise_aware=True):
                end = lv.record(ev, i, ref, int(np.argmin(np.where(np.isnan(med[: i + 1]), np.inf, med[: i + 1]))))
                if end is None:
                    break
                i, in_excursion = end, False  # a recovered early spike: on after its excursion
                continue
            # Not (yet) a blowup: a spike, reported once per excursion and only when it is also far
            # outside the loss's own noise.
            if not in_excursion and rise > SPIKE_Z * scale[i]:
                lv.spike(ev, i, float(ref))
            in_excursion = True
            i += 1
            continue
        in_excursion = False
        # Slow climb: the trailing level itself rose to 2x the best level reached before.
        # (suffix_max first: a climb that never reaches a decade is not worth the backward search)
        if (
            np.isfinite(best[i])
            and suffix_max[i] - best[i] >= decade
            and med[i] - best[i] > onset
            and fwd[i] - best[i] > onset
        ):
            best_i = int(np.argmin(np.where(np.isnan(med[: i + 1]) | ~based[: i + 1], np.inf, med[: i + 1])))
            base = best[i]
            # The climb starts at the first point after the best that left the 2x band for good.
            k = best_i
            while k < i and not (z[k] - base > onset and fwd[k] - base > onset):
                k += 1
            lv.record(ev, k, base, best_i)
            break
        i += 1
    return ev


def ema_second_moment_ref(
    steps: np.ndarray,
    g2: np.ndarray,
    beta2: float,
    *,
    v0: float = 0.0,
    step0: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Plain-loop reference: mean(v) after each logged step, from per-step mean(g²).

    mean(v) is an EMA of mean(g²) (the mean over elements commutes with the elementwise EMA), so
    given mean(v) at ``step0`` (0 with ``v0=0`` at the start of training, or a checkpoint's exact
    value) the trajectory follows exactly when every step is logged. When steps are missing
    (logging every N steps) the logged g² stands for the whole gap: v ← β2^Δ·v + (1-β2^Δ)·g², an
    approximation the caller reports.

    Returns (v, v_hat) at each logged step, v_hat bias-corrected with the absolute step count.
    """
    v = np.empty(len(steps))
    vhat = np.empty(len(steps))
    cur = float(v0)
    prev = int(step0)
    for i, (s, g) in enumerate(zip(steps, g2)):
        gap = int(s) - prev
        if gap <= 0:  # duplicate/overlapping step: keep state, it was already applied
            v[i] = cur
        else:
            decay = beta2**gap
            cur = decay * cur + (1.0 - decay) * float(g)
            v[i] = cur
            prev = int(s)
        bias = 1.0 - beta2 ** max(int(s), 1)
        vhat[i] = v[i] / bias
    return v, vhat


def ema_second_moment(
    steps: np.ndarray,
    g2: np.ndarray,
    beta2: float,
    *,
    v0: float = 0.0,
    step0: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Same as :func:`ema_second_moment_ref`; vectorised over chunks for long series.

    Within a chunk, v_i = D_i·(v_start + Σ_{j≤i} (1-β2^{gap_j})·g_j / D_j) with D_i the product of
    decays so far; chunks keep D_j within float range (β2^-Δ overflows for long runs).
    """
    steps = np.asarray(steps, dtype=np.int64)
    g2 = np.asarray(g2, dtype=np.float64)
    n = len(steps)
    v = np.empty(n)
    prev = np.r_[step0, steps[:-1]] if n else np.empty(0, dtype=np.int64)
    gaps = np.maximum(steps - prev, 0)
    # Duplicate steps (gap 0) repeat the state; a running max of "applied" step handles them.
    applied = np.maximum.accumulate(np.r_[step0, steps])[1:] if n else gaps
    prev_applied = np.r_[step0, applied[:-1]] if n else gaps
    gaps = np.maximum(applied - prev_applied, 0)
    log_decay = gaps * math.log(beta2)
    inc = np.where(gaps > 0, -np.expm1(log_decay) * g2, 0.0)
    cur = float(v0)
    chunk = 512  # |log D| <= 512*gap*|log β2|; recomputed per chunk, bounded for sane gaps
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        cum = np.cumsum(log_decay[a:b])
        # Guard against huge gaps in one chunk: fall back to the loop there.
        if cum[-1] < -600:
            vv, _ = ema_second_moment_ref(steps[a:b], g2[a:b], beta2, v0=cur, step0=int(prev_applied[a]))
            v[a:b] = vv
            cur = vv[-1]
            continue
        d = np.exp(cum)
        v[a:b] = d * (cur + np.cumsum(inc[a:b] / d))
        cur = v[b - 1]
    bias = -np.expm1(np.maximum(steps, 1) * math.log(beta2))
    return v, v / bias


def sustained_runs(mask: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """Index ranges [start, end) where ``mask`` is True for at least ``min_len`` consecutive points.

    Run boundaries from the edges of the 0/1 sequence (numpy), not a Python loop over every point:
    the same ranges as :func:`sustained_runs_ref` at ~1/100 of its cost on a 10^6-point series.
    """
    m = np.asarray(mask, dtype=bool).ravel()
    if not len(m):
        return []
    edges = np.diff(np.r_[np.int8(0), m.view(np.int8), np.int8(0)])
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    keep = ends - starts >= min_len
    return [(int(a), int(b)) for a, b in zip(starts[keep], ends[keep])]


def sustained_runs_ref(mask: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """Reference (plain loop) of :func:`sustained_runs`."""
    out = []
    start = None
    for i, m in enumerate(np.asarray(mask, dtype=bool)):
        if m and start is None:
            start = i
        elif not m and start is not None:
            if i - start >= min_len:
                out.append((start, i))
            start = None
    if start is not None and len(mask) - start >= min_len:
        out.append((start, len(mask)))
    return out
