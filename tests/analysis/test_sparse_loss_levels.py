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
