"""Keras' ``batch_*`` scalars are running means since the start of the epoch; per-batch values back.

Keras' TensorBoard callback (``update_freq=N``) writes ``batch_loss`` at every N-th global batch s,
but the value is the metric's running mean a_k over the k batches of the *current epoch* so far,
not the batch's own loss. A 13× jump of one batch's loss shows as a small bump, and every epoch
start resets the mean (which a spike detector then reads as a drop and a recovery). With the
epoch's first global step E (so k = s − E), k·a_k is the epoch's running *sum* S_k, hence

* ``update_freq=1``: l_k = k·a_k − (k−1)·a_{k−1}  (the k-th batch's loss);
* logging every N batches: (k_j·a_j − k_{j−1}·a_{j−1}) / (k_j − k_{j−1}), the mean loss of the batches
  since the previous logged point (k_{j−1} = 0 at the first logged point of an epoch).

Epoch boundaries, in order of preference: (1) the ``epoch_*`` values (one per finished epoch) are
the running mean at each epoch's last batch, so a logged point equal to one (as float32) is that
epoch's end; (2) a constant number of batches per epoch B = last step / epochs; (3) S is
non-decreasing within an epoch (losses ≥ 0), so a drop of (s − E)·a below the previous S marks a
new epoch. Each is accepted only when it makes S non-decreasing in every epoch and its count agrees
with the number of epoch values (so losses must be ≥ 0: a metric with negative values is left raw).
Values are float32 (and so is Keras' running total), so each reconstructed value has a rounding bound ~ ε32·(S_j + S_{j−1})/(k_j − k_{j−1}); a value negative beyond 4× that bound means
the series is not a running mean (or the boundaries are wrong): the raw series is kept, and
``reason`` says why.

Keras weighs each batch by its size in the running mean; the rebuild takes every batch as full. So the last
batch of an epoch, when the data does not divide into whole batches, comes out off by its share of the difference
to the epoch's mean (measured on a 922-sample epoch of 32-sample batches, its last of 26 samples: 10-12% low
while the loss was 500x its old level, every other batch exact to 1e-5: tests/e2e/test_mlflow_keras.py).

Without epoch values (a writer known to log running means but no ``epoch_*``: MLflow's Keras callback per batch)
the count of finished epochs, when the log tells it, checks (2) and (3); without it (3) alone is used, unchecked.

Pure numpy: no I/O, no printing (the diagnosis decides what to do and says so: rule AD603).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

EPS32 = float(np.finfo(np.float32).eps) / 2  # unit roundoff of float32 (2^-24)
ROUNDING_FACTOR = 4.0  # reconstructed values may be this many rounding bounds below 0 (still noise)


@dataclass
class RunningMeanReconstruction:
    """What :func:`reconstruct_running_mean` returns.

    ``values[j]`` is the mean loss of the ``span[j]`` batches ending at global step ``steps[j]``
    (1 batch each with ``update_freq=1``) when ``reconstructed``; otherwise the raw input values.
    ``epoch_starts``: global step E before each epoch's first batch (0 for the first epoch).
    ``bound[j]``: float32 rounding bound of ``values[j]`` (absolute). ``reason``: how the epoch
    boundaries were found, or why the raw series was kept.
    """

    steps: np.ndarray
    values: np.ndarray
    span: np.ndarray
    epoch_starts: np.ndarray
    bound: np.ndarray
    reconstructed: bool
    reason: str
    notes: list[str] = field(default_factory=list)


def is_running_mean_tag(tag: str, tags: set[str] | list[str]) -> bool:
    """``batch_<name>`` with an ``epoch_<name>`` beside it: Keras' TensorBoard callback naming
    (tf.keras and Keras 3; under a ``train/`` run directory)."""
    base = tag.rsplit("/", 1)[-1]
    if not base.startswith("batch_"):
        return False
    prefix = tag[: len(tag) - len(base)]
    return f"{prefix}epoch_{base[len('batch_') :]}" in set(tags)


def keras_written(tags: set[str] | list[str]) -> bool:
    """A run whose scalars Keras' TensorBoard callback wrote: it always writes ``epoch_loss`` (under the
    ``train/`` run directory, so the tag may carry that prefix) — its Adam's defaults are Keras' own.

    >>> keras_written(["train/epoch_loss", "train/epoch_learning_rate"]), keras_written(["loss"])
    (True, False)
    """
    return any(t.rsplit("/", 1)[-1] == "epoch_loss" for t in tags)


# Keras 3 writes the validation loss once per epoch a second time, against the optimizer's iteration count:
# the one place a Keras log says how many updates an epoch had.
ITERATIONS_TAG = "evaluation_loss_vs_iterations"


def epoch_axis_to_iterations(scalars: Any, source: Any = None) -> tuple[Any, dict[str, Any] | None]:
    """Keras' ``epoch_*`` scalars are logged at step = epoch index (0, 1, ...), while its checkpoints (and
    replay) count optimizer iterations: with several batches per epoch the two axes differ (a blowup at
    "step 125" is epoch 125, iteration ~1000). Keras 3 also logs ``evaluation_loss_vs_iterations`` at the
    iteration count at the end of each epoch; with it, every ``epoch_*`` point moves to its epoch's last
    iteration (``source``: the frame that holds that tag, when ``scalars`` had the evaluation curves taken
    out; default ``scalars``). Returns (scalars, what was done) — the frame unchanged and None when the run has no such
    mapping or its epochs are one update each. Pure: a new frame, the input is not modified.

    >>> import pandas as pd
    >>> s = pd.DataFrame({"tag": ["train/epoch_loss"] * 3 + ["validation/evaluation_loss_vs_iterations"] * 3,
    ...                   "step": [0, 1, 2, 8, 16, 24], "value": [1.0, 0.5, 0.4, 1.1, 0.6, 0.5]})
    >>> out, note = epoch_axis_to_iterations(s)
    >>> out[out.tag == "train/epoch_loss"].step.tolist(), note["updates_per_epoch"]
    ([8, 16, 24], 8.0)
    """

    src = scalars if source is None else source
    tags = set(scalars["tag"].unique()) if len(scalars) else set()
    it_tags = sorted({t for t in src["tag"].unique() if t.rsplit("/", 1)[-1] == ITERATIONS_TAG}) if len(src) else []
    if not keras_written(tags) or len(it_tags) != 1:
        return scalars, None
    it = src[src["tag"] == it_tags[0]].sort_values("step")
    iters = it["step"].to_numpy(dtype=np.int64)
    if len(iters) < 2 or not (np.diff(iters) > 0).all():
        return scalars, None
    per_epoch = float(np.median(np.diff(iters)))
    if per_epoch <= 1:
        return scalars, None
    epoch_rows = scalars["tag"].map(lambda t: t.rsplit("/", 1)[-1].startswith("epoch_"))
    ep = scalars.loc[epoch_rows, "step"].to_numpy(dtype=np.int64)
    if not len(ep) or ep.min() < 0 or ep.max() >= len(iters):
        return scalars, None  # epochs the mapping does not cover: leave the log as it is
    out = scalars.copy()
    out.loc[epoch_rows, "step"] = iters[ep]
    note = {
        "tag": it_tags[0],
        "epochs": int(len(iters)),
        "updates_per_epoch": per_epoch,
        "moved": sorted({t for t in tags if t.rsplit("/", 1)[-1].startswith("epoch_")}),
    }
    return out, note


def _sums(steps: np.ndarray, a: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k, S = k·a) of every logged point, k counted from its epoch's start."""
    idx = np.searchsorted(starts, steps, side="left") - 1  # epoch j: starts[j] < s ≤ starts[j+1]
    k = steps - starts[np.clip(idx, 0, len(starts) - 1)]
    return k, k * a


