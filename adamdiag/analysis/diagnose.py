"""The diagnosis: v collapse vs its look-alikes, from whatever a run offers.

Pure: frames and checkpoint summaries in, a :class:`~adamdiag.results.report.RunReport` out.

The decision follows the mechanism (DESIGN.md):

1. The loss curve gives *when*: the first non-finite value, a sustained blowup, or short spikes
   (:func:`adamdiag.analysis.signals.detect_loss_events`).
2. The second moment gives *why*. r_t = mean(g²_t) / mean(v̂_{t-1}) is ~1 in steady state, ≪ 1
   while v decays on the memory of larger past gradients (collapse), ≫ 1 when gradients re-grow.
   It comes from the exact EMA reconstruction of mean(v) from logged gradient norms or histograms,
   seeded by checkpoints where there are some, or from the v of consecutive checkpoints alone.
3. Verdict, in order: non-finite without an earlier blowup → ``nonfinite``; a ≥10x one-step jump of
   the gradient norm at the loss event → ``bad_batch``; a blowup preceded by a long and deep
   collapse → ``v_collapse``; a blowup with no gradient or optimizer data at all → ``inconclusive``
   (the loss alone can't tell the causes apart); recovered spikes only → ``healthy`` with warnings;
   any other blowup (v healthy, g²/v̂ ≈ O(1)) → ``lr_too_high``; nothing blew up but eps dominates
   almost every element and the loss barely moved → ``eps_too_large``; otherwise ``healthy``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adamdiag.analysis.signals import (
    LossEvents,
    detect_loss_events,
    ema_second_moment,
    sustained_runs,
)
from adamdiag.results.report import Finding, RunReport

# --- thresholds, each justified by the mechanism -------------------------------------------------
# r = g²/v̂ is 1 in steady state and 0 under pure decay (v_{t+1} = β2·v_t). Below 0.1, at least
# 90% of v's per-step change is decay: v lives on the memory of old gradients. Ordinary early
# training, where v̂ still averages the large first gradients, sits around 0.2-0.5.
COLLAPSE_R = 0.1
# The collapse must hold for a good part of v's memory (1/(1-β2) steps) before it matters: a few
# quiet steps decay v by a negligible factor. 0.2/(1-β2) steps (200 at β2=0.999) shrink v by ≥ 18%
# in pure decay, and are far longer than the quiet transients of early training, where v̂ still
# averages the first large gradients for ~100 steps.
COLLAPSE_MIN_MEMORY_FRACTION = 0.2
# Depth: v̂ at most 1% of its peak so far, i.e. √v̂ (the denominator of the update) fell ≥ 10x —
# the per-element step lr/(√v̂+eps) for the same gradient is ≥ 10x what it was.
COLLAPSE_DEPTH = 0.01
# Re-growth: the current g² is 10x what v̂ expects; m (β1=0.9) reacts within ~10 steps, v within
# ~1000, so the update m̂/√v̂ grows by up to ~√10 and more.
REGROWTH_R = 10.0
# Steps before the blowup in which the re-growth and update-RMS signals are searched.
REGROWTH_WINDOW = 50
# Wortsman et al. 2023: update RMS > 1 precedes loss spikes by 1-8 steps.
UPDATE_RMS_LIMIT = 1.0
# eps dominates an element when √v̂ < eps; when it does for 90% of the elements Adam is, in effect,
# SGD with step lr/eps (eps_too_large, if the loss also barely moved).
EPS_DOMINATED_FRACTION = 0.9

DEFAULT_BETA2 = 0.999
DEFAULT_EPS = 1e-8
REPORT_EPS_CANDIDATES = (1e-3, 1e-2, 1e-1)

LOSS_TAGS = (
    "train/loss",
    "loss",
    "train_loss",
    "loss/train",
    "Loss/train",
    "training/loss",
    "train/total_loss",
    "total_loss",
    "train/loss_total",
)
GRAD_NORM_TAGS = (
    "train/grad_norm",
    "grad_norm",
    "train/gradient_norm",
    "gradient_norm",
    "grad_norm/total",
    "train/grad_norm_clipped",
)


@dataclass
class RunInputs:
    """Everything the readers found for one run."""

    run: str
    scalars: Any  # pandas DataFrame, long format (DESIGN.md)
    histograms: Any = None  # pandas DataFrame or None
    checkpoints: list[Any] = field(default_factory=list)  # CheckpointSummary, sorted by step
    warnings: list[str] = field(default_factory=list)
    convention: str = "torch"
    checkpoint_paths: list[str] = field(default_factory=list)


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

    def eps_eff(self) -> np.ndarray:
        """eps relative to √v̂ at each step. TF adds eps to the un-corrected √v, which is
        √v̂·√(1-β2^t): relative to √v̂ that is eps/√(1-β2^t) — larger early in training."""
        if self.convention == "tf":
            return self.eps / np.sqrt(-np.expm1(np.maximum(self.steps, 1) * math.log(self.beta2)))
        return np.full(len(self.steps), self.eps)


# --- tag selection --------------------------------------------------------------------------------
def pick_tag(tags: list[str], preferred: tuple[str, ...], must: tuple[str, ...], avoid: tuple[str, ...]) -> str | None:
    """The first preferred tag present, else the shortest tag containing all of ``must`` and none of
    ``avoid`` (case-insensitive)."""
    for t in preferred:
        if t in tags:
            return t
    low = {t: t.lower() for t in tags}
    cands = [t for t in tags if all(m in low[t] for m in must) and not any(a in low[t] for a in avoid)]
    return min(cands, key=len) if cands else None


def _series(scalars, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a scalar tag as the run really went (restarts: the later segment wins)."""
    from adamdiag.analysis.frames import series

    s = series(scalars, tag)
    return s.index.to_numpy(np.int64), s.to_numpy(np.float64)


