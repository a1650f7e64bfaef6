"""Statistics of Adam moments: tensors in, numbers out (pure; no file access, no printing).

Definitions (torch convention; DESIGN.md): with t = step, bc1 = 1-β1^t, bc2 = 1-β2^t,
m̂ = m/bc1, v̂ = v/bc2 and the denominator's v (``max_exp_avg_sq`` with amsgrad, else ``exp_avg_sq``):

* ``sqrt_vhat_q``: quantiles of √v̂ (of the denominator's v); ``frac_sqrt_vhat_below_eps``
  (``_10eps``): fraction of elements with √v̂ < eps (< 10·eps) — eps dominates (is about to);
* ``update_rms`` / ``update_max``: RMS / max |·| of the next Adam step lr·m̂/(√v̂+eps) (weight
  decay not included); ``update_ratio_rms``: the same without lr (unit-free, comparable across
  tensors); ``eff_step_q``: quantiles of the per-element step size lr/(√v̂+eps).
* TF convention (eps on the un-corrected √v): update = lr·√bc2/bc1 · m/(√v+ε) = lr·m̂/(√v̂ + ε/√bc2),
  so every statistic uses ``eps_effective`` = ε/√bc2 in place of eps.

Elements where m, v (or max v) are not finite are counted in ``nonfinite`` and left out of every
other statistic (quantiles included), so one NaN does not hide the rest of the tensor.

Quantiles are order statistics (nearest rank: element round(q·(n-1)) of the sorted values). They are
exact up to ``EXACT_QUANTILE_LIMIT`` elements (one float32 copy of the tensor); above it they come from
a deterministic sample of ``QUANTILE_SAMPLE`` elements (uniform with replacement, seed 0; rank error ~ √(q(1-q)/N) < 1e-4),
flagged ``quantiles_exact: false``. min, max, means and fractions are always exact (chunked pass in
float64, constant memory).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from adamdiag.io.checkpoints import TensorMoments

EXACT_QUANTILE_LIMIT = 16 * 1024 * 1024
QUANTILE_SAMPLE = 1 << 22
CHUNK = 1 << 20
QUANTILES = {"min": 0.0, "p01": 0.01, "p50": 0.5, "p99": 0.99, "max": 1.0}
# An element decayed "purely" between two checkpoints when the interval's implied g² is under this
# fraction of v̂ at the first one (the same threshold as the diagnosis's collapse ratio).
PURE_DECAY_R = 0.1


@dataclass
class TensorStats:
    """The ``adamdiag.inspect/1`` fields of one tensor (plus extras)."""

    name: str | None
    index: int | str
    shape: list[int]
    numel: int
    group: int
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    step: int | None
    v_mean: float
    v_max: float
    m_abs_mean: float
    sqrt_vhat_q: dict[str, float]
    frac_sqrt_vhat_below_eps: float
    frac_sqrt_vhat_below_10eps: float
    update_rms: float
    update_max: float
    eff_step_q: dict[str, float]
    nonfinite: int
    # extras
    label: str = ""
    amsgrad: bool = False
    eps_effective: float = float("nan")
    update_ratio_rms: float = float("nan")
    param_rms: float | None = None
    update_rms_rel: float | None = None
    quantiles_exact: bool = True
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def risk_key(self) -> tuple:
        """Sort key, most at risk first: non-finite values, then collapse (√v̂ near eps), then
        eps-dominated, then the size of the next update."""

        def neg(x: float | None) -> float:
            return -x if x is not None and math.isfinite(x) else 0.0

        return (-int(self.nonfinite > 0), neg(self.frac_sqrt_vhat_below_10eps), neg(self.frac_sqrt_vhat_below_eps),
                neg(self.update_ratio_rms))


@dataclass
class CheckpointSummary:
    """Per-tensor statistics of one checkpoint (what ``inspect`` prints and ``scan`` uses)."""

    path: str
    step: int | None
    layout: str
    optimizer: str
    convention: str
    name_mapping: str
    warnings: list[str]
    tensors: list[TensorStats]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "step": self.step, "layout": self.layout, "optimizer": self.optimizer,
            "convention": self.convention, "name_mapping": self.name_mapping, "warnings": list(self.warnings),
            "tensors": [t.to_dict() for t in self.tensors],
        }


def label_of(name: str | None, group: int, index: int | str) -> str:
    return name if name else f"group {group} / index {index}"


def bias_corrections(step: int | None, beta1: float, beta2: float) -> tuple[float, float, list[str]]:
    """(1-β1^t, 1-β2^t); 1 when the step is unknown or 0 (with a note: then v̂ = v)."""
    if step is None or step <= 0:
        return 1.0, 1.0, [f"step {'unknown' if step is None else step}: no bias correction applied"]
    return 1.0 - beta1**step, 1.0 - beta2**step, []


def effective_eps(eps: float, bc2: float, convention: str) -> float:
    """eps relative to √v̂: eps itself (torch), eps/√(1-β2^t) (tf: eps on the un-corrected √v)."""
    if convention == "tf":
        return eps / math.sqrt(bc2)
    if convention != "torch":
        raise ValueError(f"unknown convention {convention!r}")
    return eps


def _flat(x):
    return x.reshape(-1)


def _order_stats(values: np.ndarray, qs: dict[str, float], descending: dict[str, float] | None = None
                 ) -> dict[str, float]:
    """Nearest-rank order statistics of a 1-D array (one copy, one partition): element
    round(q·(n-1)) of the ascending values for ``qs``, of the descending values for ``descending``."""
    n = values.size
    descending = descending or {}
    if n == 0:
        return {k: float("nan") for k in (*qs, *descending)}
    ranks = {k: int(round(q * (n - 1))) for k, q in qs.items()}
    ranks.update({k: n - 1 - int(round(q * (n - 1))) for k, q in descending.items()})
    part = np.partition(values, sorted(set(ranks.values())))
    return {k: float(part[r]) for k, r in ranks.items()}


def _quantile_values(d, others: tuple, n: int, exact_limit: int, any_nonfinite: bool) -> tuple[np.ndarray, bool]:
    """Values of the flat tensor ``d`` for quantiles: all of them (a float32/64 numpy view or copy)
    up to ``exact_limit`` elements, else a deterministic sample; elements where ``d`` or any of
    ``others`` (same shape) is not finite are removed (only checked when ``any_nonfinite``)."""
    import torch

    idx = None
    if n > exact_limit:
        rng = np.random.default_rng(0)
        idx = torch.from_numpy(np.sort(rng.integers(0, n, size=min(QUANTILE_SAMPLE, n))))
    pick = (lambda x: x) if idx is None else (lambda x: x[idx])
    vals = pick(d)
    if vals.dtype not in (torch.float32, torch.float64):
        vals = vals.float()
    arr = vals.detach().numpy()
    if any_nonfinite:
        fin = torch.isfinite(pick(d))
        for o in others:
            fin &= torch.isfinite(pick(o))
        arr = arr[fin.numpy()]
    return arr, idx is None


def tensor_stats(t: TensorMoments, convention: str = "torch", *, exact_limit: int = EXACT_QUANTILE_LIMIT,
                 chunk: int = CHUNK) -> TensorStats:
    """Statistics of one parameter's Adam state (see the module docstring for definitions).

    Memory: O(chunk) for the exact sums, plus one float32 copy of v for exact quantiles (none above
    ``exact_limit``: a sample). bf16/fp16 moments are upcast chunk by chunk.
    """
    import torch

    n = int(t.exp_avg.numel())
    bc1, bc2, notes = bias_corrections(t.step, t.beta1, t.beta2)
    eps_eff = effective_eps(t.eps, bc2, convention)
    vden = t.max_exp_avg_sq if (t.amsgrad and t.max_exp_avg_sq is not None) else t.exp_avg_sq
    if t.amsgrad and t.max_exp_avg_sq is None:
        notes.append("amsgrad without max_exp_avg_sq: the denominator uses exp_avg_sq")
    m_flat, v_flat, d_flat = _flat(t.exp_avg), _flat(t.exp_avg_sq), _flat(vden)
    p_flat = _flat(t.param) if t.param is not None and t.param.numel() == n else None

    n_f = nonfinite = below = below10 = 0
    sum_v = sum_abs_m = sum_u2 = sum_p2 = 0.0
    max_v = max_u = -math.inf
    s_min, s_max = math.inf, -math.inf
    for i in range(0, n, chunk):
        m = m_flat[i:i + chunk].to(torch.float64)
        v = v_flat[i:i + chunk].to(torch.float64)
        d = v if vden is t.exp_avg_sq else d_flat[i:i + chunk].to(torch.float64)
        fin = torch.isfinite(m) & torch.isfinite(v) & torch.isfinite(d)
        k = int(fin.sum())
        if k < m.numel():
            nonfinite += m.numel() - k
            m, v, d = m[fin], v[fin], d[fin]
        if p_flat is not None:
            p = p_flat[i:i + chunk].to(torch.float64)
            sum_p2 += float((p[torch.isfinite(p)] ** 2).sum())
        if k == 0:
            continue
        n_f += k
        sum_v += float(v.sum())
        max_v = max(max_v, float(v.max()))
        sum_abs_m += float(m.abs().sum())
        s = torch.sqrt(d.clamp_min(0) / bc2)
        s_min, s_max = min(s_min, float(s.min())), max(s_max, float(s.max()))
        below += int((s < eps_eff).sum())
        below10 += int((s < 10 * eps_eff).sum())
        u = (m / bc1) / (s + eps_eff)
        sum_u2 += float((u * u).sum())
        max_u = max(max_u, float(u.abs().max()))

    nan = float("nan")
    if n_f:
        arr, exact = _quantile_values(d_flat, (m_flat, v_flat), n, exact_limit, nonfinite > 0)
        qs = dict(QUANTILES)
        # eff step lr/(√v̂+eps) decreases with v: its q-quantile is the q-quantile of v descending.
        raw = _order_stats(arr, qs, {f"eff_{k}": q for k, q in qs.items()})
        sq = {k: math.sqrt(max(raw[k], 0.0) / bc2) for k in qs}
        sq["min"], sq["max"] = s_min, s_max  # exact even when the rest is sampled
        eff = {k: t.lr / (math.sqrt(max(raw[f"eff_{k}"], 0.0) / bc2) + eps_eff) for k in qs}
        eff["min"], eff["max"] = t.lr / (s_max + eps_eff), t.lr / (s_min + eps_eff)
        ratio_rms = math.sqrt(sum_u2 / n_f)
        v_mean, m_abs_mean = sum_v / n_f, sum_abs_m / n_f
        frac_b, frac_b10 = below / n_f, below10 / n_f
    else:
        exact = True
        sq = {k: nan for k in QUANTILES}
        eff = dict(sq)
        ratio_rms = v_mean = m_abs_mean = frac_b = frac_b10 = nan
        max_v = max_u = nan
        notes.append("no finite elements")
    param_rms = math.sqrt(sum_p2 / n) if p_flat is not None and n else None
    update_rms = t.lr * ratio_rms
    rel = update_rms / param_rms if param_rms else None
    if not exact:
        notes.append(f"quantiles from a sample of {QUANTILE_SAMPLE} elements (min/max exact)")
    return TensorStats(
        name=t.name, index=t.index, shape=list(t.shape), numel=n, group=t.group, lr=t.lr, beta1=t.beta1,
        beta2=t.beta2, eps=t.eps, weight_decay=t.weight_decay, step=t.step, v_mean=v_mean, v_max=max_v,
        m_abs_mean=m_abs_mean, sqrt_vhat_q=sq, frac_sqrt_vhat_below_eps=frac_b, frac_sqrt_vhat_below_10eps=frac_b10,
        update_rms=update_rms, update_max=t.lr * max_u, eff_step_q=eff, nonfinite=nonfinite,
        label=label_of(t.name, t.group, t.index), amsgrad=t.amsgrad, eps_effective=eps_eff,
        update_ratio_rms=ratio_rms, param_rms=param_rms, update_rms_rel=rel, quantiles_exact=exact, notes=notes,
    )


def decay_ratio(a: TensorMoments, b: TensorMoments, *, exact_limit: int = EXACT_QUANTILE_LIMIT,
                chunk: int = CHUNK) -> dict[str, Any]:
    """How v of one tensor changed between two checkpoints a (step s) and b (step s+Δ).

    Per element, v_b = β2^Δ·v_a + (1-β2)·Σ β2^(Δ-1-j)·g_j², so ``ratio`` = v_b/(β2^Δ·v_a) ≥ 1 and
    ≈ 1 means pure decay: no gradient arrived (v collapse). The interval-weighted mean g²
    ḡ² = (v_b - β2^Δ·v_a)/(1-β2^Δ); ``frac_pure_decay``: elements with ḡ² < PURE_DECAY_R·v̂_a;
    ``mean_g2_implied``: (mean v_b - β2^Δ·mean v_a)/(1-β2^Δ); ``r_interval``: that / mean v̂_a.
    ``frac_inconsistent``: elements with ratio < 0.999 — impossible for one run with this β2 and
    step count (a restart, changed β2, or not the same run). Elements with v_a = 0 or non-finite
    values are left out (``n_used``).
    """
    import torch

    if a.step is None or b.step is None:
        raise ValueError("both checkpoints need an optimizer step count")
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"shape changed between checkpoints: {tuple(a.shape)} vs {tuple(b.shape)}")
    d = int(b.step) - int(a.step)
    beta2 = float(b.beta2)
    decay = beta2**d
    bc2_a = 1.0 - beta2 ** a.step if a.step > 0 else 1.0
    notes = []
    if a.beta2 != b.beta2:
        notes.append(f"beta2 changed ({a.beta2} → {b.beta2}); using {b.beta2}")
    n = int(a.exp_avg_sq.numel())
    va_flat, vb_flat = _flat(a.exp_avg_sq), _flat(b.exp_avg_sq)
    exact = n <= exact_limit
    ratios = np.empty(n if exact else 0, dtype=np.float64)
    k_r = 0
    n_used = pure = incons = 0
    sum_va = sum_vb = 0.0
    thr = 1.0 + PURE_DECAY_R * (1.0 - decay) / (decay * bc2_a) if d > 0 else math.inf
    for i in range(0, n, chunk):
        va = va_flat[i:i + chunk].to(torch.float64)
        vb = vb_flat[i:i + chunk].to(torch.float64)
        ok = torch.isfinite(va) & torch.isfinite(vb)
        va, vb = va[ok], vb[ok]
        sum_va += float(va.sum())
        sum_vb += float(vb.sum())
        pos = va > 0
        r = vb[pos] / (decay * va[pos])
        n_used += r.numel()
        pure += int((r < thr).sum())
        incons += int((r < 0.999).sum())
        if exact:
            ratios[k_r:k_r + r.numel()] = r.numpy()
            k_r += r.numel()
    if exact:
        q = _order_stats(ratios[:k_r], QUANTILES)
    else:
        rng = np.random.default_rng(0)
        idx = torch.from_numpy(np.sort(rng.integers(0, n, size=min(QUANTILE_SAMPLE, n))))
        va, vb = va_flat[idx].to(torch.float64), vb_flat[idx].to(torch.float64)
        ok = torch.isfinite(va) & torch.isfinite(vb) & (va > 0)
        q = _order_stats((vb[ok] / (decay * va[ok])).numpy(), QUANTILES)
        notes.append(f"ratio quantiles from a sample of {QUANTILE_SAMPLE} elements")
    nan = float("nan")
    mean_va = sum_va / n if n else nan
    mean_vb = sum_vb / n if n else nan
    mean_g2 = (mean_vb - decay * mean_va) / (1.0 - decay) if d > 0 else nan
    vhat_a = mean_va / bc2_a
    return {
        "name": b.name, "index": b.index, "group": b.group, "label": label_of(b.name, b.group, b.index),
        "from_step": int(a.step), "to_step": int(b.step), "delta_steps": d, "beta2": beta2, "numel": n,
        "n_used": n_used, "ratio_q": q, "quantiles_exact": exact,
        "frac_pure_decay": pure / n_used if n_used else nan,
        "frac_inconsistent": incons / n_used if n_used else nan,
        "mean_v_from": mean_va, "mean_v_to": mean_vb,
        "decay_ratio_mean": mean_vb / (decay * mean_va) if mean_va > 0 else nan,
        "mean_g2_implied": mean_g2,
        "r_interval": max(mean_g2, 0.0) / vhat_a if vhat_a > 0 and math.isfinite(mean_g2) else nan,
        "notes": notes,
    }