def _consistent(steps: np.ndarray, a: np.ndarray, starts: np.ndarray) -> bool:
    """S non-decreasing inside every epoch (up to float32 rounding), k ≥ 1 everywhere."""
    k, s = _sums(steps, a, starts)
    if np.any(k < 1):
        return False
    epoch = np.searchsorted(starts, steps, side="left")
    same = epoch[1:] == epoch[:-1]
    tol = ROUNDING_FACTOR * EPS32 * (np.abs(s[1:]) + np.abs(s[:-1]))
    return bool(np.all(s[1:][same] >= s[:-1][same] - tol[same]))


def _boundaries_from_drops(steps: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Epoch starts found where (s − E)·a drops below the previous running sum."""
    starts = [0]
    prev_s = None
    for j in range(len(steps)):
        s_j = (steps[j] - starts[-1]) * a[j]
        if prev_s is not None and s_j < prev_s - ROUNDING_FACTOR * EPS32 * (abs(s_j) + abs(prev_s)):
            starts.append(int(steps[j - 1]))  # the new epoch began after the previous logged point
            s_j = (steps[j] - starts[-1]) * a[j]
        prev_s = s_j
    return np.asarray(starts, np.int64)


def _boundaries_from_epoch_values(steps: np.ndarray, a: np.ndarray, epoch_values: np.ndarray) -> np.ndarray:
    """Epoch ends: where a logged running mean equals the next epoch value (as float32), in order;
    stops at the first epoch whose end was not logged (its value then matches nothing)."""
    ends = []
    j = 0
    a32 = a.astype(np.float32)
    for v in epoch_values.astype(np.float32):
        hit = np.flatnonzero(a32[j:] == v)
        if not len(hit):
            break
        j += int(hit[0])
        ends.append(int(steps[j]))
        j += 1
    return np.asarray(ends, np.int64)


def reconstruct_running_mean(
    steps: np.ndarray | list[int],
    values: np.ndarray | list[float],
    *,
    n_epochs: int | None = None,
    epoch_values: np.ndarray | list[float] | None = None,
    first_step: int = 1,
) -> RunningMeanReconstruction:
    """Per-batch (or per-logging-interval) losses from Keras' per-epoch running means.

    ``steps``: the global batch steps the values were logged at (Keras 3: 1-based, s = optimizer
    iterations after the batch); ``values``: the logged running means; ``n_epochs``: the number of
    ``epoch_*`` values of the same run (finished epochs), used to check the boundaries (None: not
    checked — said in ``notes``); ``epoch_values``: those values in epoch order (they locate epoch
    ends exactly; implies ``n_epochs``); ``first_step``: the global step of the run's first batch (a
    log that starts later, e.g. after a restart, is not reconstructed: its first epoch's start is
    unknown). A run that ends in NaN/inf (a blowup) is reconstructed up to its first non-finite
    value; from there on the raw values are kept (``notes`` says from which step).
    """
    st = np.asarray(steps, np.int64)
    a = np.asarray(values, np.float64)
    fin = np.isfinite(a)
    if fin.all() or not fin.any():
        return _reconstruct(st, a, n_epochs=n_epochs, epoch_values=epoch_values, first_step=first_step)
    cut = int(np.argmin(fin))
    ev = None if epoch_values is None else np.asarray(epoch_values, np.float64)
    if ev is not None:
        ev = ev[: int(np.argmin(np.isfinite(ev)))] if not np.isfinite(ev).all() else ev
    head = _reconstruct(st[:cut], a[:cut], n_epochs=n_epochs, epoch_values=ev, first_step=first_step)
    if not head.reconstructed:  # the raw series, with the reason
        return _reconstruct(st, a, n_epochs=n_epochs, epoch_values=epoch_values, first_step=first_step)
    tail = len(st) - cut
    return RunningMeanReconstruction(
        st,
        np.r_[head.values, a[cut:]],
        np.r_[head.span, np.ones(tail, np.int64)],
        head.epoch_starts,
        np.r_[head.bound, np.full(tail, np.nan)],
        True,
        head.reason,
        [*head.notes, f"not finite from step {st[cut]} on: raw values kept from there"],
    )


def _epoch_starts(
    st: np.ndarray,
    a: np.ndarray,
    e0: int,
    n_epochs: int | None,
    epoch_values: np.ndarray | list[float] | None,
) -> tuple[np.ndarray, str, list[str]] | str:
    """(epoch starts, how they were found, notes), or why none could be trusted (module docstring:
    epoch values first, then a constant epoch length, then the drops of k·a_k)."""
    if epoch_values is not None:
        ev = np.asarray(epoch_values, np.float64)
        n_epochs = len(ev)
        ends = _boundaries_from_epoch_values(st, a, ev)
        if len(ends) >= len(ev) - 1:  # all matched, or all but the last (its end not logged yet)
            trial = np.r_[e0, ends[ends < st[-1]]].astype(np.int64)
            if _consistent(st, a, trial):
                return trial, "epoch ends where the running mean equals the epoch values", []
    drops = _boundaries_from_drops(st - e0, a) + e0
    if n_epochs is None:
        return drops, "epoch starts from the drops of k·a_k", ["epoch count not checked (no epoch_* values)"]
    ok_counts = (n_epochs, n_epochs + 1)  # + 1: the last epoch may still be running (no epoch value yet)
    span = int(st[-1] - e0)
    for n in dict.fromkeys(n for n in ok_counts if n and span % n == 0):
        b = span // n
        trial = e0 + b * np.arange(n, dtype=np.int64)
        if _consistent(st, a, trial):
            return trial, f"epoch starts every {b} batches ({n} epochs)", []
    if len(drops) in ok_counts and _consistent(st, a, drops):
        return drops, "epoch starts from the drops of k·a_k", []
    return (
        f"found {len(drops)} epoch(s) from the drops of k·a_k, the log has {n_epochs} epoch value(s), "
        "and no constant epoch length fits: kept the raw series"
    )


def _reconstruct(
    steps: np.ndarray | list[int],
    values: np.ndarray | list[float],
    *,
    n_epochs: int | None = None,
    epoch_values: np.ndarray | list[float] | None = None,
    first_step: int = 1,
) -> RunningMeanReconstruction:
    """The reconstruction of an all-finite series (see :func:`reconstruct_running_mean`)."""
    st = np.asarray(steps, np.int64)
    a = np.asarray(values, np.float64)
    raw = RunningMeanReconstruction(
        st, a.copy(), np.ones(len(st), np.int64), np.zeros(1, np.int64), np.zeros(len(st)), False, ""
    )
    if len(st) < 2 or np.any(np.diff(st) <= 0) or not np.all(np.isfinite(a)):
        raw.reason = "needs ≥ 2 finite values at increasing steps"
        return raw
    if np.any(a < 0):  # the boundary checks rely on S = k·a never decreasing inside an epoch
        raw.reason = (
            "negative values (a metric that can be < 0): epoch boundaries cannot be checked; kept the raw series"
        )
        return raw
    if st[0] > first_step - 1 + max(int(np.min(np.diff(st))), 1):
        raw.reason = f"the log starts at step {st[0]}, not at the run's start: the first epoch's start is unknown"
        return raw
    found = _epoch_starts(st, a, first_step - 1, n_epochs, epoch_values)
    if isinstance(found, str):
        raw.reason = found
        return raw
    starts, how, notes = found
    if not _consistent(st, a, starts):
        raw.reason = "k·a_k decreases inside an epoch: not a running mean; kept the raw series"
        return raw
    k, s = _sums(st, a, starts)
    epoch = np.searchsorted(starts, st, side="left")
    first = np.r_[True, epoch[1:] != epoch[:-1]]
    k_prev = np.where(first, 0, np.r_[0, k[:-1]])
    s_prev = np.where(first, 0.0, np.r_[0.0, s[:-1]])
    span = k - k_prev
    vals = (s - s_prev) / span
    bound = ROUNDING_FACTOR * EPS32 * (np.abs(s) + np.abs(s_prev)) / span
    bad = vals < -bound
    if np.any(bad):
        j = int(np.argmax(bad))
        raw.reason = (
            f"value at step {st[j]} comes out negative ({vals[j]:.3g}) beyond float32 rounding: kept the raw series"
        )
        return raw
    return RunningMeanReconstruction(st, np.maximum(vals, 0.0), span, starts, bound, True, how, notes)
