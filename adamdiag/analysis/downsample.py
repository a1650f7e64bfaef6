"""Min/max bucket downsampling of a curve for reports: at most ``max_points`` points, and every
spike survives (each bucket keeps its smallest and its largest value, in step order), so a blowup
drawn from the downsampled curve looks as it did at full resolution. Pure numpy."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

MAX_POINTS = 2000


def minmax_downsample(
    steps: Any, values: Any, max_points: int = MAX_POINTS
) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64]]:
    """(steps, values) with at most ``max_points`` points (``max_points`` >= 2).

    Non-finite values are kept where they fall (a NaN is the evidence of a ``nonfinite`` run):
    each bucket keeps its first non-finite point besides its finite min and max."""
    s = np.asarray(steps)
    v = np.asarray(values, np.float64)
    n = len(v)
    if n <= max_points:
        return s.copy(), v.copy()
    buckets = max(max_points // 3, 1)  # min, max and possibly one non-finite point per bucket
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)
    keep: list[int] = []
    for a, b in zip(edges[:-1], edges[1:]):
        if b <= a:
            continue
        chunk = v[a:b]
        finite = np.isfinite(chunk)
        idx = set()
        if finite.any():
            masked_lo = np.where(finite, chunk, np.inf)
            masked_hi = np.where(finite, chunk, -np.inf)
            idx.add(a + int(np.argmin(masked_lo)))
            idx.add(a + int(np.argmax(masked_hi)))
        if not finite.all():
            idx.add(a + int(np.flatnonzero(~finite)[0]))
        keep.extend(sorted(idx))
    k = np.asarray(keep, np.int64)
    return s[k], v[k]
