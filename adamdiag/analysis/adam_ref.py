"""Plain-loop reference of Adam/AdamW (one element at a time, Python floats = float64).

Slow on purpose: this is what the fast paths (the moment statistics, replay) are tested against.
It follows ``torch.optim.Adam``'s single-tensor code path operation by operation, so in float64 it
reproduces torch's updates to rounding (tests/test_adam_ref.py):

    t ← t + 1
    decoupled (AdamW): θ ← θ·(1 - lr·wd)          L2 (Adam): g ← g + wd·θ
    m ← m + (1-β1)·(g - m)                        (torch: m.lerp_(g, 1-β1))
    v ← β2·v + (1-β2)·g²
    amsgrad: v_max ← max(v_max, v), used in place of v below
    torch convention: θ ← θ - lr/(1-β1^t) · m / (√v/√(1-β2^t) + eps)
    tf convention:    θ ← θ - lr·√(1-β2^t)/(1-β1^t) · m / (√v + eps)

``maximize`` flips the gradient's sign first, as torch does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class RefState:
    """Adam state of one tensor, flattened to Python lists."""

    step: int = 0
    m: list[float] = field(default_factory=list)
    v: list[float] = field(default_factory=list)
    v_max: list[float] | None = None


def adam_step(
    params: list[float],
    grads: list[float],
    state: RefState,
    *,
    lr: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled: bool = False,
    amsgrad: bool = False,
    maximize: bool = False,
    convention: str = "torch",
) -> list[float]:
    """One Adam step on a flat list of parameters; updates ``state`` in place, returns new params."""
    if convention not in ("torch", "tf"):
        raise ValueError(f"unknown convention {convention!r}")
    n = len(params)
    if not state.m:
        state.m = [0.0] * n
        state.v = [0.0] * n
        if amsgrad:
            state.v_max = [0.0] * n
    state.step += 1
    t = state.step
    bc1 = 1.0 - beta1**t
    bc2 = 1.0 - beta2**t
    out = []
    for i in range(n):
        p = params[i]
        g = -grads[i] if maximize else grads[i]
        if weight_decay != 0.0:
            if decoupled:
                p = p * (1.0 - lr * weight_decay)
            else:
                g = g + weight_decay * p
        m = state.m[i] + (1.0 - beta1) * (g - state.m[i])
        v = state.v[i] * beta2 + (1.0 - beta2) * g * g
        state.m[i], state.v[i] = m, v
        vd = v
        if amsgrad:
            assert state.v_max is not None
            state.v_max[i] = max(state.v_max[i], v)
            vd = state.v_max[i]
        if convention == "torch":
            denom = math.sqrt(vd) / math.sqrt(bc2) + eps
            p = p - (lr / bc1) * (m / denom)
        else:
            lr_t = lr * math.sqrt(bc2) / bc1
            p = p - lr_t * m / (math.sqrt(vd) + eps)
        out.append(p)
    return out


def _nearest_rank(sorted_vals: list[float], q: float) -> float:
    return sorted_vals[int(round(q * (len(sorted_vals) - 1)))]


def moment_stats_ref(
    m: list[float],
    v: list[float],
    *,
    step: int | None,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    v_max: list[float] | None = None,
    convention: str = "torch",
) -> dict[str, object]:
    """The per-tensor statistics of :func:`adamdiag.analysis.moments.tensor_stats`, element by element:
    the next step's update lr·m̂/(√v̂+eps) computed exactly as :func:`adam_step` would apply it (no
    new gradient), in the given convention. Non-finite elements are counted and skipped."""
    if step is None or step <= 0:
        bc1 = bc2 = 1.0
    else:
        bc1, bc2 = 1.0 - beta1**step, 1.0 - beta2**step
    eps_eff = eps if convention == "torch" else eps / math.sqrt(bc2)
    vd_all = v_max if v_max is not None else v
    s_vals, u_vals, v_vals, m_abs, effs = [], [], [], [], []
    nonfinite = 0
    for i in range(len(m)):
        if not (math.isfinite(m[i]) and math.isfinite(v[i]) and math.isfinite(vd_all[i])):
            nonfinite += 1
            continue
        vd = vd_all[i]
        if convention == "torch":
            s = math.sqrt(vd) / math.sqrt(bc2)
            u = (lr / bc1) * (m[i] / (s + eps))
        else:
            s = math.sqrt(vd / bc2)
            u = lr * math.sqrt(bc2) / bc1 * m[i] / (math.sqrt(vd) + eps)
        s_vals.append(s)
        u_vals.append(u)
        v_vals.append(v[i])
        m_abs.append(abs(m[i]))
        effs.append(lr / (s + eps_eff))
    k = len(s_vals)
    qs = {"min": 0.0, "p01": 0.01, "p50": 0.5, "p99": 0.99, "max": 1.0}
    s_sorted, e_sorted = sorted(s_vals), sorted(effs)
    return {
        "nonfinite": nonfinite,
        "v_mean": sum(v_vals) / k,
        "v_max": max(v_vals),
        "m_abs_mean": sum(m_abs) / k,
        "frac_sqrt_vhat_below_eps": sum(1 for s in s_vals if s < eps_eff) / k,
        "frac_sqrt_vhat_below_10eps": sum(1 for s in s_vals if s < 10 * eps_eff) / k,
        "update_rms": math.sqrt(sum(u * u for u in u_vals) / k),
        "update_max": max(abs(u) for u in u_vals),
        "sqrt_vhat_q": {name: _nearest_rank(s_sorted, q) for name, q in qs.items()},
        "eff_step_q": {name: _nearest_rank(e_sorted, q) for name, q in qs.items()},
    }


def decay_ratio_ref(v_a: list[float], v_b: list[float], *, step_a: int, step_b: int, beta2: float) -> dict[str, object]:
    """Per-element v_b/(β2^Δ·v_a) and the interval-weighted mean g², element by element."""
    d = step_b - step_a
    decay = beta2**d
    bc2_a = 1.0 - beta2**step_a
    ratios = [vb / (decay * va) for va, vb in zip(v_a, v_b) if va > 0]
    g2 = [(vb - decay * va) / (1.0 - decay) for va, vb in zip(v_a, v_b)]
    pure = sum(1 for va, vb in zip(v_a, v_b) if va > 0 and (vb - decay * va) / (1.0 - decay) < 0.1 * va / bc2_a)
    r = sorted(ratios)
    return {
        "ratio_q": {
            name: _nearest_rank(r, q)
            for name, q in {"min": 0.0, "p01": 0.01, "p50": 0.5, "p99": 0.99, "max": 1.0}.items()
        },
        "mean_g2_implied": sum(g2) / len(g2),
        "frac_pure_decay": pure / len(ratios),
    }
