"""The fast paths of signals.py (issue 12 item 7) against their plain-loop references: every field of
every result equal (exact floats, not approximately), on small and medium random series with NaN,
plateaus, ties, spikes, slow climbs, blowups, signed losses and sparse or irregular steps."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from adamdiag.analysis.signals import (
    detect_loss_events,
    detect_loss_events_ref,
    sustained_runs,
    sustained_runs_ref,
)


def _steps(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    if kind == "every":
        return np.arange(1, n + 1)
    if kind == "sparse":
        return np.arange(10, 10 * n + 1, 10)
    # irregular gaps, some repeated-size jumps (a resumed run that skipped ahead)
    return np.cumsum(rng.integers(1, 30, n))


def _loss(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    t = np.arange(n, dtype=np.float64)
    base = (2.0 * np.exp(-t / max(n / 5, 1)) + 0.05) * np.exp(rng.normal(0, rng.choice([0.01, 0.1, 0.5]), n))
    k = int(rng.integers(n // 4, n)) if n > 8 else n // 2
    if kind == "blowup":
        base[k:] *= np.exp(np.clip((t[k:] - k) / rng.integers(1, 60), 0, 1) * np.log(rng.choice([3.0, 20.0, 1e3])))
    elif kind == "spikes":
        idx = rng.integers(0, n, max(1, n // 100))
        base[idx] *= rng.choice([3.0, 8.0, 50.0], len(idx))
    elif kind == "climb":
        base[k:] *= np.exp((t[k:] - k) / max(n / 20, 1))
    elif kind == "plateau":  # long exact ties: the median and MAD of a constant window
        base[k : k + n // 3] = base[k]
        base = np.round(base, 2)
    elif kind == "signed":  # a negative log-likelihood: shifted, not logged
        base = np.log(base) - 1.0
    elif kind == "near_zero_first":  # one tiny first point (issue 12 item 7's Estimator case)
        base[0] = 7e-8
    elif kind == "tiny":  # noise at float32 precision around zero
        base = np.abs(rng.normal(0, 1e-9, n)) + (t < n // 2) * 1.0
    if rng.random() < 0.3:  # a NaN somewhere: only the finite prefix is analysed
        base[int(rng.integers(0, n))] = np.nan
    return base.astype(np.float32).astype(np.float64) if rng.random() < 0.5 else base


KINDS = ["blowup", "spikes", "climb", "plateau", "signed", "near_zero_first", "tiny", "plain"]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("kind", KINDS)
def test_detect_loss_events_equals_reference(kind: str, seed: int) -> None:
    rng = np.random.default_rng(1000 * seed + KINDS.index(kind))
    for n in (5, 8, 9, 30, 250, int(rng.integers(500, 6000))):
        steps = _steps(rng, n, str(rng.choice(["every", "sparse", "irregular"])))
        y = _loss(rng, n, kind)
        fast, ref = detect_loss_events(steps, y), detect_loss_events_ref(steps, y)
        assert dataclasses.asdict(fast) == dataclasses.asdict(ref), (kind, seed, n)


def test_detect_loss_events_equals_reference_on_an_oscillating_blowup() -> None:
    """Many excursion points that are not confirmed (an oscillating loss): each is visited, in order."""
    rng = np.random.default_rng(7)
    t = np.arange(4000, dtype=np.float64)
    y = 0.1 * np.exp(rng.normal(0, 0.05, 4000))
    y[1000:3000:2] *= 4.0  # every other point 4x: excursions that never persist
    y[3500:] *= 30.0
    steps = np.arange(1, 4001)
    fast, ref = detect_loss_events(steps, y), detect_loss_events_ref(steps, y)
    assert dataclasses.asdict(fast) == dataclasses.asdict(ref)
    assert fast.blowup_step is not None
    assert t.size == 4000


@pytest.mark.parametrize("seed", range(20))
def test_sustained_runs_equals_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for n in (0, 1, 2, 17, 1000):
        mask = rng.random(n) < rng.choice([0.1, 0.5, 0.9, 1.0])
        for min_len in (0, 1, 3, 50):
            assert sustained_runs(mask, min_len) == sustained_runs_ref(mask, min_len)
    # non-bool input is taken as truthiness in both, a non-contiguous view too
    x = rng.normal(size=200)
    assert sustained_runs(x > 0, 2) == sustained_runs_ref(x > 0, 2)
    assert sustained_runs((x > 0)[::3], 2) == sustained_runs_ref((x > 0)[::3], 2)


def _hand_cases() -> list[tuple[np.ndarray, np.ndarray]]:
    s = np.arange(1, 401)
    rng = np.random.default_rng(11)
    slow = np.r_[np.exp(-np.arange(300) / 100), np.exp(-3 + np.arange(100) / 20)]  # the climb branch
    early = np.r_[np.full(3, 0.1), np.full(27, 5.0)]  # a rise before MIN_BASELINE_POINTS: unbased
    step_up = np.r_[np.linspace(1, 0.1, 300), np.full(100, 5.0)]
    spike = np.exp(-s / 100) + 0.01 * rng.random(400)
    spike[200] *= 10
    flat = np.full(400, 0.5)  # all ties, zero MAD
    flat[350:] = 50.0
    # no warm-up, an lr too high for the first steps: up ~1000x at step 2, held for a while, then back under
    # the starting loss for good (the out-of-family probe's mlp_hot_nowarmup runs): a recovered spike
    came_back = np.r_[0.9, 60.0, 1000.0, 360.0, 12.0, 27.0, 5.0, np.geomspace(5.0, 0.5, 393)]
    return [
        (s, slow),
        (s[:30], early),
        (s, step_up),
        (s, spike),
        (s, flat),
        (s * 10, slow),
        (s, -slow),
        (s, came_back),
    ]


@pytest.mark.parametrize("case", range(8))
def test_detect_loss_events_equals_reference_on_hand_cases(case: int) -> None:
    steps, y = _hand_cases()[case]
    fast, ref = detect_loss_events(steps, y), detect_loss_events_ref(steps, y)
    assert dataclasses.asdict(fast) == dataclasses.asdict(ref)
    if case == 1:
        assert fast.unbased_rise_step == 4 and fast.blowup_step is None
    if case == 7:
        assert fast.spikes[:1] == [2] and fast.unbased_rise_step is None and fast.blowup_step is None