# --- reconstruction -------------------------------------------------------------------------------
def reconstruct(
    steps: np.ndarray,
    g2: np.ndarray,
    beta2: float,
    seeds: list[tuple[int, float]],
    eps: float,
    label: str,
) -> Trajectory:
    """mean(v̂) along the logged steps from per-step mean(g²), re-seeded exactly at checkpoints.

    ``seeds`` are (step, exact mean(v)) from checkpoints. Before the first seed the EMA starts from
    v=0 at step 0 when logging starts at step ≤ 1 (exact), else from the first g² (steady-state
    assumption, approximate).
    """
    order = np.argsort(steps, kind="stable")
    steps, g2 = steps[order], g2[order]
    n = len(steps)
    gaps = np.diff(steps)
    exact = bool(n and steps[0] <= 1 and (len(gaps) == 0 or gaps.max() <= 1))
    v = np.empty(n)
    vhat = np.empty(n)
    seeds = sorted(s for s in seeds if math.isfinite(s[1]))
    # Piecewise: each segment between seeds starts from the seed's exact value.
    bounds: list[tuple[int, int, float, int]] = []  # (start index, end index, v0, step0)
    seed_iter = [(s, val) for s, val in seeds if n and steps[0] <= s <= steps[-1]]
    start_v, start_step = (
        (0.0, 0) if (n and steps[0] <= 1) else (float(g2[0]) if n else 0.0, int(steps[0]) - 1 if n else 0)
    )
    if n and steps[0] > 1:
        exact = False
        earlier = [(s, val) for s, val in seeds if s < steps[0]]
        if earlier:
            start_step, start_v = earlier[-1]
            exact = exact or bool(len(gaps) == 0 or gaps.max() <= 1)
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
    return Trajectory(label=label, steps=steps, g2=g2, vhat=vhat, r=r, exact=exact, eps=eps, beta2=beta2)


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
    span = COLLAPSE_MIN_MEMORY_FRACTION / (1.0 - beta2)
    # min_len in logged points: logging every N steps needs fewer points for the same span.
    if len(tr.steps) > 1:
        step_per_point = max(1.0, float(np.median(np.diff(tr.steps))))
    else:
        step_per_point = 1.0
    min_len = max(3, int(math.ceil(span / step_per_point)))
    runs = sustained_runs(np.nan_to_num(mask, nan=0).astype(bool), min_len)
    if not runs:
        return None
    if until is not None:
        # Only a stretch that lasts until shortly before the blowup explains it.
        tol = max(REGROWTH_WINDOW, 3 * step_per_point)
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


def _window_max(tr: Trajectory, values: np.ndarray, lo: int, hi: int) -> tuple[float, int | None]:
    sel = (tr.steps >= lo) & (tr.steps <= hi) & np.isfinite(values)
    if not sel.any():
        return float("nan"), None
    i = int(np.argmax(np.where(sel, values, -np.inf)))
    return float(values[i]), int(tr.steps[i])


# --- checkpoints ---------------------------------------------------------------------------------
def _ckpt_tensor_label(t: Any) -> str:
    name = getattr(t, "name", None)
    return name if name else f"group {getattr(t, 'group', '?')} / index {getattr(t, 'index', '?')}"


def _ckpt_global_mean_v(c: Any) -> tuple[float, int]:
    tot = sum(float(t.v_mean) * int(t.numel) for t in c.tensors)
    n = sum(int(t.numel) for t in c.tensors)
    return (tot / n if n else float("nan")), n


def _frac_below(q: dict[str, float], x: float) -> float:
    """Fraction of elements with √v̂ < x, interpolated (log-linear) from the quantiles
    {min, p01, p50, p99, max}. An approximation; exact per-element fractions exist only for eps
    itself and 10·eps (computed by the checkpoint reader)."""
    pts = [(q.get("min"), 0.0), (q.get("p01"), 0.01), (q.get("p50"), 0.5), (q.get("p99"), 0.99), (q.get("max"), 1.0)]
    pts = [(float(a), b) for a, b in pts if a is not None and math.isfinite(float(a))]
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
            lx0, lx1, lx = (math.log(max(v, 1e-300)) for v in (x0, x1, x))
            return f0 + (f1 - f0) * (lx - lx0) / (lx1 - lx0 if lx1 > lx0 else 1.0)
    return 1.0


