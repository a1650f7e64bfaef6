"""A collapse in progress (no event) is judged point by point against v's memory at that point
(evidence._stretch_in_progress, vectorised): equal to the plain point loop over collapse_span on random
trajectories, and a β2 0.9999 stretch of a few dozen steps counts early in training."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adamdiag.analysis.evidence import Trajectory, collapse_span, collapse_stretch
from adamdiag.analysis.signals import sustained_runs_ref
from adamdiag.analysis.thresholds import COLLAPSE_DEPTH, COLLAPSE_MIN_POINTS, COLLAPSE_R


def _reference(tr: Trajectory, beta2: float) -> tuple[int, int, float] | None:
    """The rule as written: for each sustained stretch, the first point that has lasted its own
    collapse_span(step) (in logged points) and is deep."""
    spp = max(1.0, float(np.median(np.diff(tr.steps)))) if len(tr.steps) > 1 else 1.0
    mask = tr.r < COLLAPSE_R
    peak = np.maximum.accumulate(np.where(np.isfinite(tr.vhat), tr.vhat, 0.0))
    for a, b in sustained_runs_ref(mask, COLLAPSE_MIN_POINTS):
        for k in range(a + COLLAPSE_MIN_POINTS - 1, b):
            need = max(COLLAPSE_MIN_POINTS, math.ceil(collapse_span(int(tr.steps[k]), beta2) / spp))
            if k - a + 1 >= need and tr.vhat[k] <= COLLAPSE_DEPTH * peak[k]:
                return int(tr.steps[a]), int(tr.steps[k]), float(np.nanmedian(tr.r[a:b]))
    return None


@pytest.mark.parametrize("seed", range(40))
def test_vectorised_rule_equals_the_point_loop(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 3000))
    every = int(rng.choice([1, 10]))
    steps = np.arange(1, n + 1) * every
    r = np.where(rng.random(n) < 0.8, 1e-3, 1.0)  # long quiet runs broken now and then
    vhat = np.exp(-np.cumsum(rng.random(n) * 0.05))  # decays: deep somewhere for long runs
    beta2 = float(rng.choice([0.99, 0.999, 0.9999]))
    tr = Trajectory("global", steps, vhat * r, vhat, r, exact=True, beta2=beta2)
    assert collapse_stretch(tr, None, beta2) == _reference(tr, beta2)


def test_early_in_a_long_memory_run_the_memory_so_far_counts():
    steps = np.arange(1, 301)
    vhat = np.r_[np.ones(100), np.full(200, 1e-3)]
    r = np.r_[np.ones(100), np.full(200, 1e-4)]
    tr = Trajectory("global", steps, vhat * r, vhat, r, exact=True, beta2=0.9999)
    first, warn, _ = collapse_stretch(tr, None, 0.9999)
    # quiet from 101; at step k the stretch (k - 100 points) must have lasted ceil(0.2·k): first at k = 125
    assert first == 101 and warn == 125 < 0.2 / (1 - 0.9999)
