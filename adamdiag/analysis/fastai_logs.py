"""fastai's logged ``train_loss`` is its *smoothed* loss; per-batch losses back, and its logged hyperparameters.

fastai's ``TensorBoardCallback`` writes, at every batch t (``train_iter``, 1-based, restarted by each ``fit``),
``train_loss`` = the Recorder's ``smooth_loss``: a debiased exponential moving average of the batch losses l,

    E_t = β·E_{t-1} + (1-β)·l_t,   E_0 = 0,   s_t = E_t / (1-β^t),   β = 0.98 (``Recorder(beta=0.98)``),

reset at the start of each fit — and every hyperparameter of every param group, ``lr_0``, ``mom_0``, ``sqr_mom_0``,
``eps_0``, ``wd_0`` (that set beside ``train_loss`` is its signature). Read raw, a one-batch spike of 100x shows as
~3x and decays over ~50 batches: a bad batch reads as a slow rise. With every batch logged from t = 1 the EMA
inverts exactly:

    E_t = s_t·(1-β^t),   l_t = (E_t - β·E_{t-1}) / (1-β).

fastai computes the EMA in float32 and the event file stores float32 (rounding ε32 ≈ 6e-8), so each rebuilt loss
carries up to ~32·ε32·(E_t + β·E_{t-1}) / (1-β) of noise (measured on fastai 2.8.12's own log: within that bound
at every batch, 1e-6 of the loss before a spike, 2e-4 of it after one 3000x); a value negative beyond that bound
means the series is no such EMA (or not every batch was logged): the raw series is kept, with the reason.

The logged ``sqr_mom_0`` and ``eps_0`` are fastai's Adam β2 and eps (its defaults 0.99 and 1e-5, not torch's).

Pure numpy: no I/O, no printing (the diagnosis says what was done: rule AD605).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from adamdiag.analysis.keras_logs import EPS32  # float32's unit roundoff, as for Keras' logged means

SMOOTH_BETA = 0.98  # fastai's Recorder(beta=0.98): AvgSmoothLoss
# fastai computes the EMA in float32 (the batch loss, torch.lerp, the debias division: several roundings a step)
# and the event file stores float32 again: the rebuilt losses may be off by this many float32 roundings of each mean
ROUNDING_FACTOR = 32.0
MIN_POINTS = 2
# The hyperparameter tags fastai's TensorBoardCallback writes for param group 0 (its signature beside train_loss)
SIGNATURE = ("mom_0", "sqr_mom_0", "eps_0")


def is_smoothed_loss_tag(tag: str, tags: set[str] | list[str]) -> bool:
    """``train_loss`` with fastai's hyperparameter tags beside it (same prefix).

    >>> is_smoothed_loss_tag("train_loss", ["train_loss", "lr_0", "mom_0", "sqr_mom_0", "eps_0", "wd_0"])
    True
    >>> is_smoothed_loss_tag("train_loss", ["train_loss", "lr"])
    False
    """
    base = tag.rsplit("/", 1)[-1]
    prefix = tag[: len(tag) - len(base)]
    have = set(tags)
    return base == "train_loss" and all(prefix + s in have for s in SIGNATURE)


@dataclass
class Unsmoothed:
    """:func:`unsmooth`'s result: per-batch losses (or the raw series, ``rebuilt`` False) and why."""

    steps: np.ndarray
    values: np.ndarray
    bound: np.ndarray
    rebuilt: bool
    reason: str


def unsmooth(steps: np.ndarray | list[int], values: np.ndarray | list[float], beta: float = SMOOTH_BETA) -> Unsmoothed:
    """Per-batch losses from fastai's debiased EMA ``values`` logged at batches ``steps`` (1, 2, ... n).

    >>> l = np.array([1.0, 1.0, 50.0, 1.0]); e = np.zeros(4); acc = 0.0
    >>> for i, x in enumerate(l): acc = 0.98 * acc + 0.02 * x; e[i] = acc / (1 - 0.98 ** (i + 1))
    >>> r = unsmooth([1, 2, 3, 4], e)
    >>> r.rebuilt, np.round(r.values, 6).tolist()
    (True, [1.0, 1.0, 50.0, 1.0])
    """
    st = np.asarray(steps, np.int64)
    s = np.asarray(values, np.float64)
    raw = Unsmoothed(st, s, np.zeros(len(st)), False, "")
    fin = np.isfinite(s)
    if not fin.all():  # a blowup to NaN/inf: rebuilt up to the first non-finite value, raw from there
        cut = int(np.argmin(fin))
        head = unsmooth(st[:cut], s[:cut], beta) if cut >= MIN_POINTS else None
        if head is not None and head.rebuilt:
            tail = np.full(len(st) - cut, np.nan)
            return Unsmoothed(st, np.r_[head.values, s[cut:]], np.r_[head.bound, tail], True, head.reason)
        raw.reason = head.reason if head is not None else "not finite before two finite values: kept the raw series"
        return raw
    if len(st) < MIN_POINTS:
        raw.reason = "needs >= 2 values"
        return raw
    if st[0] != 1 or np.any(np.diff(st) != 1):
        raw.reason = (
            "not every batch from the first is logged (fastai logs each one from train_iter 1): the EMA cannot be "
            "inverted; kept the raw series"
        )
        return raw
    if not 0.0 < beta < 1.0:
        raw.reason = f"smoothing β {beta} outside (0, 1)"
        return raw
    debias = -np.expm1(st * math.log(beta))  # 1 - β^t
    e = s * debias
    e_prev = np.r_[0.0, e[:-1]]
    vals = (e - beta * e_prev) / (1.0 - beta)
    bound = ROUNDING_FACTOR * EPS32 * (np.abs(e) + beta * np.abs(e_prev)) / (1.0 - beta)
    bad = vals < -bound
    if np.any(bad) and np.all(s >= 0):
        j = int(np.argmax(bad))
        raw.reason = (
            f"the loss at batch {st[j]} comes out negative ({vals[j]:.3g}) beyond float32 rounding: not fastai's "
            "smoothed loss; kept the raw series"
        )
        return raw
    return Unsmoothed(st, vals, bound, True, f"fastai's smoothed loss (debiased EMA, β {beta:g}) inverted per batch")


def logged_adam_hyperparameters(scalars: Any) -> tuple[dict[str, float], str]:
    """fastai's Adam β2 and eps as its TensorBoardCallback logged them (``sqr_mom_0``, ``eps_0``: param group 0,
    the last value), when the run has fastai's signature tags; ({}, "") otherwise."""
    if scalars is None or not len(scalars):
        return {}, ""
    tags = set(map(str, scalars["tag"].unique()))
    if not all(t in tags for t in SIGNATURE):
        return {}, ""
    out: dict[str, float] = {}
    for key, tag in (("beta2", "sqr_mom_0"), ("eps", "eps_0")):
        v = scalars[scalars["tag"] == tag].sort_values("step")["value"].to_numpy(np.float64)
        v = v[np.isfinite(v)]
        if len(v) and 0.0 < v[-1] < 1.0:
            out[key] = float(str(np.float32(v[-1])))  # the value the user wrote, not its float32 rounding
    return out, "fastai's logged hyperparameters (sqr_mom_0, eps_0)" if out else ""