def checkpoint_interval_ratios(ckpts: list[Any], beta2_default: float) -> list[dict[str, Any]]:
    """Per tensor, per consecutive checkpoint pair: the interval-weighted mean g² implied by the two
    v's (DESIGN.md) relative to v̂ at the first one. ≈0 means pure decay: no gradient arrived."""
    out = []
    for a, b in zip(ckpts, ckpts[1:]):
        if a.step is None or b.step is None or b.step <= a.step:
            continue
        by_key = {(t.group, t.index): t for t in a.tensors}
        for tb in b.tensors:
            ta = by_key.get((tb.group, tb.index))
            if ta is None or not ta.v_mean or not math.isfinite(ta.v_mean):
                continue
            beta2 = float(getattr(tb, "beta2", beta2_default) or beta2_default)
            d = b.step - a.step
            decay = beta2**d
            gbar = (tb.v_mean - decay * ta.v_mean) / (1.0 - decay)
            vhat_a = ta.v_mean / (1.0 - beta2 ** max(a.step, 1))
            out.append(
                {
                    "tensor": _ckpt_tensor_label(tb),
                    "from_step": int(a.step),
                    "to_step": int(b.step),
                    "decay_ratio": float(tb.v_mean / (decay * ta.v_mean)),
                    "r_interval": float(max(gbar, 0.0) / vhat_a) if vhat_a > 0 else float("nan"),
                    "numel": int(tb.numel),
                }
            )
    return out


