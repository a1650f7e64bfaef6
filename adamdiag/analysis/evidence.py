"""Evidence for the diagnosis: typed facts gathered from the logs and checkpoints, no verdict.

Pure: frames and checkpoint summaries in, numbers out. What is gathered:

* trajectories of r_t = mean(g²_t)/mean(v̂_{t-1}) — global from the gradient-norm scalar, per tensor
  from gradient histograms — by the exact EMA reconstruction of mean(v), re-seeded at checkpoints
  (docs/architecture.md, "The math");
* quiet stretches (r < COLLAPSE_R for a good part of v's memory) reaching the loss event, with their
  depth (v̂ at the end relative to its peak) — from the trajectories and from consecutive checkpoints;
* re-growth (r ≫ 1) and update RMS > 1 just before the event; a one-step gradient-norm jump;
* non-finite optimizer state, non-Adam checkpoints, and the hyperparameters of the checkpoint the
  replay would start from.

The verdict rules (:mod:`adamdiag.analysis.verdicts`) read an :class:`Evidence`; the findings
(:mod:`adamdiag.analysis.findings`) render it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adamdiag.analysis.frames import run_order
from adamdiag.analysis.keras_logs import keras_written
from adamdiag.analysis.moments import QUANTILES, interval_g2
from adamdiag.analysis.signals import WINDOW_MIN_POINTS, ema_second_moment, steps_per_point, sustained_runs
from adamdiag.analysis.thresholds import (
    BLOWUP_FACTOR,
    BLOWUP_HORIZON,
    BLOWUP_PEAK_FACTOR,
    BLOWUP_PERSIST,
    CLIP_AGREEMENT,
    CLIP_MISMATCH,
    CLIP_RESOLUTION,
    COLLAPSE_DEPTH,
    COLLAPSE_MIN_MEMORY_FRACTION,
    COLLAPSE_MIN_POINTS,
    COLLAPSE_R,
    DEFAULT_BETA2,
    DEFAULT_EPS,
    ELEMENT_FALL_MOST,
    END_LEVEL_FRACTION,
    EVERY_N_MIN_POINTS,
    GRAD_JUMP_FACTOR,
    GRAD_JUMP_MIN_HISTORY,
    GRAD_JUMP_SKIP_FRACTION,
    GRAD_JUMP_TRAILING,
    INSTABILITY_MAX_LEAD,
    INSTABILITY_R,
    KERAS_DEFAULT_EPS,
    LEVEL_POINTS,
    MAX_SPIKES_LISTED,
    MIN_CHECKPOINTS_BEFORE_EVENT,
    MIN_LOSS_POINTS,
    MONITOR_LOG_AGREEMENT,
    PRE_EVENT_WINDOW,
    REGROWTH_WINDOW,
    SPIKE_CYCLE_LR_RISE,
    SPIKE_LEVEL_MIN_POINTS,
    TINY,
)


@dataclass
class Trajectory:
    """Reconstructed second-moment signals on the logged steps of one gradient series."""

    label: str  # "global" or a tensor name
    steps: np.ndarray
    g2: np.ndarray  # mean(g²) per element
    vhat: np.ndarray  # mean(v̂) after the step
    r: np.ndarray  # g²_t / v̂_{t-1}
    exact: bool  # False when the seed or the logging interval made it approximate
    eps: float = DEFAULT_EPS  # 0 when the absolute scale of v is unknown (no checkpoint: N unknown)
    beta2: float = DEFAULT_BETA2
    convention: str = "torch"
    source: str = "log"  # "log": reconstructed from logged g²; "monitor": the live monitor's own r and v̂
    # g² estimated from a histogram's buckets (TF2 bucket tensors, wandb.Histogram keep no sum of squares)
    bucketed: bool = False

    def eps_eff(self) -> np.ndarray:
        """eps relative to √v̂ at each step. TF adds eps to the un-corrected √v, which is
        √v̂·√(1-β2^t): relative to √v̂ that is eps/√(1-β2^t) — larger early in training."""
        if self.convention == "tf":
            out: np.ndarray = self.eps / np.sqrt(-np.expm1(np.maximum(self.steps, 1) * math.log(self.beta2)))
            return out
        return np.full(len(self.steps), self.eps)


def logged_zero_based(steps: Any) -> bool:
    """Whether a gradient series is logged on a 0-based axis (:func:`reconstruct`): it has a point at step 0
    (``for step in range(n)``), or it sits on the grid N-1, 2N-1, ... of an every-N log (Lightning logs when
    ``(global_step + 1) % log_every_n_steps == 0``, at ``global_step`` 49, 99, ... for the default 50; a last
    point off the grid is the one it logs when the trainer stops). A 1-based every-N log sits on N, 2N, ....
    Asked of the whole series, before its non-finite points are dropped — a NaN at step 0 still says where the
    axis starts.

    >>> [logged_zero_based(s) for s in (np.arange(0, 30, 10), np.arange(1, 30), [], np.arange(49, 500, 50))]
    [True, False, False, True]
    >>> logged_zero_based([49, 99, 149, 163]), logged_zero_based(np.arange(50, 500, 50)), logged_zero_based([1, 50, 100])
    (True, False, False)
    """
    steps = np.unique(np.asarray(steps, dtype=np.int64))
    if not len(steps):
        return False
    if steps[0] == 0:
        return True
    grid = steps[:-1] if len(steps) > EVERY_N_MIN_POINTS else steps
    if len(grid) < EVERY_N_MIN_POINTS:
        return False
    every = int(np.gcd.reduce(np.diff(grid)))
    return every > 1 and bool(np.all((grid + 1) % every == 0))  # every 1: a dense 1-based log


def reconstruct(
    steps: np.ndarray,
    g2: np.ndarray,
    beta2: float,
    seeds: list[tuple[int, float]],
    eps: float,
    label: str,
    *,
    zero_based: bool | None = None,
) -> Trajectory:
    """mean(v̂) along the logged steps from per-step mean(g²), re-seeded exactly at checkpoints.

    ``seeds`` are (step, exact mean(v)) from checkpoints. Before the first seed the EMA starts from
    v=0 at step 0 when logging starts at step ≤ 1 (exact), else from the first g² (steady-state
    assumption, approximate): v̂ = g² the step before the first logged one, i.e. the raw v is
    g²·(1-β2^step0) — not g² itself, which would put v̂ 1/(1-β2^step0) too high (200x for a log that starts
    at step 5 with β2 0.999, 20x at step 50) and read the gradients after it as a collapse.

    A series logged at step 0 is on a 0-based axis (``for step in range(n)``, Lightning's ``global_step``):
    the gradient at step 0 is the one the first update squared, so Adam's step count is the logged step + 1.
    The EMA runs on that count (else the first g² — often the largest — is dropped and every checkpoint
    seed lands one step late); the trajectory keeps the logged steps. ``zero_based`` overrides the guess
    (a caller that filtered the series' step-0 point away still knows its axis).

    >>> s = np.arange(5, 405, 5); g2 = np.full(len(s), 2.0)  # steady gradients, logged from step 5
    >>> tr = reconstruct(s, g2, 0.999, [], 0.0, "global")
    >>> float(tr.vhat[0]), round(float(np.nanmin(tr.r)), 6)
    (2.0, 1.0)
    """
    order = np.argsort(steps, kind="stable")
    logged, g2 = steps[order], g2[order]
    n = len(logged)
    if zero_based is None:
        zero_based = logged_zero_based(logged)
    steps = logged + 1 if zero_based else logged  # Adam's step count from here on
    gaps = np.diff(steps)
    exact = bool(n and steps[0] <= 1 and (len(gaps) == 0 or gaps.max() <= 1))
    v = np.empty(n)
    vhat = np.empty(n)
    seeds = sorted(s for s in seeds if math.isfinite(s[1]))
    # Piecewise: each segment between seeds starts from the seed's exact value.
    bounds: list[tuple[int, int, float, int]] = []  # (start index, end index, v0, step0)
    seed_iter = [(s, val) for s, val in seeds if n and steps[0] <= s <= steps[-1]]
    start_v, start_step = (0.0, 0)
    if n and steps[0] > 1:
        exact = False
        earlier = [(s, val) for s, val in seeds if s < steps[0]]
        if earlier:
            start_step, start_v = earlier[-1]
            exact = bool(len(gaps) == 0 or gaps.max() <= 1)
        else:
            start_step = int(steps[0]) - 1
            start_v = float(g2[0]) * -math.expm1(start_step * math.log(beta2)) if 0.0 < beta2 < 1.0 else float(g2[0])
    idx0 = 0
    for s, val in seed_iter:
        i = int(np.searchsorted(steps, s, side="right"))
        bounds.append((idx0, i, start_v, start_step))
        idx0, start_v, start_step = i, val, s
    bounds.append((idx0, n, start_v, start_step))
    for a, b, v0, s0 in bounds:
        if b > a:
            vv, hh = ema_second_moment(steps[a:b], g2[a:b], beta2, v0=v0, step0=s0)
            v[a:b], vhat[a:b] = vv, hh
    prev = np.r_[np.nan, vhat[:-1]] if n else vhat
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(prev > 0, g2 / prev, np.nan)
    return Trajectory(label=label, steps=logged, g2=g2, vhat=vhat, r=r, exact=exact, eps=eps, beta2=beta2)


def collapse_span(at_step: int | None, beta2: float) -> float:
    """Steps a quiet stretch must last: COLLAPSE_MIN_MEMORY_FRACTION of v̂'s memory at ``at_step``. The
    memory is 1/(1-β2) once training is long, but only ``at_step`` before that — the bias correction
    makes v̂ the plain mean of every g² so far, so a run that blows up at step 140 with β2 = 0.9999 has a
    v̂ that still lives on its first, large gradients (a stale v) after a quiet stretch of a few dozen
    steps, not 2000. ``None``: the long-run memory. (A collapse in progress, no event yet, is measured
    against the memory at each point: :func:`_stretch_in_progress`.)

    >>> [round(collapse_span(*a), 6) for a in [(None, 0.999), (140, 0.9999), (5000, 0.999)]]
    [200.0, 28.0, 200.0]
    """
    full = COLLAPSE_MIN_MEMORY_FRACTION / (1.0 - beta2)
    return full if at_step is None else min(full, COLLAPSE_MIN_MEMORY_FRACTION * max(at_step, 1))


def collapse_stretch(
    tr: Trajectory, until: int | None, beta2: float, *, require_depth: bool = True
) -> tuple[int, int, float] | None:
    """The sustained r < COLLAPSE_R stretch that reaches closest to ``until`` (the blowup).

    Returns (first step of the stretch, step at which it became sustained — the warning step,
    median r inside), or None.
    """
    mask = tr.r < COLLAPSE_R
    if until is not None:
        mask &= tr.steps < until
    # min_len in logged points: logging every N steps needs fewer points for the same span.
    step_per_point = steps_per_point(tr.steps)
    if until is None:
        return _stretch_in_progress(tr, mask, beta2, step_per_point, require_depth)
    span = collapse_span(until, beta2)
    min_len = max(COLLAPSE_MIN_POINTS, int(math.ceil(span / step_per_point)))
    runs = sustained_runs(np.nan_to_num(mask, nan=0).astype(bool), min_len)
    if not runs:
        return None
    if until is not None:
        # Only a stretch that lasts until shortly before the blowup explains it.
        tol = max(REGROWTH_WINDOW, COLLAPSE_MIN_POINTS * step_per_point)
        runs = [ab for ab in runs if until - tr.steps[ab[1] - 1] <= tol]
        if not runs:
            return None
    # The collapse must also be deep: v̂ fell to ≤ COLLAPSE_DEPTH of its peak so far (√v̂ ≥ 10x down).
    # Early training, where v̂ still averages a few large first gradients, is quiet but not deep.
    peak = np.maximum.accumulate(np.where(np.isfinite(tr.vhat), tr.vhat, 0.0))
    deep = tr.vhat <= COLLAPSE_DEPTH * peak if require_depth else np.ones(len(tr.vhat), bool)
    for a, b in reversed(runs) if until is not None else runs:
        first_ok = a + min_len - 1
        hits = np.flatnonzero(deep[first_ok:b])
        if len(hits):
            k = first_ok + int(hits[0])
            return int(tr.steps[a]), int(tr.steps[k]), float(np.nanmedian(tr.r[a:b]))
        if until is not None:
            return None  # only the stretch leading into the blowup can explain it
    return None


def _stretch_in_progress(
    tr: Trajectory, mask: np.ndarray, beta2: float, step_per_point: float, require_depth: bool
) -> tuple[int, int, float] | None:
    """collapse_stretch with no event (a collapse in progress, scan on a healthy run and the live monitor
    alike): the first stretch that, at some point, has lasted v's memory *at that point* —
    collapse_span(step) = COLLAPSE_MIN_MEMORY_FRACTION·min(step, 1/(1-β2)), as the after-the-fact rule
    measures it at the blowup — and is deep there. A point-wise rule, so the live monitor, which sees the
    run only up to now, and scan, which sees all of it, fire at the same point."""
    runs = sustained_runs(np.nan_to_num(mask, nan=0).astype(bool), COLLAPSE_MIN_POINTS)
    if not runs:
        return None
    peak = np.maximum.accumulate(np.where(np.isfinite(tr.vhat), tr.vhat, 0.0))
    deep = tr.vhat <= COLLAPSE_DEPTH * peak if require_depth else np.ones(len(tr.vhat), bool)
    # points each point's stretch must have lasted: collapse_span(step) in logged points, for every point
    # at once (a long healthy run has 10^6 of them; the same float64 operations as collapse_span)
    span = np.minimum(
        COLLAPSE_MIN_MEMORY_FRACTION / (1.0 - beta2), COLLAPSE_MIN_MEMORY_FRACTION * np.maximum(tr.steps, 1)
    )
    need = np.maximum(COLLAPSE_MIN_POINTS, np.ceil(span / step_per_point))
    for a, b in runs:
        ks = np.arange(a + COLLAPSE_MIN_POINTS - 1, b)
        hits = np.flatnonzero((ks - a + 1 >= need[ks]) & deep[ks])
        if len(hits):
            return int(tr.steps[a]), int(tr.steps[ks[hits[0]]]), float(np.nanmedian(tr.r[a:b]))
    return None


def window_max(tr: Trajectory, values: np.ndarray, lo: int, hi: int) -> tuple[float, int | None]:
    sel = (tr.steps >= lo) & (tr.steps <= hi) & np.isfinite(values)
    if not sel.any():
        return float("nan"), None
    i = int(np.argmax(np.where(sel, values, -np.inf)))
    return float(values[i]), int(tr.steps[i])


def ckpt_tensor_label(t: Any) -> str:
    name = getattr(t, "name", None)
    return name if name else f"group {getattr(t, 'group', '?')} / index {getattr(t, 'index', '?')}"


# Module wrappers that put their own name into every parameter's: torch.compile's OptimizedModule (_orig_mod),
# FSDP1 (_fsdp_wrapped_module), activation checkpointing (_checkpoint_wrapped_module) anywhere in the path, and
# DDP / DataParallel (module.) in front. A run's histograms and its checkpoints often name a parameter with and
# without one (DDP scripts log model.named_parameters() and save model.module.state_dict()).
_WRAPPER_PARTS = ("_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def param_key(name: str) -> str:
    """A parameter's name without the wrappers' parts, to match names across sources (never shown).

    >>> param_key("module._orig_mod.layers.0._fsdp_wrapped_module.weight")
    'layers.0.weight'
    >>> param_key("model.net.0.weight")
    'model.net.0.weight'
    """
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    while name.startswith("module."):
        name = name[len("module.") :]
    return name


def state_key(t: Any) -> tuple[int, Any, Any]:
    """A tensor's place in its checkpoint: (optimizer, param group, index) — the same in every checkpoint of
    a run; (group, index) alone repeats across the optimizers of one file. Group and index as the reader
    gives them (a TF checkpoint's index is the variable's name)."""
    return int(_optimizer_of(t).get("index", 0)), t.group, t.index


def _optimizer_of(t: Any) -> dict[str, Any]:
    """A checkpoint tensor's ``optimizer`` record ({index, key, type}); {} when the reader gave none."""
    opt = getattr(t, "optimizer", None)
    return opt if isinstance(opt, dict) else {}


def ckpt_global_mean_v(c: Any) -> tuple[float, int]:
    tot = sum(float(t.v_mean) * int(t.numel) for t in c.tensors)
    n = sum(int(t.numel) for t in c.tensors)
    return (tot / n if n else float("nan")), n


def clip_from_checkpoints(
    steps: np.ndarray, norms: np.ndarray, ckpts: list[tuple[int, float, int]], beta2: float
) -> float | None:
    """The gradient-clipping norm the checkpoints imply, or None when the logged norm is what Adam saw.

    Between two checkpoints with every step's gradient norm logged — the first "checkpoint" can be step 0,
    where Adam's v is 0 — mean(v) follows exactly from the first one's and the logged norms (``(step,
    mean v, element count)`` per checkpoint). When that lands ≥ CLIP_MISMATCH above the second one's own
    mean(v), the log holds the norm *before* clipping (what ``clip_grad_norm_`` returns, the usual thing to
    log) and Adam squared a clipped gradient. The clip is the norm c for which min(norm, c) reproduces such an
    interval (bisection: mean(v) grows with c); it is taken when those intervals agree on it within
    CLIP_AGREEMENT and min(norm, c) reproduces every exact interval within it (an interval whose norms stay
    under c matches as it is).

    >>> s = np.arange(1, 201); g = np.r_[np.full(100, 0.2), np.full(100, 0.01)]
    >>> n = 10; v = ema_second_moment(s, np.minimum(g, 0.05) ** 2 / n, 0.99)[0]  # Adam saw 0.05, not 0.2
    >>> v1, v2 = v[99], v[199]
    >>> round(clip_from_checkpoints(s, g, [(100, v1, n), (200, v2, n)], 0.99), 4)
    0.05
    >>> g_seen = np.minimum(g, 0.05)  # the clipped norm logged: nothing to infer
    >>> clip_from_checkpoints(s, g_seen, [(100, v1, n), (200, v2, n)], 0.99) is None
    True
    """
    steps = np.asarray(steps, dtype=np.int64)
    norms = np.asarray(norms, dtype=np.float64)
    if not ckpts:
        return None
    points = [(0, 0.0, ckpts[0][2]), *ckpts] if len(steps) and steps[0] == 1 else list(ckpts)
    intervals = _fully_logged_intervals(steps, norms, points)
    clips: list[float] = []
    for iv in intervals:
        vb, seg_g = iv[2], iv[-1]
        if _mean_v_after(iv, None, beta2) < CLIP_MISMATCH * vb:
            continue
        lo, hi = 0.0, float(seg_g.max())
        while hi - lo > CLIP_RESOLUTION * hi:  # bisection: mean(v) grows with the clip
            mid = (lo + hi) / 2
            if _mean_v_after(iv, mid, beta2) < vb:
                lo = mid
            else:
                hi = mid
        clips.append((lo + hi) / 2)
    if not clips or max(clips) > (1.0 + CLIP_AGREEMENT) * min(clips):
        return None
    c = float(f"{float(np.median(clips)):.3g}")  # three digits: the bisection's last ones are noise
    for iv in intervals:
        if abs(_mean_v_after(iv, c, beta2) / iv[2] - 1.0) > CLIP_AGREEMENT:
            return None  # the log and the checkpoints disagree some other way: no clip explains it
    return c


# (first step a, mean v at a, mean v at b, element count, the steps a+1..b, their logged norms)
_Interval = tuple[int, float, float, int, np.ndarray, np.ndarray]


def _fully_logged_intervals(
    steps: np.ndarray, norms: np.ndarray, points: list[tuple[int, float, int]]
) -> list[_Interval]:
    """The consecutive (step, mean v, element count) points between which every step's gradient norm is
    logged and finite: there mean(v) follows exactly from the first point's and the norms."""
    out: list[_Interval] = []
    for (a, va, na), (b, vb, nb) in zip(points, points[1:]):
        if na != nb or not (na > 0 and va >= 0 and vb > 0) or b <= a:
            continue
        i, j = np.searchsorted(steps, [a + 1, b + 1])
        seg_s, seg_g = steps[i:j], norms[i:j]
        if len(seg_s) != b - a or not np.array_equal(seg_s, np.arange(a + 1, b + 1)) or not np.isfinite(seg_g).all():
            continue  # not every step of the interval logged: no exact propagation
        out.append((a, va, vb, na, seg_s, seg_g))
    return out


def _mean_v_after(iv: _Interval, clip: float | None, beta2: float) -> float:
    """mean(v) at the interval's end from its start and the logged norms, clipped at ``clip`` (the EMA
    commutes with the mean over elements)."""
    a, va, _, na, seg_s, seg_g = iv
    g = seg_g if clip is None else np.minimum(seg_g, clip)
    return float(ema_second_moment(seg_s, g**2 / na, beta2, v0=va, step0=a)[0][-1])


def frac_below(q: dict[str, float], x: float) -> float:
    """Fraction of elements with √v̂ < x, interpolated (log-linear) from the quantiles
    {min, p01, p50, p99, max}. An approximation; exact per-element fractions exist only for eps
    itself and 10·eps (computed by the checkpoint reader)."""
    raw = [(q.get(k), level) for k, level in QUANTILES.items()]
    pts: list[tuple[float, float]] = [(float(a), b) for a, b in raw if a is not None and math.isfinite(float(a))]
    if not pts:
        return float("nan")
    if x <= pts[0][0]:
        return 0.0
    if x >= pts[-1][0]:
        return 1.0
    for (x0, f0), (x1, f1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            if x1 <= x0:
                return f1
            lx0, lx1, lx = (math.log(max(v, TINY)) for v in (x0, x1, x))
            return f0 + (f1 - f0) * (lx - lx0) / (lx1 - lx0 if lx1 > lx0 else 1.0)
    return 1.0


def _ratio_to_pure_decay(v_b: float, decayed_a: float) -> float:
    """v_b / (β2^Δ·v_a). β2^Δ underflows to 0 for checkpoints far apart (Δ > ~745k steps at β2 0.999,
    ~15k at 0.95) or is 0 for β2 = 0: pure decay would have left v_b = 0, so any v_b > 0 is infinitely
    more than decay alone (gradients arrived) — inf, not a ZeroDivisionError; 0/0 is unknown (NaN)."""
    if decayed_a > 0:
        return v_b / decayed_a
    return math.inf if v_b > 0 else math.nan


def checkpoint_interval_ratios(ckpts: list[Any], beta2_default: float) -> list[dict[str, Any]]:
    """Per tensor, per consecutive checkpoint pair: the interval-weighted mean g² implied by the two
    v's (docs/architecture.md, "Checkpoint decay ratio") relative to v̂ at the first one. ≈0 means pure decay: no gradient arrived."""
    out = []
    for a, b in zip(ckpts, ckpts[1:]):
        if a.step is None or b.step is None or b.step <= a.step:
            continue
        # (optimizer, group, index): state indices restart at 0 in every optimizer of a file (a GAN's two)
        by_key = {state_key(t): t for t in a.tensors}
        for tb in b.tensors:
            ta = by_key.get(state_key(tb))
            if ta is None or not ta.v_mean or not math.isfinite(ta.v_mean):
                continue
            beta2 = float(getattr(tb, "beta2", beta2_default) or beta2_default)
            d = b.step - a.step
            decay = beta2**d
            # the same numbers inspect's pair view prints, with their resolution (A − B cancels when v
            # decayed almost purely: below the resolution only "< resolution" is known)
            g = interval_g2(
                ta.v_mean, tb.v_mean, beta2, d, int(a.step), str(getattr(tb, "dtype", "float32")), int(tb.numel)
            )
            out.append(
                {
                    "tensor": ckpt_tensor_label(tb),
                    "from_step": int(a.step),
                    "to_step": int(b.step),
                    "decay_ratio": _ratio_to_pure_decay(float(tb.v_mean), decay * float(ta.v_mean)),
                    "r_interval": float(max(g["r_interval"], 0.0)) if math.isfinite(g["r_interval"]) else float("nan"),
                    "r_interval_resolution": float(g["r_interval_resolution"]),
                    "r_interval_below_resolution": bool(g["r_interval_below_resolution"]),
                    "numel": int(tb.numel),
                }
            )
    return out


def pre_event_r(trajs: list[Trajectory], event_step: int | None) -> float | None:
    glob = [t for t in trajs if t.label == "global"] or trajs
    if not glob or event_step is None:
        return None
    t = glob[0]
    sel = (t.steps < event_step) & (t.steps >= event_step - PRE_EVENT_WINDOW) & np.isfinite(t.r)
    return float(np.median(t.r[sel])) if sel.any() else None


def spike_cycles(
    trajs: list[Trajectory],
    lr_series: tuple[np.ndarray, np.ndarray],
    spikes: list[int],
    event_step: int | None,
    beta2: float,
) -> dict[str, Any] | None:
    """Over v's memory before the event (min(1/(1-β2), step) steps): the share of the all-parameter
    trajectory's points that were quiet (r < COLLAPSE_R), the recovered spikes in it, and whether the logged lr
    rose there. None without an event, an all-parameter trajectory or a logged lr (a warm-up cannot be told
    apart without it).

    >>> s = np.arange(1, 1201); r = np.where(s % 100 < 20, 1.0, 0.02)
    >>> tr = Trajectory("global", s, np.ones(len(s)), np.ones(len(s)), r, True)
    >>> c = spike_cycles([tr], (s, np.full(len(s), 1e-3)), [1020, 1120], 1200, 0.999)
    >>> round(c["quiet_share"], 2), c["spikes"], c["lr_rose"]
    (0.8, [1020, 1120], False)
    """
    glob = [t for t in trajs if t.label == "global"]
    ls, lv = lr_series
    if event_step is None or not glob or not len(ls):
        return None
    tr = glob[0]
    lo = event_step - min(1.0 / (1.0 - beta2), float(event_step))
    inside = (tr.steps >= lo) & (tr.steps < event_step) & np.isfinite(tr.r)
    lr_in = (ls >= lo) & (ls <= event_step) & np.isfinite(lv) & (lv > 0)
    if inside.sum() < COLLAPSE_MIN_POINTS or not lr_in.any():
        return None
    lrs = lv[lr_in]
    return {
        "quiet_share": float(np.mean(tr.r[inside] < COLLAPSE_R)),
        "spikes": [int(x) for x in spikes if lo <= x < event_step],
        "lr_rose": bool(lrs[-1] > lrs.min() * (1.0 + SPIKE_CYCLE_LR_RISE)),
        "window": [int(math.ceil(lo)), int(event_step)],
    }


def abrupt_gradient_jump(event_step: int, gn: tuple[np.ndarray, np.ndarray] | None) -> dict[str, Any] | None:
    """The bad-batch signature: at the loss event the gradient norm jumped ≥10x (g² ≥ 100x, far
    outside mini-batch noise) in ONE step, over both the previous step and the trailing median, and no
    other point of the trailing window did.

    Within one step the parameters move by about lr per element, which cannot change a smooth
    loss's gradient 10x; a new batch can. A v-collapse instability grows over several steps
    instead (the update explodes, then the gradient follows). With sparse logging one step is not
    visible, so there the jump must also exceed 10x everything seen after the first steps.
    """
    if gn is None:
        return None
    steps, vals = gn
    near = np.flatnonzero(np.abs(steps - event_step) <= 1)
    if not len(near):
        return None
    i = int(near[np.argmax(vals[near])])
    if i < GRAD_JUMP_MIN_HISTORY:  # no healthy history: a run that diverges right away has too high an lr
        return None
    base = float(np.median(vals[max(0, i - GRAD_JUMP_TRAILING) : i]))
    prev = float(vals[i - 1])
    if not (base > 0 and vals[i] >= GRAD_JUMP_FACTOR * base and vals[i] >= GRAD_JUMP_FACTOR * prev):
        return None
    # One batch among calm ones: the trailing window holds no other such jump. A gradient norm that already
    # jumps 10x from step to step (0.04 -> 54 -> 0.8 ...) is an optimizer oscillating past its edge of
    # stability (the out-of-family warm-up to lr 2.0), not a bad batch.
    lo = max(1, i - GRAD_JUMP_TRAILING)
    with np.errstate(invalid="ignore"):
        earlier = vals[lo:i] >= GRAD_JUMP_FACTOR * vals[lo - 1 : i - 1]
    if earlier.any():
        return None
    if steps[i] - steps[i - 1] > 1:
        history = vals[max(1, i // GRAD_JUMP_SKIP_FRACTION) : i]
        if not len(history) or vals[i] < GRAD_JUMP_FACTOR * float(np.max(history)):
            return None
    return {"step": int(steps[i]), "grad_norm": float(vals[i]), "previous": prev, "trailing_median": base}


def absorbed_gradient_jumps(gn: tuple[np.ndarray, np.ndarray] | None) -> dict[str, Any] | None:
    """One-batch gradient jumps the loss did not react to, in a run without a loss event: the bad-batch
    signature of :func:`abrupt_gradient_jump` and :func:`jump_is_isolated`, looked for at every step whose
    neighbours are both logged (one step, seen whole) — the largest (by its ratio to the trailing median)
    and how many there were; None when there is none.

    >>> s = np.arange(1, 101); g = np.full(100, 0.1); g[59] = 50.0
    >>> j = absorbed_gradient_jumps((s, g)); (j["step"], j["count"])
    (60, 1)
    """
    if gn is None:
        return None
    steps, vals = (np.asarray(a) for a in gn)
    n = len(vals)
    if n <= GRAD_JUMP_MIN_HISTORY + 1:
        return None
    i = np.arange(1, n - 1)
    # A non-finite norm is a step mixed-precision loss scaling skipped (AD401 info says so), not a batch.
    finite = np.isfinite(vals)
    with np.errstate(invalid="ignore"):  # a cheap necessary condition first: 10x over the step before
        near = (
            (np.diff(steps)[:-1] == 1)
            & (np.diff(steps)[1:] == 1)
            & finite[i]
            & finite[i - 1]
            & finite[i + 1]
            & (vals[i] >= GRAD_JUMP_FACTOR * vals[i - 1])
        )
    jumps = []
    for k in i[near].tolist():
        j = abrupt_gradient_jump(int(steps[k]), gn)
        if j is not None and j["step"] == int(steps[k]) and jump_is_isolated(j, gn):
            jumps.append(j)
    if not jumps:
        return None
    top = max(jumps, key=lambda j: j["grad_norm"] / j["trailing_median"])
    return {**top, "isolated": True, "count": len(jumps)}


def one_point_spike(steps: np.ndarray, loss: np.ndarray, spikes: list[int]) -> dict[str, Any] | None:
    """A recovered loss spike that is ONE logged point ≥ BLOWUP_PEAK_FACTOR above both its neighbours, the
    next point back at the level before it (≤ BLOWUP_FACTOR x the previous point): the loss of one batch,
    not of the model — the next batch met a model as good as before. The bad-batch signature where no
    gradient norm is logged (the caller asks only then); the largest such spike, and how many there were.

    >>> s = np.arange(1, 41); x = np.full(40, 0.5); x[29] = 4e4
    >>> j = one_point_spike(s, x, [30]); (j["step"], j["ratio"], j["count"])
    (30, 80000.0, 1)
    """
    found = [
        p
        for p in (_towering_point(steps, loss, sp) for sp in spikes)
        if p and p["next"] <= BLOWUP_FACTOR * p["previous"]
    ]
    if not found:
        return None
    return {**max(found, key=lambda f: f["ratio"]), "count": len(found)}


def unresolved_spike(
    steps: np.ndarray, loss: np.ndarray, spikes: list[int], levels: list[float] | None = None
) -> dict[str, Any] | None:
    """A recovered spike the log cannot tell from a blowup: its excursion (from the spike's point while the loss stays
    above BLOWUP_FACTOR x its level, within BLOWUP_HORIZON steps) peaks ≥ BLOWUP_PEAK_FACTOR above that level at a
    point whose next logged point is BLOWUP_PERSIST or more steps
    later (or that ends the log). A blowup is a decade that holds BLOWUP_PERSIST steps; with those steps unlogged the
    point may be one (a v-collapse blowup that held 40 steps and was over by the next point of a log every 100).
    The level: the one the detector measured the spike against (``levels``, :attr:`LossEvents.spike_levels`; on a
    sparse log of a falling loss it follows the fall), else the median of the up to WINDOW_MIN_POINTS points before it.
    The largest such spike (``spike``: its first point, ``step``/``ratio``/``unlogged``: the peak), and how many.

    >>> s = np.arange(100, 2100, 100); x = np.full(20, 0.01); x[9] = 5.0
    >>> j = unresolved_spike(s, x, [1000]); (j["spike"], j["step"], j["ratio"], j["unlogged"], j["count"])
    (1000, 1000, 500.0, 99, 1)
    >>> unresolved_spike(np.arange(1, 41), np.r_[np.full(29, 0.01), 5.0, np.full(10, 0.01)], [30]) is None
    True
    >>> y = np.array([2.12e-3, 2.31e-3, 0.113, 1.58e-2, 1.67e-2, 0.194, 1.55e-2, 3.35e-3])  # Lightning every 50
    >>> j = unresolved_spike(np.arange(49, 400, 50), y, [149]); (j["step"], round(j["ratio"]), j["unlogged"])
    (149, 51, 49)
    """
    found = []
    for k, sp in enumerate(spikes):
        i = int(np.searchsorted(steps, sp))
        if i >= len(steps) or int(steps[i]) != sp or i < SPIKE_LEVEL_MIN_POINTS:
            continue
        before = loss[max(0, i - WINDOW_MIN_POINTS) : i]
        before = before[np.isfinite(before) & (before > 0)]
        if len(before) < SPIKE_LEVEL_MIN_POINTS:
            continue
        known = levels[k] if levels is not None and k < len(levels) else math.nan
        level = known if math.isfinite(known) and known > 0 else float(np.median(before))
        j = i
        peak = i
        while j < len(steps) and int(steps[j]) - sp <= BLOWUP_HORIZON and loss[j] > BLOWUP_FACTOR * level:
            if loss[j] > loss[peak]:
                peak = j
            j += 1
        unlogged = int(steps[peak + 1]) - int(steps[peak]) - 1 if peak + 1 < len(steps) else None
        if loss[peak] >= BLOWUP_PEAK_FACTOR * level and (unlogged is None or unlogged + 1 >= BLOWUP_PERSIST):
            found.append(
                {"spike": sp, "step": int(steps[peak]), "ratio": float(loss[peak]) / level, "unlogged": unlogged}
            )
    if not found:
        return None
    return {**max(found, key=lambda f: f["ratio"]), "count": len(found)}


def blowup_batch_spike(steps: np.ndarray, loss: np.ndarray, blowup_step: int) -> dict[str, Any] | None:
    """The blowup's first point as ONE batch's own loss: the loss logged at every step around it, that point
    ≥ BLOWUP_PEAK_FACTOR above both neighbours. The next batch met a model whose loss was a decade below
    the spike's, so the model had not blown up — the batch had; what came after (a climb) is what that
    batch's update did to the weights. A v-collapse explosion ruins the weights and the next step's loss is
    as high (the caller asks only when no gradient norm is logged: with one, the one-step jump decides).

    >>> s = np.arange(1, 41); x = np.r_[np.full(29, 0.05), 6e4, np.linspace(0.09, 2.7, 10)]
    >>> j = blowup_batch_spike(s, x, 30); (j["step"], round(j["ratio"]), j["next"])
    (30, 666667, 0.09)
    """
    i = int(np.searchsorted(steps, blowup_step))
    if not 0 < i < len(steps) - 1 or int(steps[i]) != blowup_step:
        return None
    if int(steps[i + 1]) - int(steps[i]) != 1 or int(steps[i]) - int(steps[i - 1]) != 1:
        return None  # a sparse log: a point stands for many batches
    return _towering_point(steps, loss, blowup_step)


def ended_above_start(steps: np.ndarray, loss: np.ndarray) -> dict[str, Any] | None:
    """The loss ended ≥ BLOWUP_FACTOR x above where it started: the median of its last END_LEVEL_FRACTION of
    finite points (at least LEVEL_POINTS) over the median of its first LEVEL_POINTS. ``{start, end, ratio,
    start_step, end_step}``, or None (no such rise, a loss that is not positive, or too few points). Asked only
    when nothing blew up: a climb under the 10x of a blowup still makes a run that got worse than it started.

    >>> s = np.arange(1, 41); x = np.r_[[2.7, 2.1, 2.7], np.linspace(5, 20, 33), [13.0, 16.0, 13.3, 11.7]]
    >>> c = ended_above_start(s, x); (round(c["ratio"], 2), c["start_step"], c["end_step"])
    (4.87, 1, 37)
    """
    ok = np.isfinite(loss)
    steps, loss = steps[ok], loss[ok]
    n_end = max(LEVEL_POINTS, int(len(loss) * END_LEVEL_FRACTION))
    if len(loss) < LEVEL_POINTS + n_end or loss.min() <= 0:
        return None
    start, end = float(np.median(loss[:LEVEL_POINTS])), float(np.median(loss[-n_end:]))
    if end < BLOWUP_FACTOR * start:
        return None
    return {
        "start": start,
        "end": end,
        "ratio": end / start,
        "start_step": int(steps[0]),
        "end_step": int(steps[-n_end]),
    }


def _towering_point(steps: np.ndarray, loss: np.ndarray, step: int) -> dict[str, Any] | None:
    """The logged loss at ``step`` when it is ≥ BLOWUP_PEAK_FACTOR above both its (finite, positive)
    neighbours: ``{step, loss, previous, next, ratio}`` (ratio to the larger neighbour); else None."""
    i = int(np.searchsorted(steps, step))
    if not 0 < i < len(steps) - 1 or int(steps[i]) != step:
        return None
    prev, val, nxt = (float(loss[k]) for k in (i - 1, i, i + 1))
    if not (math.isfinite(prev) and math.isfinite(nxt) and math.isfinite(val) and prev > 0 and nxt > 0):
        return None
    if val < BLOWUP_PEAK_FACTOR * max(prev, nxt):
        return None
    return {"step": int(step), "loss": val, "previous": prev, "next": nxt, "ratio": val / max(prev, nxt)}


def first_instability(trajs: list[Trajectory], event_step: int) -> int | None:
    """For lr_too_high: first step before the blowup where g²/v̂ already exceeded INSTABILITY_R (a
    step that the optimizer could not absorb), if any."""
    glob = [t for t in trajs if t.label == "global"]
    if not glob:
        return None
    t = glob[0]
    sel = (t.steps <= event_step) & (t.r > INSTABILITY_R)
    if not sel.any():
        return None
    first = int(t.steps[np.argmax(sel)])
    return first if event_step - first <= INSTABILITY_MAX_LEAD else None


def gradient_histograms(hist: Any) -> list[tuple[str, Any]]:
    """(tag, rows) of every gradient histogram (a tag with "grad" in it), each as the run went — a restart's undone
    steps out, like the scalars (frames.series) — in tag order."""
    out = []
    for tag, df in hist.groupby("tag", sort=True, observed=True):
        if "grad" not in str(tag).lower():
            continue
        if "segment" in df.columns:
            df = df.iloc[run_order(df["step"].to_numpy(), df["segment"].to_numpy())]
        else:
            df = df.sort_values("step", kind="stable").drop_duplicates("step", keep="last")
        out.append((str(tag), df))
    return out


def histogram_trajectories(
    hist: Any, ckpts: list[Any], beta2: float, eps: float, *, per_tag: list[tuple[str, Any]] | None = None
) -> list[Trajectory]:
    """Per-tensor trajectories from gradient histograms (mean g² = sum_squares/num), each with its own
    param group's β2/eps where a checkpoint states them (LLM recipes mix β2 across groups), else the run's.
    ``per_tag``: :func:`gradient_histograms` of ``hist``, when the caller has it."""
    # matched by param_key: the histograms and the checkpoints may name a parameter with and without a wrapper
    own = {param_key(k): v for k, v in (tensor_hyperparameters(ckpts[-1]) if ckpts else {}).items()}
    out = []
    names_v: dict[str, list[tuple[int, float]]] = {}
    for c in ckpts:
        for t in c.tensors:
            if getattr(t, "name", None):
                names_v.setdefault(param_key(t.name), []).append((int(c.step), float(t.v_mean)))
    for tag, df in gradient_histograms(hist) if per_tag is None else per_tag:
        num = df["num"].to_numpy(np.float64)
        ok = num > 0
        if ok.sum() < MIN_LOSS_POINTS:
            continue
        g2 = df["sum_squares"].to_numpy(np.float64)[ok] / num[ok]
        name = tag.split("/", 1)[1] if "/" in tag else tag
        seeds = names_v.get(param_key(name), [])
        b2, e, _ = own.get(param_key(name), (beta2, eps, None))
        steps = df["step"].to_numpy(np.int64)
        tr = reconstruct(steps[ok], g2, b2, seeds, e, name, zero_based=logged_zero_based(steps))
        # a bucket estimate is off by a few % (io.events.bucket_moments), far from the 10x a collapse stretch needs:
        # it stays "exact" when every step is logged, and AD901 says the g² was estimated
        tr.bucketed = "approx" in df.columns and bool(df["approx"].to_numpy(bool)[ok].any())
        out.append(tr)
    return out


# a gradient norm from histograms needs several tensors' (one is that tensor's own trajectory)
MIN_GLOBAL_HISTOGRAMS = 2


def histogram_global(
    hist: Any, ckpts: list[Any], beta2: float, eps: float, *, per_tag: list[tuple[str, Any]] | None = None
) -> Trajectory | None:
    """The all-parameter trajectory from gradient histograms (label ``global``): at each step where every gradient
    histogram of the run has a row, mean g² = Σ sum_squares / Σ num — the squared gradient norm over the element
    count, the series a logged gradient norm gives — re-seeded at checkpoints by their all-parameter mean v. None
    with fewer than MIN_LOSS_POINTS such steps. ``per_tag``: :func:`gradient_histograms` of ``hist``, when the caller
    has it.

    >>> import pandas as pd
    >>> n = 2 * MIN_LOSS_POINTS
    >>> h = pd.DataFrame({"tag": ["grads/a", "grads/b"] * n, "step": np.repeat(np.arange(1, n + 1), 2),
    ...                   "num": [1.0, 3.0] * n, "sum_squares": [4.0, 0.0] * n, "approx": [False] * 2 * n})
    >>> tr = histogram_global(h, [], 0.999, 1e-8)
    >>> tr.label, set(tr.g2.tolist()), len(tr.steps) == n
    ('global', {1.0}, True)
    """
    import pandas as pd

    series = gradient_histograms(hist) if per_tag is None else per_tag
    parts = [df[df["num"].to_numpy(np.float64) > 0] for _, df in series]
    if len(parts) < MIN_GLOBAL_HISTOGRAMS:
        return None
    grads = pd.concat(parts, ignore_index=True)
    n_tags = len(parts)
    by_step = grads.groupby("step", sort=True).agg(
        tags=("tag", "nunique"), num=("num", "sum"), sum_squares=("sum_squares", "sum")
    )
    whole = by_step[by_step["tags"] == n_tags]
    if len(whole) < MIN_LOSS_POINTS:
        return None
    seeds = [(int(c.step), ckpt_global_mean_v(c)[0]) for c in ckpts]
    g2 = whole["sum_squares"].to_numpy(np.float64) / whole["num"].to_numpy(np.float64)
    zero_based = logged_zero_based(grads["step"].to_numpy())
    tr = reconstruct(whole.index.to_numpy(np.int64), g2, beta2, seeds, eps, "global", zero_based=zero_based)
    tr.bucketed = "approx" in grads.columns and bool(grads["approx"].to_numpy(bool).any())
    return tr


def _implied_text(iv: dict[str, Any]) -> str:
    """An interval's implied g²/v̂ as text: "< X" when it is below the resolution of its operands."""
    if iv.get("r_interval_below_resolution"):
        return f"< {iv['r_interval_resolution']:.2g}"
    return f"{iv['r_interval']:.3g}"


def checkpoint_collapse(
    ckpts: list[Any], ratios: list[dict[str, Any]], event_step: int | None, beta2: float, *, require_depth: bool = True
) -> list[dict[str, Any]]:
    """Collapse seen by checkpoints alone: between the last two checkpoints before the event, v of a
    tensor decayed almost purely (implied g²/v̂ < COLLAPSE_R), and √v̂ sits near eps."""
    if event_step is None:
        return []
    pre = [r for r in ratios if r["to_step"] <= event_step]
    if not pre:
        return []
    last_to = max(r["to_step"] for r in pre)
    out = []
    by_tensor: dict[str, list[dict[str, Any]]] = {}
    for r in pre:
        by_tensor.setdefault(r["tensor"], []).append(r)
    last_ck = next(c for c in reversed(ckpts) if c.step == last_to)
    vhat_hist: dict[str, list[tuple[int, float]]] = {}
    for c in ckpts:
        for t in c.tensors:
            vhat_hist.setdefault(ckpt_tensor_label(t), []).append(
                (int(c.step), float(t.v_mean) / (1.0 - float(t.beta2) ** max(int(c.step), 1)))
            )
    stats = {ckpt_tensor_label(t): t for t in last_ck.tensors}
    for tensor, rs in by_tensor.items():
        rs.sort(key=lambda r: r["from_step"])
        if rs[-1]["to_step"] != last_to or not (rs[-1]["r_interval"] < COLLAPSE_R):
            continue
        # Walk back while the intervals stay collapsed.
        k = len(rs) - 1
        while k > 0 and rs[k - 1]["r_interval"] < COLLAPSE_R:
            k -= 1
        # Long enough (the same span as for logged gradients) and deep enough (v̂ ≤ 1% of its peak
        # over the checkpoints): the first checkpoint where both hold is the warning step.
        chain_start = rs[k]["from_step"]
        # v's memory is the tensor's own: its param group's β2 where the checkpoint states it
        own_b2 = _known(stats[tensor], "beta2") if tensor in stats else None
        span = collapse_span(event_step, own_b2 if own_b2 is not None and 0 < own_b2 < 1 else beta2)
        hist = vhat_hist.get(tensor, [])
        warn = None
        for step_j in [r["to_step"] for r in rs[k:]]:
            peak = max((v for st, v in hist if st <= step_j), default=float("nan"))
            now = next((v for st, v in hist if st == step_j), float("nan"))
            if step_j - chain_start >= span and (now <= COLLAPSE_DEPTH * peak or not require_depth):
                warn = step_j
                break
        if warn is None:
            continue
        t = stats.get(tensor)
        near = float(getattr(t, "frac_sqrt_vhat_below_10eps", float("nan"))) if t is not None else float("nan")
        p50 = float(t.sqrt_vhat_q.get("p50", float("nan"))) if t is not None else float("nan")
        eps_t = float(getattr(t, "eps", float("nan"))) if t is not None else float("nan")
        out.append(
            {
                "tensor": tensor,
                "warning_step": int(warn),
                "message": f"`{tensor}` decayed almost purely between checkpoints {rs[k]['from_step']} and "
                f"{last_to} (implied g²/v̂ {_implied_text(rs[-1])}); median √v̂ {p50:.3g}"
                + (
                    f" = {p50 / eps_t:.3g}·eps, {near:.0%} of its elements under 10·eps"
                    if math.isfinite(eps_t) and eps_t > 0
                    else " (eps unknown)"
                ),
                "evidence": {
                    "intervals": rs[k:][-MAX_SPIKES_LISTED:],
                    "frac_sqrt_vhat_below_10eps": near,
                    "median_sqrt_vhat": p50,
                },
                "numel": rs[-1]["numel"],
            }
        )
    out.sort(key=lambda c: -c["numel"])
    return out


def zero_v_fraction(t: Any) -> float:
    """The fraction of a tensor's elements whose v is exactly 0 (never received a gradient: unused
    embedding rows, frozen slices, dead units); 0 when the summary does not say."""
    return float(getattr(t, "frac_v_zero", 0.0) or 0.0)


def live_frac_below(t: Any, x: float) -> float:
    """Fraction of a tensor's *live* elements (v > 0) with √v̂ < x. Elements whose v is exactly 0 never
    received a gradient (dead units, unused rows): they sit at the bottom of the quantiles and would
    make any eps look as if it dominated a collapse that is not there.

    >>> from types import SimpleNamespace as T
    >>> round(live_frac_below(T(sqrt_vhat_q={"min": 0.0, "p01": 0.0, "p50": 0.0, "p99": 1e-2, "max": 1e-2},
    ...                         frac_v_zero=0.6), 1e-2), 2)
    1.0
    """
    zero = zero_v_fraction(t)
    below = frac_below(t.sqrt_vhat_q, x)
    if not (math.isfinite(zero) and math.isfinite(below)) or zero >= 1.0:
        return below
    return max(below - zero, 0.0) / (1.0 - zero)


def live_median(t: Any) -> float:
    """Median √v̂ of a tensor's live elements (v > 0): the quantile at level zero + (1 - zero)/2 of all
    its elements, interpolated log-linearly between the stored quantiles; nan without quantiles."""
    zero = zero_v_fraction(t)
    level = zero + (1.0 - zero) / 2 if math.isfinite(zero) else QUANTILES["p50"]
    pts = [(lv, float(t.sqrt_vhat_q[k])) for k, lv in QUANTILES.items() if k in t.sqrt_vhat_q]
    pts = sorted((lv, x) for lv, x in pts if math.isfinite(x))
    for (l0, x0), (l1, x1) in zip(pts, pts[1:]):
        if l0 <= level <= l1:
            if x0 <= 0 or x1 <= 0 or l1 <= l0:
                return x1
            return math.exp(math.log(x0) + (math.log(x1) - math.log(x0)) * (level - l0) / (l1 - l0))
    return pts[-1][1] if pts else math.nan


def frac_live(t: Any, attr: str) -> float:
    """A "fraction of elements with √v̂ below x" without the elements whose v is exactly 0: those never
    received a gradient (unused embedding rows, frozen slices) and say nothing about collapse or eps."""
    frac = float(getattr(t, attr))
    zero = zero_v_fraction(t)
    return max(frac - zero, 0.0) if math.isfinite(zero) else frac


# --- typed evidence ------------------------------------------------------------------------------
@dataclass
class Collapse:
    """A quiet stretch (r = g²/v̂ < COLLAPSE_R for ≥ COLLAPSE_MIN_MEMORY_FRACTION of v's memory) that
    reaches the loss event, in all parameters (``label == "global"``) or one tensor."""

    label: str
    source: str  # "log": reconstructed from logged g²; "checkpoints": from consecutive checkpoints' v
    first_step: int
    warning_step: int  # deep: the first step at which it was also deep; shallow: when it became sustained
    median_r: float
    deep: bool  # v̂ fell to ≤ COLLAPSE_DEPTH of its peak (√v̂ ≥ 10x down) inside the stretch
    depth: float  # v̂ at the end of the stretch / its peak so far (1 = no fall; NaN when unknown)
    exact: bool  # the numbers come from exact data (every step logged or checkpoint-seeded; checkpoint v)
    message: str = ""  # checkpoint collapses: the per-tensor sentence
    evidence: dict[str, Any] = field(default_factory=dict)
    numel: int = 0


def quiet_stretch(tr: Trajectory, until: int, beta2: float) -> Collapse | None:
    """The quiet stretch of ``tr`` leading into ``until`` (the event), deep or not, with its depth."""
    any_ = collapse_stretch(tr, until, beta2, require_depth=False)
    if any_ is None:
        return None
    deep = collapse_stretch(tr, until, beta2, require_depth=True)
    first, sustained, med = any_
    i = int(np.searchsorted(tr.steps, first))
    end = i
    while end + 1 < len(tr.steps) and tr.steps[end + 1] < until and tr.r[end + 1] < COLLAPSE_R:
        end += 1
    peak = float(np.nanmax(np.where(np.isfinite(tr.vhat[: end + 1]), tr.vhat[: end + 1], np.nan)))
    depth = float(tr.vhat[end] / peak) if peak > 0 and math.isfinite(tr.vhat[end]) else float("nan")
    return Collapse(
        label=tr.label,
        source="log",
        first_step=first,
        warning_step=deep[1] if deep is not None else sustained,
        median_r=med,
        deep=deep is not None,
        depth=depth,
        exact=tr.exact,
    )


def logged_collapses(trajs: list[Trajectory], until: int) -> list[Collapse]:
    """The quiet stretches of the logged trajectories that lead into an event at ``until``, deep before
    shallow, in trajectory order otherwise: what :func:`gather` takes from the logs, and what the live
    monitor asks of its own trajectory with the event put at its current step (would a blowup now read
    as a v collapse, and since when?)."""
    logged = [c for tr in trajs if (c := quiet_stretch(tr, until, tr.beta2)) is not None]
    return sorted(logged, key=lambda c: not c.deep)


def checkpoint_collapses(ckpts: list[Any], ratios: list[dict[str, Any]], until: int, beta2: float) -> list[Collapse]:
    """Quiet stretches seen by consecutive checkpoints alone (v decayed almost purely), deep first."""
    deep = {c["tensor"]: c for c in checkpoint_collapse(ckpts, ratios, until, beta2)}
    out = []
    for c in checkpoint_collapse(ckpts, ratios, until, beta2, require_depth=False):
        d = deep.get(c["tensor"], c)
        intervals = d["evidence"].get("intervals") or [{}]
        out.append(
            Collapse(
                label=c["tensor"],
                source="checkpoints",
                first_step=int(intervals[0].get("from_step", d["warning_step"])),
                warning_step=int(d["warning_step"]),
                median_r=float(intervals[-1].get("r_interval", float("nan"))),
                deep=c["tensor"] in deep,
                depth=float("nan"),
                exact=True,
                message=d["message"],
                evidence=d["evidence"],
                numel=int(d["numel"]),
            )
        )
    out.sort(key=lambda c: (not c.deep, -c.numel))
    return out


@dataclass
class VhatFall:
    """How far the mean v̂ (all parameters) fell from its peak before the loss event: the per-element
    step lr/√v̂ grew by ``factor`` = √(peak v̂ / v̂ before the event), even where v kept tracking
    gradients that shrank near an optimum (a quiet stretch is not needed for that)."""

    source: str  # "log": the global trajectory; "checkpoints": the checkpoints' mean v̂
    factor: float
    peak_step: int
    step: int  # the last point before the event
    deep_step: int | None  # the first point at which v̂ was ≤ COLLAPSE_DEPTH of its peak so far
    exact: bool
    # "checkpoint elements" only: the share of all live elements whose √v̂ fell ≥ 1/√COLLAPSE_DEPTH below
    # their tensor's earlier median, and the tensors that hold most of them (largest share first)
    fraction: float = math.nan
    tensors: list[str] = field(default_factory=list)

    @property
    def deep(self) -> bool:
        return self.deep_step is not None


def _fall(source: str, steps: np.ndarray, vhat: np.ndarray, exact: bool) -> VhatFall:
    running = np.maximum.accumulate(vhat)
    deep = np.flatnonzero(vhat <= COLLAPSE_DEPTH * running)
    i = int(np.argmax(vhat))
    return VhatFall(
        source,
        math.sqrt(float(vhat[i] / vhat[-1])),
        int(steps[i]),
        int(steps[-1]),
        int(steps[deep[0]]) if len(deep) else None,
        exact,
    )


def _fallen_share(t: Any, peak_median: float) -> float:
    """The share of a tensor's live elements whose √v̂ is ≥ 1/√COLLAPSE_DEPTH below ``peak_median`` (its
    live median at an earlier checkpoint): their step lr/√v̂ grew ≥ 10x since then."""
    if not (math.isfinite(peak_median) and peak_median > 0):
        return math.nan
    return live_frac_below(t, math.sqrt(COLLAPSE_DEPTH) * peak_median)


def _weighted_median(pairs: list[tuple[float, int]]) -> float:
    """The median of values weighted by counts: [(value, count), ...] (non-empty).

    >>> _weighted_median([(1.0, 1), (100.0, 40), (3.0, 2)])
    100.0
    """
    ordered = sorted(pairs)
    half, acc = sum(n for _, n in ordered) / 2, 0
    for value, n in ordered:
        acc += n
        if acc >= half:
            return value
    return ordered[-1][0]


def element_fall(ckpts: list[Any], event_step: int | None) -> VhatFall | None:
    """The v-collapse mechanism per element, where the tensor means hide it: at each checkpoint before the
    event, the share of all live elements (weighted by tensor size) whose √v̂ lies ≥ 10x below their
    tensor's live median at its highest earlier checkpoint — v̂ ≤ COLLAPSE_DEPTH of where the typical element
    was, i.e. the per-element step lr/√v̂ ≥ 10x larger for the same gradient. A part of a tensor going quiet
    (features that stop varying, embedding rows not seen) barely moves its mean v, which the active rest
    keeps up; its quantiles show it. Deep when that share reaches ELEMENT_FALL_MOST (most elements); ``factor``
    is the size-weighted median over tensors of (peak median / median now). From the checkpoints' quantiles
    (exact ones when the tensor was small enough), None with fewer than two checkpoints before the event."""
    if event_step is None:
        return None
    pre = [c for c in ckpts if c.step is not None and 0 < c.step < event_step]
    if len(pre) < MIN_CHECKPOINTS_BEFORE_EVENT:
        return None
    peak: dict[str, tuple[float, int]] = {}  # tensor -> (highest live median so far, its step)
    shares: list[tuple[int, float, list[tuple[float, str]], list[tuple[float, int]]]] = []
    for c in pre:
        fallen: list[tuple[float, str]] = []  # (elements fallen, tensor)
        ratios: list[tuple[float, int]] = []  # (peak median / median now, numel)
        total = 0
        for t in c.tensors:
            label, n = ckpt_tensor_label(t), int(getattr(t, "numel", 0) or 0)
            med = live_median(t)
            if n <= 0 or not (math.isfinite(med) and med > 0) or zero_v_fraction(t) >= 1.0:
                continue
            live = n * (1.0 - zero_v_fraction(t))
            total += int(live)
            if label in peak:
                share = _fallen_share(t, peak[label][0])
                if math.isfinite(share):
                    fallen.append((share * live, label))
                ratios.append((peak[label][0] / med, int(live)))
            if label not in peak or med > peak[label][0]:
                peak[label] = (med, int(c.step))
        if ratios and total > 0:
            shares.append((int(c.step), sum(f for f, _ in fallen) / total, fallen, ratios))
    if not shares:
        return None
    step, frac, fallen, ratios = shares[-1]
    deep_step = next((s for s, f, _, _ in shares if f >= ELEMENT_FALL_MOST), None)
    factor = _weighted_median(ratios)
    named = [label for f, label in sorted(fallen, reverse=True) if f > 0]
    first_peak = min((s for _, s in peak.values()), default=step)
    return VhatFall("checkpoint elements", float(factor), first_peak, step, deep_step, True, frac, named)


def vhat_fall(trajs: list[Trajectory], ckpts: list[Any], event_step: int | None, beta2: float) -> VhatFall | None:
    """The deepest fall of the mean v̂ from its peak to the last point before the event, from the global
    trajectory (logged gradient norm or the monitor) and from the checkpoints' bias-corrected mean v;
    None without data or event."""
    if event_step is None:
        return None
    found: list[VhatFall] = []
    for tr in trajs:
        if tr.label != "global":
            continue
        keep = (tr.steps < event_step) & np.isfinite(tr.vhat) & (tr.vhat > 0)
        if keep.any():
            found.append(_fall("log", tr.steps[keep], tr.vhat[keep], tr.exact))
    pts = []
    for c in ckpts:
        if c.step is None or not 0 < c.step < event_step:
            continue
        mean_v, _ = ckpt_global_mean_v(c)
        vhat = mean_v / -math.expm1(c.step * math.log(beta2)) if 0 < beta2 < 1 else mean_v
        if math.isfinite(vhat) and vhat > 0:
            pts.append((c.step, vhat))
    if pts:
        found.append(_fall("checkpoints", np.array([p[0] for p in pts]), np.array([p[1] for p in pts]), True))
    best = max(found, key=lambda f: f.factor) if found else None
    if best is None or not best.deep:
        # the means did not fall deep: did most elements? (a quiet part of a tensor the rest keeps up)
        per_element = element_fall(ckpts, event_step)
        if per_element is not None and per_element.deep:
            return per_element
    return best


@dataclass
class StateProblem:
    """Non-finite or impossible optimizer state in a checkpoint."""

    step: int
    tensor: str
    kind: str  # "nonfinite" (NaN/Inf in m or v: training put it there) or "corrupt" (negative v, CRC)


@dataclass
class Evidence:
    """Everything the verdict rules may look at, for one run."""

    loss_tag: str | None
    loss_tags: list[str]
    grad_norm_tag: str | None
    n_loss_points: int
    events: Any  # signals.LossEvents of the total loss
    task_events: dict[str, Any]  # tag -> LossEvents of the other --loss-tag series (per-task losses)
    event_step: int | None  # the blowup, else the first recovered spike, else None
    trajectories: list[Trajectory]
    collapses: list[Collapse]  # quiet stretches reaching the event, deep first
    regrowth: list[tuple[str, float, int]]  # (label, max r, step) just before the event
    update_rms: list[tuple[str, float, int]]  # (label, max update RMS, step) just before the event
    pre_event_r: float | None  # median global r in PRE_EVENT_WINDOW before the event
    grad_jump: dict[str, Any] | None  # one-step gradient-norm jump at the event
    state_problems: list[StateProblem]
    non_adam: list[str]  # "path: what it is" for checkpoints of another optimizer
    checkpoints: list[Any]  # CheckpointSummary with a step, sorted by step
    ratios: list[dict[str, Any]]  # checkpoint_interval_ratios
    start: Any | None  # the last checkpoint before the event (the replay start), if any
    beta2: float
    eps: float
    lr: float | None
    hyper_assumed: bool  # no checkpoint: beta2/eps are the defaults of ``hyper_defaults``
    lr_at_event: float | None = None  # from a logged learning-rate tag
    hyper_defaults: str = "torch"  # whose Adam defaults beta2/eps are when no checkpoint states them
    hyper_source: str = ""  # where beta2/eps came from without a checkpoint (RunInputs.hyper_source); "" = defaults
    # one-batch gradient jumps in a run without a loss event (absorbed_gradient_jumps): the largest, and count
    absorbed_jump: dict[str, Any] | None = None
    one_point_spike: dict[str, Any] | None = None  # a one-point loss spike, no gradient norm logged
    # a recovered spike ≥ 10x whose next BLOWUP_PERSIST steps are not logged (unresolved_spike)
    unresolved_spike: dict[str, Any] | None = None
    # no blowup, but the loss ended ≥ BLOWUP_FACTOR x above where it started (ended_above_start)
    end_climb: dict[str, Any] | None = None
    blowup_batch_spike: dict[str, Any] | None = None  # the blowup's first point is one batch's loss (no grad norm)
    epoch_axis: dict[str, Any] | None = None  # RunInputs.epoch_axis
    loss_last_step: int | None = None  # the loss tag's last logged step
    loss_first_step: int | None = None  # and its first
    # The highest logged lr from the event on: a schedule still rising there (a warm-up) takes a cut of the
    # whole schedule back above the lr that blew up unless the cut is sized to its peak (recommend.lr_cut).
    lr_peak_after: float | None = None
    # The logged lr at the last logged step up to the start checkpoint: the lr its v lived under. The checkpoint's
    # own lr can be the next update's (a scheduler stepped before the save): at a warm restart, the raised one.
    lr_before_start: float | None = None
    # Over v's memory before the event: quiet share of r, recovered spikes, whether the logged lr rose
    spike_cycles: dict[str, Any] | None = None
    # Keras running-mean loss tags turned back into per-batch losses (or kept raw, with the reason).
    loss_rebuilt: list[dict[str, Any]] = field(default_factory=list)
    auto_loss_tag: str | None = None  # what the shared auto-pick chooses (replay uses it without --loss-tag)
    checkpoint_root: str | None = None  # RunInputs.checkpoint_root: where --checkpoints sent the search
    # per-task loss tags named by the user (--loss-tag): their events are errors and spikes; auto-picked
    # ones (loss_*, *_mse beside the total) report a blowup only, as a warning
    task_tags_named: bool = False
    vhat_fall: VhatFall | None = None  # how far the mean v̂ fell from its peak before the event
    clip_norm: float | None = None  # gradient clipping the writer logged: v reconstructed from min(norm, clip)
    clip_source: str = ""
    # logged steps whose gradient norm was non-finite while training went on: skipped by loss scaling
    overflow_steps: list[int] = field(default_factory=list)
    # values the loss tag holds when it has fewer than MIN_LOSS_POINTS steps (several values a step: a
    # writer called without a step logs everything at step 0); None otherwise
    n_loss_rows: int | None = None

    @property
    def blowup_step(self) -> int | None:
        b = self.events.blowup_step
        return None if b is None else int(b)

    @property
    def has_mechanism_data(self) -> bool:
        """Gradient or optimizer data that can tell the causes apart: a logged trajectory, or optimizer
        checkpoints from before the event — at least a pair, the least that shows how v moved (r over the
        interval between them). A checkpoint taken after a blowup holds the state the blowup left (Lightning's
        default keeps only the last epoch's), nothing about what led to it. Without an event, any checkpoint."""
        if self.trajectories:
            return True
        if self.event_step is None:
            return bool(self.checkpoints)
        return len(self.checkpoints_before_event()) >= MIN_CHECKPOINTS_BEFORE_EVENT

    def checkpoints_before_event(self) -> list[Any]:
        """The checkpoints taken before the loss event (all of them without one)."""
        if self.event_step is None:
            return list(self.checkpoints)
        return [c for c in self.checkpoints if c.step is not None and c.step < self.event_step]

    def deep_collapses(self) -> list[Collapse]:
        return [c for c in self.collapses if c.deep]

    def stale_collapses(self) -> list[Collapse]:
        """The shallow quiet stretches that may decide a stale v (the ``stale_v`` rule).

        A shallow stretch (v̂ a few times below its peak, not ≥ 100x) makes a blowup a v collapse only
        when the whole model lives on the stale v: then lowering lr only moves the instability later
        (the adaptive edge of stability belongs to the model's step, not to one tensor's). In single
        tensors while the all-parameter r is not quiet, it is the ordinary fall of some tensors'
        gradients after the first steps: the monitor's per-tensor tags show it in warm-ups to a too-high
        lr whose blowup lr/10 avoids and no eps does (bench/README.md, session 9). So where there is an
        exact all-parameter trajectory (every step logged from the start, or checkpoint-seeded; the
        monitor's tags), only its own stretch counts; per-tensor ones (histograms, the monitor's tags,
        checkpoints) count without one — an every-N-steps reconstruction cannot tell that r was not quiet
        between its points. A *deep* stretch in any tensor still decides (:meth:`deep_collapses`):
        √v̂ ≥ 10x down grows that tensor's step ≥ 10x by itself."""
        shallow = [c for c in self.collapses if not c.deep]
        if any(t.label == "global" and t.exact for t in self.trajectories):
            return [c for c in shallow if c.label == "global"]
        return shallow

    def collapse_warning_step(self) -> int | None:
        """When the evidence for a collapse was first visible: from deep stretches when there are any
        (depth is what makes a quiet stretch dangerous), else from the shallow ones that decide a stale v,
        else from any sustained shallow one."""
        deep = self.deep_collapses()
        pool = deep or self.stale_collapses() or self.collapses
        return min((c.warning_step for c in pool), default=None)


def tensor_eps(t: Any) -> float | None:
    """A checkpoint tensor's own eps, when its file (or --assume-eps) states it."""
    return _known(t, "eps")


def optimizer_key(t: Any) -> str | None:
    """The key of the optimizer a checkpoint tensor belongs to ('optimizerG'), None when the reader gave none."""
    key = _optimizer_of(t).get("key")
    return str(key) if key is not None else None


def _known(t: Any, name: str) -> float | None:
    """A tensor's hyperparameter when the checkpoint (or the user's --assume-*) gave it: None for a
    null/NaN value or source "unknown" (io.checkpoints.hyper: never a silent default)."""
    v = getattr(t, name, None)
    src = (getattr(t, "hyper_source", None) or {}).get(name)
    if v is None or src == "unknown":
        return None
    x = float(v)
    return x if math.isfinite(x) else None


def hyperparameters(ckpt: Any | None) -> tuple[float, float, float | None]:
    """The run's (β2, eps, lr) from a checkpoint: per hyperparameter, the value the most elements use
    among the tensors that state it (param groups differ: LLM recipes mix β2; the first tensor alone
    may be a small no-decay group). Without a checkpoint, or where no tensor states it: the torch
    defaults for β2/eps and no lr. Per tensor: :func:`tensor_hyperparameters`."""
    if ckpt is None or not ckpt.tensors:
        return DEFAULT_BETA2, DEFAULT_EPS, None
    out: list[float | None] = []
    for name in ("beta2", "eps", "lr"):
        weight: dict[float, int] = {}
        for t in ckpt.tensors:
            x = _known(t, name)
            if x is not None:
                weight[x] = weight.get(x, 0) + int(getattr(t, "numel", 1) or 1)
        # most elements first; ties go to the value met first (optimizer order)
        out.append(max(weight, key=lambda x: weight[x]) if weight else None)
    beta2, eps, lr = out
    return (
        beta2 if beta2 is not None else DEFAULT_BETA2,
        eps if eps is not None else DEFAULT_EPS,
        lr,
    )


def tensor_hyperparameters(ckpt: Any | None) -> dict[str, tuple[float, float, float | None]]:
    """(β2, eps, lr) of every tensor of a checkpoint, by its label, each from its own param group;
    a value its checkpoint does not state is the run's (:func:`hyperparameters`)."""
    if ckpt is None:
        return {}
    run = hyperparameters(ckpt)
    out = {}
    for t in ckpt.tensors:
        own = [_known(t, name) for name in ("beta2", "eps", "lr")]
        out[ckpt_tensor_label(t)] = (
            own[0] if own[0] is not None else run[0],
            own[1] if own[1] is not None else run[1],
            own[2] if own[2] is not None else run[2],
        )
    return out


def state_problems(ckpts: list[Any]) -> list[StateProblem]:
    """Tensors whose saved m or v holds NaN/Inf (``nonfinite``) or a negative v (``corrupt``)."""
    out = []
    for c in ckpts:
        for t in c.tensors:
            if getattr(t, "nonfinite", 0):
                out.append(StateProblem(int(c.step), ckpt_tensor_label(t), "nonfinite"))
            elif getattr(t, "negative_v", 0) or getattr(t, "corrupt", None):
                out.append(StateProblem(int(c.step), ckpt_tensor_label(t), "corrupt"))
    return out


@dataclass
class RunInputs:
    """Everything the readers found for one run."""

    run: str
    scalars: Any  # pandas DataFrame, long format (run, tag, step, wall_time, value, segment, source_file)
    histograms: Any = None  # pandas DataFrame (HISTOGRAM_COLUMNS) or None
    checkpoints: list[Any] = field(default_factory=list)  # CheckpointSummary, sorted by step
    warnings: list[str] = field(default_factory=list)
    convention: str = "torch"
    checkpoint_paths: list[str] = field(default_factory=list)
    non_adam: list[str] = field(default_factory=list)  # "path: what optimizer it holds"
    # the gradient-clipping norm, when the writer logged it (io.events.writer_clip_norm), and from where
    clip_norm: float | None = None
    clip_source: str = ""
    # the --checkpoints folder searched for this run (None: the run's own folder, or nothing given), so that
    # "no checkpoint" does not tell a user who passed one to pass --checkpoints
    checkpoint_root: str | None = None
    # keras_logs.epoch_axis_to_iterations' note when Keras' epoch_* points were moved to the iteration axis
    epoch_axis: dict[str, Any] | None = None
    # β2/eps for a run without checkpoints ({"beta2": .., "eps": ..}, either may be missing), and from where:
    # the user's --assume-*, or the training's own configuration as its writer logged it
    # (io.events.writer_adam_hyperparameters); the defaults where empty
    hyper: dict[str, float] = field(default_factory=dict)
    hyper_source: str = ""
    # tags the reader knows to be Keras' running means without epoch_* values beside them (io.events.RunEvents'
    # running_means: tag -> finished epochs, or None when the log does not tell)
    running_means: dict[str, int | None] = field(default_factory=dict)


def tags_of(inp: RunInputs) -> list[str]:
    s = inp.scalars
    return sorted(set(s["tag"].unique())) if s is not None and len(s) else []


def series_arrays(scalars: Any, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a scalar tag as the run really went (restarts: the later segment wins)."""
    from adamdiag.analysis.frames import series

    s = series(scalars, tag)
    return s.index.to_numpy(np.int64), s.to_numpy(np.float64)


def loss_series(
    scalars: Any,
    tag: str,
    tags: list[str],
    rebuilt: list[dict[str, Any]],
    running_means: dict[str, int | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a loss tag, with Keras' per-epoch running means (``batch_loss`` beside an
    ``epoch_loss``, or a tag its reader declared one: ``running_means``, tag -> finished epochs or None)
    turned back into per-batch losses first: read raw, a 13x batch shows as a small bump and every epoch
    start as a drop; likewise fastai's smoothed ``train_loss`` (a debiased EMA: :mod:`fastai_logs`). What was
    done is appended to ``rebuilt`` (rules AD603, AD605); Detectron2's running medians are read as logged
    (AD606: :mod:`median_logs`)."""
    from adamdiag.analysis.fastai_logs import is_smoothed_loss_tag, unsmooth
    from adamdiag.analysis.keras_logs import is_running_mean_tag, reconstruct_running_mean
    from adamdiag.analysis.median_logs import median_window

    steps, values = series_arrays(scalars, tag)
    declared = running_means or {}
    if is_running_mean_tag(tag, tags):
        base = tag.rsplit("/", 1)[-1]
        epochs = tag[: len(tag) - len(base)] + "epoch_" + base[len("batch_") :]
        epoch_tag: str | None = epochs
        r = reconstruct_running_mean(steps, values, epoch_values=series_arrays(scalars, epochs)[1])
    elif tag in declared:  # no epoch values: the epoch count (when known) checks the boundaries found
        epoch_tag = None
        r = reconstruct_running_mean(steps, values, n_epochs=declared[tag])
    elif is_smoothed_loss_tag(tag, tags):  # fastai's train_loss: a debiased EMA of the batch losses (AD605)
        u = unsmooth(steps, values)
        rebuilt.append({"tag": tag, "kind": "fastai-smoothed", "reconstructed": u.rebuilt, "reason": u.reason})
        return (u.steps, u.values) if u.rebuilt else (steps, values)
    elif (window := median_window(tag, tags)) is not None:  # Detectron2: a running median, not invertible (AD606)
        rebuilt.append({"tag": tag, "kind": "median", "window": window, "reconstructed": False})
        return steps, values
    else:
        return steps, values
    rebuilt.append(
        {
            "tag": tag,
            "epoch_tag": epoch_tag,
            "reconstructed": bool(r.reconstructed),
            "reason": r.reason,
            "notes": list(r.notes),
        }
    )
    return (r.steps, r.values) if r.reconstructed else (steps, values)


def gather(
    inp: RunInputs, loss_tags: list[str], grad_norm_tag: str | None, *, task_tags_named: bool = False
) -> Evidence:
    """Collect the evidence of one run. ``loss_tags[0]`` is the total loss (it sets the blowup step);
    the others are per-task losses whose events become findings of their own."""
    from adamdiag.analysis.signals import LossEvents, detect_loss_events
    from adamdiag.analysis.tags import pick_loss_tag, pick_lr_tag

    scalars = inp.scalars
    ckpts = sorted((c for c in inp.checkpoints if getattr(c, "step", None) is not None), key=lambda c: c.step)
    loss_tag = loss_tags[0] if loss_tags else None
    tags = tags_of(inp)
    rebuilt: list[dict[str, Any]] = []
    if loss_tag is not None:
        steps, loss = loss_series(scalars, loss_tag, tags, rebuilt, inp.running_means)
        ev = detect_loss_events(steps, loss)
    else:
        steps, loss, ev = np.zeros(0, np.int64), np.zeros(0), LossEvents()
    task_events = {
        t: detect_loss_events(*loss_series(scalars, t, tags, rebuilt, inp.running_means)) for t in loss_tags[1:]
    }
    event_step = ev.blowup_step if ev.blowup_step is not None else (ev.spikes[0] if ev.spikes else None)
    # The replay start: the last checkpoint before the event whose state is sound (NaN/Inf or a
    # corrupt v can't start a replay: it would replay the damage, not the run).
    bad_steps = {p.step for p in state_problems(ckpts)}
    before = [c for c in ckpts if (event_step is None or c.step < event_step) and c.step not in bad_steps]
    start = before[-1] if before else None
    # Hyperparameters: those the replay would start from (the last checkpoint before the event), else
    # the first checkpoint; β2 decides the memory span, so it must be the run's own.
    beta2, eps, lr = hyperparameters(start or (ckpts[0] if ckpts else None))
    hyper_defaults = "torch"
    if not ckpts and (keras_written(tags) or inp.running_means):
        # Keras' Adam is not torch's: its default eps is 1e-7 (the value a v collapse is measured against); a
        # reader declares running means only for a Keras writer (MLflow's Keras callback)
        hyper_defaults, eps = "Keras", KERAS_DEFAULT_EPS
    hyper_source = ""
    if not ckpts and inp.hyper:
        # β2 is v's memory span, which the reconstruction from the gradient norm runs on (LLM recipes: 0.95)
        b, e = inp.hyper.get("beta2"), inp.hyper.get("eps")
        beta2 = b if b is not None and 0 < b < 1 else beta2
        eps = e if e is not None and 0 < e < math.inf else eps
        hyper_source = inp.hyper_source

    trajs, gn, skipped, estimated_clip = _trajectories(
        inp, ckpts, grad_norm_tag, beta2, eps, ev, int(steps[-1]) if len(steps) else None
    )
    monitor = monitor_trajectories(scalars, tags, beta2, eps if ckpts else 0.0)
    if monitor:
        # The live monitor logged r and v̂ themselves, per step: exact where the reconstruction from the
        # gradient norm is an estimate. It replaces the logged-gradient trajectories (gn stays: the
        # one-step jump test reads the gradient norm itself) — except an all-parameter one that is denser
        # and agrees with it.
        trajs = with_denser_global(monitor, trajs)
        for tr in trajs:
            tr.convention = inp.convention
    ratios = checkpoint_interval_ratios(ckpts, beta2)
    collapses: list[Collapse] = []
    regrowth: list[tuple[str, float, int]] = []
    rms: list[tuple[str, float, int]] = []
    grad_jump = None
    if event_step is not None:
        # Order matters to the recommendation (the first named tensor sizes the eps): stretches from
        # the logs first, deep before shallow, in logging order; then checkpoints', deep and largest first.
        # The instability episode starts at the first of the recovered spikes that lead into the blowup:
        # the quiet stretch that explains it must reach that start, not the last spike.
        start_of = episode_start(ev)
        collapses = logged_collapses(trajs, start_of) + checkpoint_collapses(ckpts, ratios, start_of, beta2)
        regrowth, rms = _near_event_peaks(trajs, event_step)
        grad_jump = abrupt_gradient_jump(event_step, gn)
        if grad_jump is not None:
            grad_jump["isolated"] = jump_is_isolated(grad_jump, gn)
    lr_at_event = lr_peak_after = lr_before_start = None
    lr_tag = pick_lr_tag(tags)
    ls, lv = series_arrays(scalars, lr_tag) if lr_tag is not None else (np.zeros(0, np.int64), np.zeros(0))
    if lr_tag is not None and event_step is not None:
        k = int(np.searchsorted(ls, event_step, side="right")) - 1
        lr_at_event = float(lv[k]) if k >= 0 and math.isfinite(lv[k]) else None
        after = lv[max(k, 0) :]
        after = after[np.isfinite(after)]
        lr_peak_after = float(after.max()) if lr_at_event is not None and len(after) else None
    if lr_tag is not None and start is not None:
        k = int(np.searchsorted(ls, start.step, side="right")) - 1
        lr_before_start = float(lv[k]) if k >= 0 and math.isfinite(lv[k]) and lv[k] > 0 else None
    return Evidence(
        loss_tag=loss_tag,
        loss_tags=list(loss_tags),
        grad_norm_tag=grad_norm_tag,
        n_loss_points=len(steps),
        loss_last_step=int(steps[-1]) if len(steps) else None,
        loss_first_step=int(steps[0]) if len(steps) else None,
        n_loss_rows=int((scalars["tag"] == loss_tag).sum())
        if loss_tag is not None and len(steps) < MIN_LOSS_POINTS
        else None,
        events=ev,
        task_events=task_events,
        event_step=event_step,
        trajectories=trajs,
        collapses=collapses,
        regrowth=regrowth,
        update_rms=rms,
        pre_event_r=pre_event_r(trajs, event_step),
        grad_jump=grad_jump,
        state_problems=state_problems(ckpts),
        non_adam=list(inp.non_adam),
        checkpoints=ckpts,
        ratios=ratios,
        start=start,
        beta2=beta2,
        eps=eps,
        lr=lr,
        hyper_assumed=not ckpts,
        hyper_defaults=hyper_defaults,
        hyper_source=hyper_source,
        epoch_axis=inp.epoch_axis,
        lr_at_event=lr_at_event,
        lr_peak_after=lr_peak_after,
        lr_before_start=lr_before_start,
        spike_cycles=spike_cycles(trajs, (ls, lv), ev.spikes, event_step, beta2),
        absorbed_jump=absorbed_gradient_jumps(gn) if event_step is None else None,
        one_point_spike=one_point_spike(steps, loss, ev.spikes) if ev.blowup_step is None and gn is None else None,
        unresolved_spike=unresolved_spike(steps, loss, ev.spikes, ev.spike_levels) if ev.blowup_step is None else None,
        end_climb=ended_above_start(steps, loss)
        if ev.blowup_step is None and ev.first_nonfinite_step is None
        else None,
        blowup_batch_spike=(
            blowup_batch_spike(steps, loss, ev.blowup_step) if ev.blowup_step is not None and gn is None else None
        ),
        loss_rebuilt=rebuilt,
        auto_loss_tag=pick_loss_tag(tags),
        checkpoint_root=inp.checkpoint_root,
        task_tags_named=task_tags_named,
        vhat_fall=vhat_fall(trajs, ckpts, event_step, beta2),
        clip_norm=inp.clip_norm if estimated_clip is None else estimated_clip,
        clip_source=inp.clip_source if estimated_clip is None else "estimated from the checkpoints' v",
        overflow_steps=skipped,
    )


# Tags of the live monitor (adamdiag.monitor): adamdiag/[<optimizer index>/]<global|tensor>/<signal>.
MONITOR_PREFIX = "adamdiag/"


def monitor_trajectories(scalars: Any, tags: list[str], beta2: float, eps: float) -> list[Trajectory]:
    """Trajectories straight from the live monitor's tags (``g2_mean``, ``vhat_mean``, ``r`` — exact at
    every logged step, no reconstruction): all parameters, and each tensor it logged. With several
    optimizers the first one's (``adamdiag/0/``) are used."""
    rs = sorted(t for t in tags if t.startswith(MONITOR_PREFIX) and t.endswith("/global/r"))
    if not rs:
        return []
    root = rs[0][: -len("global/r")]  # "adamdiag/" or "adamdiag/0/"
    out = []
    for r_tag in sorted(t for t in tags if t.startswith(root) and t.endswith("/r")):
        label = r_tag[len(root) : -len("/r")]
        if label.count("/") and root == MONITOR_PREFIX and label.split("/", 1)[0].isdigit():
            continue  # another optimizer's tag under the plain prefix
        g2_tag, vhat_tag = r_tag[: -len("r")] + "g2_mean", r_tag[: -len("r")] + "vhat_mean"
        if g2_tag not in tags or vhat_tag not in tags:
            continue
        steps, r = series_arrays(scalars, r_tag)
        g2 = series_arrays(scalars, g2_tag)[1]
        vhat = series_arrays(scalars, vhat_tag)[1]
        if not (len(steps) == len(g2) == len(vhat)) or len(steps) < MIN_LOSS_POINTS:
            continue
        out.append(
            Trajectory(
                label=label, steps=steps, g2=g2, vhat=vhat, r=r, exact=True, eps=eps, beta2=beta2, source="monitor"
            )
        )
    return out


def with_denser_global(monitor: list[Trajectory], logged: list[Trajectory]) -> list[Trajectory]:
    """The monitor's trajectories, its all-parameter one replaced by the one reconstructed from a
    gradient norm logged every step when that is denser and agrees with it — r and v̂ (relative to the
    first common step) within MONITOR_LOG_AGREEMENT at every step both have. The monitor computes its
    statistics every ``every`` steps: a quiet stretch of 20 steps is two of its points, too few to count
    as sustained, and an excursion of r between its points is not seen at all, while the log has every
    step. Where they disagree the log is not what Adam saw (a clip the writer did not log, a norm taken
    before loss scaling) and the monitor's values stand.

    >>> s = np.arange(1, 31)
    >>> g2 = np.r_[np.full(10, 1.0), np.full(20, 0.01)]
    >>> log = reconstruct(s, g2, 0.99, [], 0.0, "global")
    >>> k = np.r_[np.arange(10), np.arange(19, 30, 10)]  # steps 1-10, 20 and 30
    >>> mon = Trajectory("global", s[k], g2[k], log.vhat[k] * 7.0, log.r[k], exact=True, source="monitor")
    >>> [t.source for t in with_denser_global([mon], [log])]
    ['log']
    >>> bad = Trajectory("global", s[k], g2[k], log.vhat[k], log.r[k] * 1.5, exact=True, source="monitor")
    >>> [t.source for t in with_denser_global([bad], [log])]
    ['monitor']
    """
    lg = next((t for t in logged if t.label == "global" and t.exact), None)
    mi = next((i for i, t in enumerate(monitor) if t.label == "global"), None)
    if lg is None or mi is None:
        return monitor
    mg = monitor[mi]
    inside = (lg.steps >= mg.steps[0]) & (lg.steps <= mg.steps[-1])
    if int(inside.sum()) <= len(mg.steps):
        return monitor
    _, il, im = np.intersect1d(lg.steps, mg.steps, return_indices=True)
    r_l, r_m = lg.r[il], mg.r[im]
    both = np.isfinite(r_l) & np.isfinite(r_m) & (r_m > 0)
    v_l, v_m = lg.vhat[il], mg.vhat[im]
    if int(both.sum()) < MIN_LOSS_POINTS or not (v_l[0] > 0 and v_m[0] > 0):
        return monitor
    with np.errstate(divide="ignore", invalid="ignore"):
        dev_r = np.abs(r_l[both] / r_m[both] - 1.0)
        dev_v = np.abs((v_l / v_l[0]) / (v_m / v_m[0]) - 1.0)
    if not (np.all(dev_r <= MONITOR_LOG_AGREEMENT) and np.all(dev_v <= MONITOR_LOG_AGREEMENT)):
        return monitor
    return [*monitor[:mi], lg, *monitor[mi + 1 :]]


def _trajectories(
    inp: RunInputs,
    ckpts: list[Any],
    grad_norm_tag: str | None,
    beta2: float,
    eps: float,
    ev: Any,
    loss_last_step: int | None,
) -> tuple[list[Trajectory], tuple[np.ndarray, np.ndarray] | None, list[int], float | None]:
    """r trajectories (global from the gradient norm, per tensor from histograms), the gradient-norm
    series, the steps skipped by loss scaling, and the clip the checkpoints imply when none was logged or
    given (:func:`clip_from_checkpoints`; v is then rebuilt from the clipped norm). A non-finite gradient norm before the loss's first one
    moves ``ev.first_nonfinite_step`` — unless training plainly went on past it (:func:`overflow_skipped`).
    A run whose checkpoints hold another optimizer gets none: its logs say nothing about Adam's v."""
    trajs: list[Trajectory] = []
    gn = None
    skipped: list[int] = []
    estimated = None
    if grad_norm_tag is not None and not inp.non_adam:
        gs, gv = series_arrays(inp.scalars, grad_norm_tag)
        gn = (gs, gv)
        ok = np.isfinite(gv)
        means = [(int(c.step), *ckpt_global_mean_v(c)) for c in ckpts]  # (step, mean v, element count)
        n_total = means[0][2] if means else 1  # unknown: the ratio r does not depend on it (both sides scale by 1/N)
        seeds = [(step, mean_v) for step, mean_v, _ in means]
        clip = inp.clip_norm
        zero_based = logged_zero_based(gs)
        if clip is None and len(means) > 1:
            # No clip logged or given: the checkpoints' own v can still show that Adam saw clipped gradients.
            # (On Adam's step count, which the checkpoints keep: a 0-based log is one behind it.)
            clip = estimated = clip_from_checkpoints(gs + 1 if zero_based else gs, gv, means, beta2)
        if ok.sum() >= MIN_LOSS_POINTS:
            # Without a checkpoint the element count is unknown, so v's absolute scale is too:
            # eps=0 keeps eps out of every comparison (r itself does not depend on the scale).
            # Clipping the writer logged (HF Trainer logs the norm before it): Adam squared the clipped gradient.
            seen = np.minimum(gv[ok], clip) if clip else gv[ok]
            trajs.append(
                reconstruct(
                    gs[ok], seen**2 / n_total, beta2, seeds, eps if ckpts else 0.0, "global", zero_based=zero_based
                )
            )
        if (~ok).any():
            if overflow_skipped(gs, ok, ev.first_nonfinite_step, loss_last_step):
                skipped = [int(x) for x in gs[~ok]]
            else:
                nf_step = int(gs[~ok][0])
                if ev.first_nonfinite_step is None or nf_step < ev.first_nonfinite_step:
                    ev.first_nonfinite_step = nf_step
    hist = inp.histograms
    if hist is not None and len(hist) and not inp.non_adam:
        per_tag = gradient_histograms(hist)  # ordered once, for both
        per_tensor = histogram_trajectories(hist, ckpts, beta2, eps, per_tag=per_tag)
        if grad_norm_tag is None and len(per_tensor) >= MIN_GLOBAL_HISTOGRAMS:
            # No gradient-norm scalar (wandb.watch users log none): the histograms of every parameter together
            # are its square, Σ sum_squares over Σ num — the all-parameter trajectory the global rules read
            glob = histogram_global(hist, ckpts, beta2, eps, per_tag=per_tag)
            if glob is not None:
                trajs.append(glob)
        trajs += per_tensor
    for tr in trajs:
        tr.convention = inp.convention
    return trajs, gn, skipped, estimated


def overflow_skipped(
    steps: np.ndarray, finite: np.ndarray, loss_nonfinite_step: int | None, loss_last_step: int | None
) -> bool:
    """Whether the non-finite gradient norms are steps that mixed-precision loss scaling skipped (torch's
    GradScaler, DeepSpeed's and Megatron's fp16 scalers: on an overflow the step is not taken and the
    scale halves) rather than a failure. An optimizer that did step with an Inf/NaN gradient leaves NaN
    parameters, and every later loss is NaN; so: the loss never went non-finite, the gradient norm is
    finite again at its last point, and the loss goes on past the last non-finite one.

    >>> s = np.arange(1, 9); ok = np.array([1, 1, 0, 0, 1, 1, 0, 1], bool)
    >>> overflow_skipped(s, ok, None, 8), overflow_skipped(s, ok, 5, 8), overflow_skipped(s[:7], ok[:7], None, 7)
    (True, False, False)
    """
    if loss_nonfinite_step is not None or loss_last_step is None or not len(steps) or not finite[-1]:
        return False
    return bool(loss_last_step > int(steps[~finite][-1]))


def _near_event_peaks(
    trajs: list[Trajectory], event_step: int
) -> tuple[list[tuple[str, float, int]], list[tuple[str, float, int]]]:
    """Per trajectory, the largest r above REGROWTH_R and update RMS above UPDATE_RMS_LIMIT in the
    REGROWTH_WINDOW steps before the event (and the step after it)."""
    from adamdiag.analysis.thresholds import REGROWTH_R, UPDATE_RMS_LIMIT

    regrowth, rms = [], []
    lo, hi = event_step - REGROWTH_WINDOW, event_step + 2
    for tr in trajs:
        rmax, rstep = window_max(tr, tr.r, lo, hi)
        if math.isfinite(rmax) and rmax > REGROWTH_R and rstep is not None:
            regrowth.append((tr.label, rmax, rstep))
        prev = np.r_[np.nan, tr.vhat[:-1]]
        with np.errstate(divide="ignore", invalid="ignore"):
            urms = np.sqrt(tr.g2 / np.maximum(prev, tr.eps_eff() ** 2))
        umax, ustep = window_max(tr, urms, lo, hi)
        if math.isfinite(umax) and umax > UPDATE_RMS_LIMIT and ustep is not None:
            rms.append((tr.label, umax, ustep))
    return regrowth, rms


def episode_start(ev: Any) -> int:
    """First step of the instability episode ending in the event: a blowup preceded by recovered spikes,
    each within BLOWUP_HORIZON steps of the next, started at the first of them (an Adam instability often
    flares and settles a few times before it runs away). Without a blowup: the event itself."""
    from adamdiag.analysis.thresholds import BLOWUP_HORIZON

    start = ev.blowup_step if ev.blowup_step is not None else (ev.spikes[0] if ev.spikes else None)
    if ev.blowup_step is None or start is None:
        return int(start) if start is not None else 0
    for s in sorted(ev.spikes, reverse=True):
        if s < start and start - s <= BLOWUP_HORIZON:
            start = s
    return int(start)


def jump_is_isolated(jump: dict[str, Any], gn: tuple[np.ndarray, np.ndarray] | None) -> bool:
    """A bad batch is one step: at the next logged point the gradient norm is back under 1/GRAD_JUMP_FACTOR
    of the jump. A v-collapse instability keeps the gradients large (the parameters moved far)."""
    if gn is None:
        return False
    steps, vals = gn
    k = int(np.searchsorted(steps, jump["step"], side="right"))
    if k >= len(vals) or not math.isfinite(vals[k]):
        return False
    return bool(vals[k] * GRAD_JUMP_FACTOR <= jump["grad_norm"])
