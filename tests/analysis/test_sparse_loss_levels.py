"""The loss detector on a sparse log (one point in more than 10 steps): it follows a loss that falls faster than its
noise (a converging run logged the way Lightning and HF Trainer log), and only there — a flat noisy loss keeps the
window's level. The real-run check is tests/e2e/test_sparse_logs.py; these pin both sides on seeded series, each
against the reference loop."""

from __future__ import annotations

import numpy as np

from adamdiag.analysis.signals import detect_loss_events, detect_loss_events_ref


def test_a_blowup_off_a_falling_sparse_loss_is_found() -> None:
    """Every 50 steps (0-based, Lightning's default), the loss falling ~1.5x per point with 5% noise, then 20x above
    the point before it: before, the 10-point window's median (500 steps back) made that a 4x blip."""
    rng = np.random.default_rng(0)
    s = np.arange(49, 1250, 50)
    y = 8e-3 * 1.5 ** -np.arange(len(s), dtype=float) * np.exp(0.05 * rng.standard_normal(len(s)))
    i = 21
    y[i] = 20 * y[i - 1]
    ev = detect_loss_events(s, y)
    assert ev == detect_loss_events_ref(s, y)
    assert ev.blowup_step == int(s[i])


def test_a_flat_noisy_sparse_loss_gets_no_more_blowups() -> None:
    """Lognormal noise σ 0.6 around a flat level, every 20 steps for 20k steps: ordinary 10x swings. Following the
    recent points there (the lower of two medians) made blowups of 52 of these 100 runs; the window's level, 10."""
    rng = np.random.default_rng(1)
    s = np.arange(19, 20000, 20)
    found = 0
    for _ in range(100):
        y = np.exp(0.6 * rng.standard_normal(len(s)))
        ev = detect_loss_events(s, y)
        found += ev.blowup_step is not None
    assert found <= 15
    assert detect_loss_events(s, y) == detect_loss_events_ref(s, y)


def test_a_point_back_at_its_level_is_not_the_start_of_a_later_blowup() -> None:
    """A Lightning every-20 log of the lab's mlp_small_hot s211 run (a 3400x blowup at step 199, still 2.6x above
    its level 400 steps on). The 5x point at step 99 was back at the next point, but the 100-step horizon reached
    the blowup and the one-point persistence window held, so it was "confirmed": recorded as an early recovered
    spike (fewer than 5 points before it), which ended the search — `healthy`, high, on a 3400x blowup. Now the
    search goes on after the spike's excursion."""
    s = np.arange(19, 600, 20)
    y = np.array(
        [1.39e-2, 3.88e-3, 1.71e-3, 1.04e-3, 5.42e-3, 1.12e-3, 9.5e-4, 2.25e-3, 1.81e-3, 6.25, 0.416, 6.48e-2]
        + [2.05e-2, 1.4e-2, 1.17e-2, 1.03e-2, 9.4e-3, 8.66e-3, 8e-3, 7.48e-3, 7.02e-3, 6.61e-3, 6.28e-3, 6.01e-3]
        + [5.78e-3, 5.56e-3, 5.36e-3, 5.17e-3, 4.97e-3, 4.73e-3]
    )
    ev = detect_loss_events(s, y)
    assert ev == detect_loss_events_ref(s, y)
    assert ev.spikes == [99] and ev.blowup_step == 199 and ev.peak_step == 199