# --- the diagnosis -------------------------------------------------------------------------------
def diagnose(inp: RunInputs) -> RunReport:
    """Diagnose one run. See the module docstring for the decision order."""
    rep = RunReport(run=inp.run, verdict="inconclusive", convention=inp.convention, warnings=list(inp.warnings))
    scalars = inp.scalars
    tags = sorted(set(scalars["tag"].unique())) if scalars is not None and len(scalars) else []
    loss_tag = pick_tag(tags, LOSS_TAGS, ("loss",), ("val", "eval", "test", "scale", "loss_"))
    if loss_tag is None:
        loss_tag = pick_tag(tags, (), ("loss",), ("val", "eval", "test", "scale"))
    gn_tag = pick_tag(tags, GRAD_NORM_TAGS, ("grad", "norm"), ("preclip", "pre_clip", "unclipped", "val"))
    if inp.warnings:
        rep.findings.append(
            Finding(
                "AD902",
                "warning",
                f"{len(inp.warnings)} input problem(s): {inp.warnings[0]}",
                evidence={"warnings": inp.warnings[:20]},
            )
        )
    ckpts = [c for c in inp.checkpoints if getattr(c, "step", None) is not None]
    ckpts.sort(key=lambda c: c.step)
    beta2, eps, lr = _hyper(ckpts)
    assumed = not ckpts
    if scalars is not None and len(scalars):
        rep.sources.append("scalars")
    hist = inp.histograms
    if hist is not None and len(hist):
        rep.sources.append("histograms")
    if ckpts:
        rep.sources.append("checkpoints")

    if loss_tag is None:
        rep.verdict = "inconclusive"
        rep.findings.append(
            Finding(
                "AD901",
                "warning",
                f"no loss scalar found (tags: {', '.join(tags[:12]) or 'none'})",
                evidence={"tags": tags[:50]},
            )
        )
        return rep
    steps, loss = _series(scalars, loss_tag)
    ev = detect_loss_events(steps, loss)
    if len(steps) < 8:
        rep.findings.append(Finding("AD901", "warning", f"only {len(steps)} loss points in '{loss_tag}'"))
        return rep

    # Second-moment trajectories: global from the grad-norm scalar, per tensor from histograms.
    trajs: list[Trajectory] = []
    if gn_tag is not None:
        gs, gv = _series(scalars, gn_tag)
        ok = np.isfinite(gv)
        if ckpts:
            n_total = _ckpt_global_mean_v(ckpts[0])[1]
            seeds = [(int(c.step), _ckpt_global_mean_v(c)[0]) for c in ckpts]
        else:
            n_total = 1  # unknown: the ratio r does not depend on it (both sides scale by 1/N)
            seeds = []
        if ok.sum() >= 8:
            # Without a checkpoint the element count is unknown, so v's absolute scale is too:
            # eps=0 keeps eps out of every comparison (r itself does not depend on the scale).
            trajs.append(reconstruct(gs[ok], gv[ok] ** 2 / n_total, beta2, seeds, eps if ckpts else 0.0, "global"))
        if (~ok).any():
            nf_step = int(gs[~ok][0])
            if ev.first_nonfinite_step is None or nf_step < ev.first_nonfinite_step:
                ev.first_nonfinite_step = ev.first_nonfinite_step or nf_step
    if hist is not None and len(hist):
        trajs += _histogram_trajectories(hist, ckpts, beta2, eps)
    for tr in trajs:
        tr.convention = inp.convention
    ratios = checkpoint_interval_ratios(ckpts, beta2)

    gn_series = _series(scalars, gn_tag) if gn_tag else None
    blow = ev.blowup_step
    event_step = blow if blow is not None else (ev.spikes[0] if ev.spikes else None)
    rep.blowup_step = blow
    if blow is not None:
        rep.findings.append(
            Finding(
                "AD001",
                "error",
                f"loss blew up at step {blow}: {ev.pre_level:.4g} → peak {ev.peak:.4g}"
                if ev.pre_level
                else f"loss blew up at step {blow}",
                step=blow,
                evidence={"tag": loss_tag, "pre_level": ev.pre_level, "peak": ev.peak, "best_step": ev.best_step},
            )
        )
    for s in ev.spikes[:5]:
        rep.findings.append(
            Finding("AD002", "warning", f"loss spike at step {s} (recovered)", step=s, evidence={"tag": loss_tag})
        )
    nonfinite_ckpt = [c for c in ckpts if any(getattr(t, "nonfinite", 0) for t in c.tensors)]
    if ev.first_nonfinite_step is not None or nonfinite_ckpt:
        nf = ev.first_nonfinite_step if ev.first_nonfinite_step is not None else nonfinite_ckpt[0].step
        rep.findings.append(
            Finding(
                "AD401", "error", f"non-finite values (NaN/Inf) from step {nf}", step=nf, evidence={"tag": loss_tag}
            )
        )

    # Mechanism evidence before the event.
    collapse = []  # (label, first, warn, median r)
    for tr in trajs:
        c = collapse_stretch(tr, event_step, beta2)
        if c is not None:
            collapse.append((tr.label, *c))
    ck_collapse = _checkpoint_collapse(ckpts, ratios, event_step, beta2)
    # The warning step comes from depth-verified evidence only (attribution below may start earlier).
    collapse_warn = min([w for (_, _, w, _) in collapse] + [c["warning_step"] for c in ck_collapse], default=None)
    if collapse or ck_collapse:
        # The verdict needs a deep collapse somewhere (above). Which tensors took part is then told by
        # their own quiet stretch: sparse histograms or checkpoints rarely see a tensor's own peak.
        seen = {c[0] for c in collapse}
        for tr in trajs:
            c = collapse_stretch(tr, event_step, beta2, require_depth=False) if tr.label not in seen else None
            if c is not None:
                collapse.append((tr.label, c[0], max(c[1], collapse_warn), c[2]))
        seen_ck = {c["tensor"] for c in ck_collapse}
        ck_collapse += [
            {**c, "warning_step": max(c["warning_step"], collapse_warn)}
            for c in _checkpoint_collapse(ckpts, ratios, event_step, beta2, require_depth=False)
            if c["tensor"] not in seen_ck
        ]
    regrowth = []
    rms_hits = []
    if event_step is not None:
        for tr in trajs:
            rmax, rstep = _window_max(tr, tr.r, event_step - REGROWTH_WINDOW, event_step + 2)
            if math.isfinite(rmax) and rmax > REGROWTH_R:
                regrowth.append((tr.label, rmax, rstep))
            prev = np.r_[np.nan, tr.vhat[:-1]]
            with np.errstate(divide="ignore", invalid="ignore"):
                urms = np.sqrt(tr.g2 / np.maximum(prev, tr.eps_eff() ** 2))
            umax, ustep = _window_max(tr, urms, event_step - REGROWTH_WINDOW, event_step + 2)
            if math.isfinite(umax) and umax > UPDATE_RMS_LIMIT:
                rms_hits.append((tr.label, umax, ustep))
    pre_r = _pre_event_r(trajs, event_step)

    has_mechanism_data = bool(trajs or len(ckpts) >= 1)
    # --- verdict --------------------------------------------------------------------------------
    jump = _abrupt_gradient_jump(event_step, gn_series) if event_step is not None else None
    if ev.first_nonfinite_step is not None and blow is None and not ev.spikes:
        rep.verdict = "nonfinite"
        rep.blowup_step = ev.first_nonfinite_step
    elif jump is not None:
        rep.verdict = "bad_batch"
        rep.blowup_step = event_step
        rep.warning_step = jump["step"]
        rep.findings.append(
            Finding(
                "AD301",
                "error" if blow is not None else "warning",
                f"one batch at step {jump['step']}: gradient norm {jump['grad_norm']:.3g} jumped "
                f"{jump['grad_norm'] / max(jump['previous'], 1e-300):.3g}x in one step "
                f"({jump['grad_norm'] / jump['trailing_median']:.3g}x the trailing median)",
                step=jump["step"],
                evidence=jump,
            )
        )
    elif blow is not None and (collapse or ck_collapse):
        rep.verdict = "v_collapse"
        rep.blowup_step = event_step
        rep.warning_step = int(collapse_warn)
        glob = [c for c in collapse if c[0] == "global"]
        per_tensor = sorted((c for c in collapse if c[0] != "global"), key=lambda c: c[3])
        for _label, first, warn, med in glob:
            rep.findings.append(
                Finding(
                    "AD101",
                    "error",
                    f"v collapse: g²/v̂ (all parameters) stayed below {COLLAPSE_R} (median {med:.3g}) from step "
                    f"{first} until the blowup at {event_step}",
                    step=warn,
                    evidence={"first_step": first, "median_r": med, "threshold": COLLAPSE_R},
                )
            )
        if per_tensor:
            label, first, warn, med = per_tensor[0]
            rep.findings.append(
                Finding(
                    "AD101",
                    "error",
                    f"v collapse in {_name_list([c[0] for c in per_tensor])}: g²/v̂ stayed below {COLLAPSE_R} "
                    f"(median {med:.3g} in {label}) from step {min(c[1] for c in per_tensor)} until the blowup "
                    f"at {event_step}",
                    step=min(c[2] for c in per_tensor),
                    tensor=label,
                    evidence={
                        "threshold": COLLAPSE_R,
                        "tensors": [
                            {"tensor": c[0], "first_step": c[1], "warning_step": c[2], "median_r": c[3]}
                            for c in per_tensor
                        ],
                    },
                )
            )
        if ck_collapse:
            c0 = ck_collapse[0]
            rep.findings.append(
                Finding(
                    "AD105",
                    "error",
                    f"between checkpoints, v decayed almost purely in {_name_list([c['tensor'] for c in ck_collapse])}"
                    f"; largest: {c0['message']}",
                    step=min(c["warning_step"] for c in ck_collapse),
                    tensor=c0["tensor"],
                    evidence={
                        "tensors": [
                            {"tensor": c["tensor"], "warning_step": c["warning_step"], **c["evidence"]}
                            for c in ck_collapse
                        ]
                    },
                )
            )
        for label, rmax, rstep in sorted(regrowth, key=lambda x: -x[1])[:5]:
            rep.findings.append(
                Finding(
                    "AD102",
                    "error",
                    f"gradients re-grew in {'all parameters' if label == 'global' else label}: "
                    f"g²/v̂ = {rmax:.3g} at step {rstep}",
                    step=rstep,
                    tensor=None if label == "global" else label,
                    evidence={"r": rmax},
                )
            )
    elif blow is not None and not has_mechanism_data:
        rep.verdict = "inconclusive"
        rep.findings.append(
            Finding(
                "AD901",
                "warning",
                "the loss blew up but the run has no gradient-norm scalar, gradient histograms or "
                "optimizer checkpoints: the cause can't be told apart (log grad_norm or keep checkpoints)",
                step=event_step,
            )
        )
    elif event_step is not None and blow is None:
        # Only short spikes that recovered (no blowup), with no abrupt gradient jump: the run did
        # not blow up. Say so, and whether a collapse preceded them (the early form of the failure).
        rep.verdict = "nonfinite" if ev.first_nonfinite_step is not None else "healthy"
        if rep.verdict == "nonfinite":
            rep.blowup_step = ev.first_nonfinite_step
        if collapse or ck_collapse:
            rep.findings.append(
                Finding(
                    "AD101",
                    "warning",
                    f"loss spike(s) at step {', '.join(map(str, ev.spikes[:5]))} followed a v "
                    "collapse: the run recovered this time, but the mechanism is in place",
                    step=event_step,
                    evidence={"spikes": ev.spikes[:20], "collapse": [c[0] for c in collapse][:20]},
                )
            )
    elif event_step is not None:
        rep.verdict = "lr_too_high"
        rep.blowup_step = event_step
        first_bad = _first_instability(trajs, event_step)
        rep.warning_step = first_bad
        rep.findings.append(
            Finding(
                "AD201",
                "error",
                f"loss diverged at step {event_step} while g²/v̂ stayed O(1) (median {pre_r:.3g} before it): "
                "no v collapse, the steps are too large"
                if pre_r is not None
                else f"loss diverged at step {event_step} without a v collapse: the steps are too large",
                step=event_step,
                evidence={"median_r_before": pre_r, "lr": lr},
            )
        )
    elif ev.first_nonfinite_step is not None:
        rep.verdict = "nonfinite"
        rep.blowup_step = ev.first_nonfinite_step
    else:
        rep.verdict = "healthy"

    for label, umax, ustep in sorted(rms_hits, key=lambda x: -x[1])[:3]:
        rep.findings.append(
            Finding(
                "AD103",
                "warning",
                f"update RMS {umax:.3g} > 1 in {'all parameters' if label == 'global' else label} at step {ustep}",
                step=ustep,
                tensor=None if label == "global" else label,
                evidence={"update_rms": umax},
            )
        )
    _eps_findings(rep, ckpts, steps, loss, ev, eps)
    _collapse_in_progress(rep, trajs, ckpts, beta2)
    if assumed and trajs:
        rep.findings.append(
            Finding(
                "AD901",
                "info",
                f"no optimizer checkpoint found: assumed beta2={beta2}, eps={eps:g} "
                "(torch defaults); pass --checkpoints for exact values",
            )
        )
    approx = [t.label for t in trajs if not t.exact]
    if approx:
        what = "per-tensor histograms" if "global" not in approx else "the gradient norm"
        rep.findings.append(
            Finding(
                "AD901",
                "info",
                f"{what} not logged every step from step 1: the v reconstruction from it "
                "is approximate between checkpoints",
                evidence={"approximate": approx[:50]},
            )
        )
    if gn_tag and any(t in tags for t in ("train/grad_norm_preclip",)) or any("clip" in t.lower() for t in tags):
        rep.findings.append(
            Finding("AD601", "info", f"gradient clipping detected: Adam saw the clipped gradients (using '{gn_tag}')")
        )
    named = [c[0] for c in collapse if c[0] != "global"] + [c["tensor"] for c in ck_collapse]
    rep.recommendation = _recommend(rep, ckpts, inp.checkpoint_paths, eps, lr, named)
    return rep


