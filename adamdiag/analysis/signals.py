"""Robust signals on logged series: loss blowups/spikes and the second-moment reconstruction.

Pure functions of numpy arrays (steps, values); no I/O. Every threshold is relative (a ratio or a
robust z-score against the series' own trailing level) and justified by the mechanism, never a
fixed level on raw values, so the same code works for a loss of 1e-4 and one of 1e3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# A blowup means the loss at least doubled against its own recent robust level and stayed there;
# ordinary noise of a training loss is a few percent to tens of percent of its level.
BLOWUP_FACTOR = 2.0
# Robust z-score (in MADs of log-loss) that a jump must also exceed, so a very noisy loss whose
# typical swings are already 2x does not count every swing as a blowup.
SPIKE_Z = 6.0
# Floor for the robust scale of log-loss: 1% relative change. A perfectly smooth full-batch loss
# has a MAD near zero, which would make every wiggle "infinitely significant".
MIN_LOG_SCALE = 0.01


@dataclass
class LossEvents:
    """What the loss curve shows, in step numbers of the series."""

    first_nonfinite_step: int | None = None
    blowup_step: int | None = None
    # Level (median of the trailing window) before the blowup and the peak after it.
    pre_level: float | None = None
    peak: float | None = None
    spikes: list[int] = field(default_factory=list)  # short spikes that recovered
    best_step: int | None = None  # step of the lowest trailing level before the blowup


def _window(n: int) -> int:
    """Trailing window in points: long enough for a stable median, short enough to follow a trend."""
    return int(min(200, max(10, n // 50)))


def rolling_median(x: np.ndarray, w: int) -> np.ndarray:
    """Trailing median over the previous ``w`` points (excluding the current one); NaN for i == 0."""
    import pandas as pd

    s = pd.Series(x)
    return s.shift(1).rolling(w, min_periods=1).median().to_numpy()


def rolling_mad(x: np.ndarray, w: int) -> np.ndarray:
    """Trailing median absolute deviation over the previous ``w`` points, scaled to a Gaussian sigma."""
    import pandas as pd

    s = pd.Series(x).shift(1)
    med = s.rolling(w, min_periods=1).median()
    # MAD of the window around the window's median; approximated with the current median, which is
    # what pandas can do in O(n log w). Good enough for a scale estimate.
    dev = (s - med).abs()
    return 1.4826 * dev.rolling(w, min_periods=1).median().to_numpy()


def detect_loss_events(steps: np.ndarray, values: np.ndarray) -> LossEvents:
    """Find the first non-finite loss, the first sustained blowup and short recovered spikes.

    Works on log(loss) when the loss is positive (relative changes matter, not absolute ones),
    otherwise on the loss shifted to be positive.

    >>> import numpy as np
    >>> s = np.arange(1, 401); y = np.r_[np.linspace(1, 0.1, 300), np.full(100, 5.0)]
    >>> detect_loss_events(s, y).blowup_step
    301
    """
    ev = LossEvents()
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
        return ev
    lo = values.min()
    z = np.log(values) if lo > 0 else np.log(values - lo + max(1e-12, abs(lo) * 1e-3 + 1e-12))
    w = _window(n)
    med = rolling_median(z, w)
    scale = np.maximum(rolling_mad(z, w), MIN_LOG_SCALE)
    jump = max(math.log(BLOWUP_FACTOR), 0.0)
    # Centred "level" for deciding whether an excursion persisted: the median of the next w points.
    import pandas as pd

    fwd = pd.Series(z[::-1]).rolling(max(3, w // 2), min_periods=1).median().to_numpy()[::-1]
    running_best = np.minimum.accumulate(np.where(np.isnan(med), np.inf, med))
    warmup = max(3, w // 2)  # the first points have no trailing level worth comparing to
    i = warmup
    while i < n:
        ref = med[i]
        rise = z[i] - ref
        if rise > jump and rise > SPIKE_Z * scale[i]:
            # Sustained: the forward median stays above the doubled level (rise from the trailing
            # level, or from the best level reached so far for slow climbs).
            if fwd[i] - ref > jump:
                ev.blowup_step = int(steps[i])
                ev.pre_level = float(np.exp(ref)) if lo > 0 else None
                ev.peak = float(values[i:].max())
                ev.best_step = int(steps[int(np.argmin(np.where(np.isnan(med[: i + 1]), np.inf, med[: i + 1])))])
                break
            ev.spikes.append(int(steps[i]))
            # Skip past this spike so one event is not reported for every point of it.
            j = i + 1
            while j < n and z[j] - ref > jump:
                j += 1
            i = j
            continue
        # Slow climb: the trailing level itself rose far above the best level reached before.
        if np.isfinite(running_best[i]) and med[i] - running_best[i] > jump and fwd[i] - running_best[i] > jump:
            best_i = int(np.argmin(np.where(np.isnan(med[: i + 1]), np.inf, med[: i + 1])))
            base = running_best[i]
            # The blowup starts at the first point after the best whose value left the band for good.
            k = best_i
            while k < i and not (z[k] - base > jump and fwd[k] - base > jump):
                k += 1
            ev.blowup_step = int(steps[k])
            ev.pre_level = float(np.exp(base)) if lo > 0 else None
            ev.peak = float(values[k:].max())
            ev.best_step = int(steps[best_i])
            break
        i += 1
    return ev


def robust_spikes(steps: np.ndarray, values: np.ndarray, z_thresh: float = SPIKE_Z) -> list[int]:
    """Steps where a positive series (e.g. gradient norm) jumps above its trailing robust level."""
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values) & (values > 0)
    if ok.sum() < 8:
        return []
    z = np.log(np.where(ok, values, np.nan))
    w = _window(len(z))
    med = rolling_median(z, w)
    scale = np.maximum(rolling_mad(z, w), MIN_LOG_SCALE)
    hits = (z - med > z_thresh * scale) & (z - med > math.log(BLOWUP_FACTOR))
    return [int(s) for s in np.asarray(steps)[np.nan_to_num(hits, nan=0).astype(bool)]]


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
    """Index ranges [start, end) where ``mask`` is True for at least ``min_len`` consecutive points."""
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