def _name_list(names: list[str], shown: int = 3) -> str:
    """'a, b, c and 5 more' — findings stay one line however many tensors collapsed."""
    head = ", ".join(f"`{n}`" for n in names[:shown])
    return head + (f" and {len(names) - shown} more" if len(names) > shown else "") if names else "no tensor"


def _hyper(ckpts: list[Any]) -> tuple[float, float, float | None]:
    if not ckpts or not ckpts[-1].tensors:
        return DEFAULT_BETA2, DEFAULT_EPS, None
    t = ckpts[-1].tensors[0]
    return float(t.beta2), float(t.eps), float(t.lr)


def _pre_event_r(trajs: list[Trajectory], event_step: int | None) -> float | None:
    glob = [t for t in trajs if t.label == "global"] or trajs
    if not glob or event_step is None:
        return None
    t = glob[0]
    sel = (t.steps < event_step) & (t.steps >= event_step - 5 * REGROWTH_WINDOW) & np.isfinite(t.r)
    return float(np.median(t.r[sel])) if sel.any() else None


def _abrupt_gradient_jump(event_step: int, gn: tuple[np.ndarray, np.ndarray] | None) -> dict | None:
    """The bad-batch signature: at the loss event the gradient norm jumped ≥10x (g² ≥ 100x, far
    outside mini-batch noise) in ONE step, over both the previous step and the trailing median.

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
    if i < 20:  # no healthy history: a run that diverges right away has too high a learning rate
        return None
    base = float(np.median(vals[max(0, i - 50) : i]))
    prev = float(vals[i - 1])
    if not (base > 0 and vals[i] >= 10 * base and vals[i] >= 10 * prev):
        return None
    if steps[i] - steps[i - 1] > 1:
        history = vals[max(1, i // 20) : i]
        if not len(history) or vals[i] < 10 * float(np.max(history)):
            return None
    return {"step": int(steps[i]), "grad_norm": float(vals[i]), "previous": prev, "trailing_median": base}


def _first_instability(trajs: list[Trajectory], event_step: int) -> int | None:
    """For lr_too_high: first step before the blowup where g²/v̂ already exceeded ~3 (a step that the
    optimizer could not absorb), if any."""
    glob = [t for t in trajs if t.label == "global"]
    if not glob:
        return None
    t = glob[0]
    sel = (t.steps <= event_step) & (t.r > 3.0)
    if not sel.any():
        return None
    first = int(t.steps[np.argmax(sel)])
    return first if event_step - first <= 10 * REGROWTH_WINDOW else None


def _histogram_trajectories(hist, ckpts: list[Any], beta2: float, eps: float) -> list[Trajectory]:
    """Per-tensor trajectories from gradient histograms (mean g² = sum_squares/num)."""
    out = []
    names_v = {}
    for c in ckpts:
        for t in c.tensors:
            if getattr(t, "name", None):
                names_v.setdefault(t.name, []).append((int(c.step), float(t.v_mean)))
    for tag, df in hist.groupby("tag", sort=True):
        low = tag.lower()
        if "grad" not in low:
            continue
        df = df.sort_values(["step", "segment"] if "segment" in df.columns else ["step"]).drop_duplicates(
            "step", keep="last"
        )
        num = df["num"].to_numpy(np.float64)
        ok = num > 0
        if ok.sum() < 8:
            continue
        g2 = df["sum_squares"].to_numpy(np.float64)[ok] / num[ok]
        name = tag.split("/", 1)[1] if "/" in tag else tag
        seeds = names_v.get(name, [])
        out.append(reconstruct(df["step"].to_numpy(np.int64)[ok], g2, beta2, seeds, eps, name))
    return out


def _checkpoint_collapse(
    ckpts: list[Any], ratios: list[dict[str, Any]], event_step: int | None, beta2: float, *, require_depth: bool = True
) -> list[dict]:
    """Collapse seen by checkpoints alone: between the last two checkpoints before the event, v of a
    tensor decayed almost purely (implied g²/v̂ < COLLAPSE_R), and √v̂ sits near eps."""
    if event_step is None:
        return []
    pre = [r for r in ratios if r["to_step"] <= event_step]
    if not pre:
        return []
    last_to = max(r["to_step"] for r in pre)
    out = []
    by_tensor: dict[str, list[dict]] = {}
    for r in pre:
        by_tensor.setdefault(r["tensor"], []).append(r)
    last_ck = next(c for c in reversed(ckpts) if c.step == last_to)
    span = COLLAPSE_MIN_MEMORY_FRACTION / (1.0 - beta2)
    vhat_hist: dict[str, list[tuple[int, float]]] = {}
    for c in ckpts:
        for t in c.tensors:
            vhat_hist.setdefault(_ckpt_tensor_label(t), []).append(
                (int(c.step), float(t.v_mean) / (1.0 - float(t.beta2) ** max(int(c.step), 1)))
            )
    stats = {_ckpt_tensor_label(t): t for t in last_ck.tensors}
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
                f"{last_to} (implied g²/v̂ {rs[-1]['r_interval']:.3g}); median √v̂ {p50:.3g} = {p50 / eps_t:.3g}·eps, "
                f"{near:.0%} of its elements under 10·eps",
                "evidence": {"intervals": rs[k:][-5:], "frac_sqrt_vhat_below_10eps": near, "median_sqrt_vhat": p50},
                "numel": rs[-1]["numel"],
            }
        )
    out.sort(key=lambda c: -c["numel"])
    return out


def _frac_live(t: Any, field: str) -> float:
    """A "fraction of elements with √v̂ below x" without the elements whose v is exactly 0: those never
    received a gradient (unused embedding rows, frozen slices) and say nothing about collapse or eps."""
    frac = float(getattr(t, field))
    zero = float(getattr(t, "frac_v_zero", 0.0) or 0.0)
    return max(frac - zero, 0.0) if math.isfinite(zero) else frac


def _eps_findings(rep: RunReport, ckpts: list[Any], steps, loss, ev: LossEvents, eps: float) -> None:
    if not ckpts:
        return
    last = ckpts[-1]
    n = sum(int(t.numel) for t in last.tensors)
    if not n:
        return
    below = sum(_frac_live(t, "frac_sqrt_vhat_below_eps") * int(t.numel) for t in last.tensors) / n
    if not math.isfinite(below) or below < EPS_DOMINATED_FRACTION:
        return
    finite = np.isfinite(loss)
    progress = None
    if finite.sum() >= 8:
        lf = loss[finite]
        k = max(1, len(lf) // 10)
        progress = float(np.median(lf[-k:]) / np.median(lf[:k])) if np.median(lf[:k]) > 0 else None
    stalled = progress is not None and progress > 0.5
    msg = (
        f"√v̂ < eps={eps:g} for {below:.0%} of all elements at step {last.step}: Adam behaves like SGD with step lr/eps"
    )
    if rep.verdict == "healthy" and stalled:
        rep.verdict = "eps_too_large"
        rep.findings.append(
            Finding(
                "AD501",
                "warning",
                msg + f"; the loss barely moved (final/initial {progress:.2f})",
                step=last.step,
                evidence={"frac_below_eps": below, "progress": progress},
            )
        )
    else:
        rep.findings.append(Finding("AD501", "info", msg, step=last.step, evidence={"frac_below_eps": below}))


def _collapse_in_progress(rep: RunReport, trajs: list[Trajectory], ckpts: list[Any], beta2: float) -> None:
    """On runs that did not blow up: say when v is collapsing and eps does not bound the step."""
    if rep.verdict not in ("healthy", "eps_too_large"):
        return
    for tr in trajs:
        c = collapse_stretch(tr, None, beta2)
        if c is None:
            continue
        first, warn, med = c
        # eps bounds the damage when √v̂ is already at or below eps: the step cannot grow further.
        tail = tr.vhat[-1] if len(tr.vhat) else float("nan")
        bounded = tr.eps > 0 and math.isfinite(tail) and math.sqrt(max(tail, 0.0)) <= 10 * tr.eps_eff()[-1]
        sev = "info" if bounded else "warning"
        rep.findings.append(
            Finding(
                "AD101",
                sev,
                f"v is collapsing in {'all parameters' if tr.label == 'global' else tr.label} from step {first} "
                f"(g²/v̂ median {med:.3g})"
                + (
                    "; eps bounds the step"
                    if bounded
                    else "; eps and v's scale are unknown without a checkpoint"
                    if tr.eps == 0
                    else "; eps does not bound the step: a return of larger gradients would blow up the update"
                ),
                step=warn,
                tensor=None if tr.label == "global" else tr.label,
                evidence={"median_r": med},
            )
        )
        break


def _recommend(
    rep: RunReport, ckpts: list[Any], ckpt_paths: list[str], eps: float, lr: float | None, collapsed_names: list[str]
) -> dict[str, Any] | None:
    v = rep.verdict
    before = [c for c in ckpts if rep.blowup_step is None or c.step < rep.blowup_step]
    start = before[-1] if before else None
    start_path = None
    if start is not None:
        start_path = getattr(start, "path", None)
    replay_cmd = None
    if v == "v_collapse":
        rec: dict[str, Any] = {"action": "increase eps", "current_eps": eps, "candidates": []}
        if start is not None:
            # Collapsed tensors: the ones with the most elements near eps at the last checkpoint.
            # Collapsed tensors: those the evidence named; else those with elements near eps; else
            # the one with the smallest median √v̂ (the first to be dominated by a larger eps).
            by_label = {_ckpt_tensor_label(t): t for t in start.tensors}
            collapsed = [by_label[n] for n in dict.fromkeys(collapsed_names) if n in by_label]
            if not collapsed:
                near = [t for t in start.tensors if _frac_live(t, "frac_sqrt_vhat_below_10eps") > 0.01]
                collapsed = near or sorted(start.tensors, key=lambda t: float(t.sqrt_vhat_q["p50"]))[:1]
            n_all = sum(int(t.numel) for t in start.tensors) or 1
            p50 = float(np.median([t.sqrt_vhat_q["p50"] for t in collapsed]))
            derived = 10 ** math.ceil(math.log10(max(p50, 1e-12)))
            cands = sorted({*REPORT_EPS_CANDIDATES, derived})
            for e in cands:
                col = [_frac_below(t.sqrt_vhat_q, e) for t in collapsed]
                allf = sum(_frac_below(t.sqrt_vhat_q, e) * int(t.numel) for t in start.tensors) / n_all
                rec["candidates"].append(
                    {"eps": e, "frac_collapsed_bounded": float(np.mean(col)), "frac_all_eps_dominated": float(allf)}
                )
            # Prefer the smallest candidate that bounds most collapsed elements (the fix) while
            # keeping eps from dominating most of the healthy ones (eps cuts both ways).
            good = [c for c in rec["candidates"] if c["frac_collapsed_bounded"] >= 0.5 and c["eps"] > eps]
            choice = good[0] if good else rec["candidates"][0]
            rec["eps"] = choice["eps"]
            top = collapsed[0]
            rec["message"] = (
                f"eps {eps:g} → {choice['eps']:g}: √v̂ is below {choice['eps']:g} in "
                f"{_frac_below(top.sqrt_vhat_q, choice['eps']):.0%} of the elements of `{_ckpt_tensor_label(top)}` at "
                f"step {start.step}; {choice['frac_all_eps_dominated']:.0%} of all elements would be eps-dominated"
            )
        else:
            rec["eps"] = 1e-3
            rec["candidates"] = [{"eps": e} for e in REPORT_EPS_CANDIDATES]
            rec["message"] = (
                f"eps {eps:g} → 1e-3 (compare 1e-2, 1e-1); no checkpoint before the blowup to size "
                "it from the measured √v̂"
            )
        rec["alternatives"] = ["a shorter v memory (beta2 0.99-0.995)", "gradient clipping"]
        if start_path:
            eps_args = " ".join(f"--eps {c['eps']:g}" for c in rec["candidates"])
            replay_cmd = f"adamdiag replay {start_path} {eps_args}"
        rec["verify"] = replay_cmd
        return rec
    if v == "lr_too_high":
        rec = {
            "action": "lower the learning rate",
            "lr": (lr / 3) if lr else None,
            "message": "lower lr about 3x (or add warmup / gradient clipping); eps will not help: v is healthy",
        }
        if start_path and lr:
            rec["verify"] = f"adamdiag replay {start_path} --lr {lr / 3:g} --lr {lr / 10:g}"
        return rec
    if v == "bad_batch":
        return {
            "action": "guard against bad batches",
            "message": "inspect the batch at the spike step; clip gradients or skip batches whose loss is an outlier",
        }
    if v == "nonfinite":
        return {
            "action": "find the first non-finite value",
            "message": "check the data and loss for NaN/Inf; with fp16 use loss scaling; enable anomaly detection",
        }
    if v == "eps_too_large":
        return {"action": "decrease eps", "message": f"eps {eps:g} dominates √v̂ almost everywhere; try {eps / 100:g}"}
    return None
