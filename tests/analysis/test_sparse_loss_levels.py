"""The loss detector on a sparse log (one point in more than 10 steps): it follows a loss that falls faster than its
noise (a converging run logged the way Lightning and HF Trainer log), and only there — a flat noisy loss keeps the
window's level. The real-run check is tests/e2e/test_sparse_logs.py; these pin both sides on seeded series, each
against the reference loop."""

from __future__ import annotations

import numpy as np
import pytest

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


# HF Trainer every 100 (each point the mean of its 100 steps) of the lab's mlp_tiny_sh9999 s210: the loss falls 8-10x
# per point to 2e-7, then a v-collapse blowup oscillates 200x above it (steps 500-800) and the log ends on a low.
FAST_FALL = (
    np.arange(100, 1000, 100),
    np.array([7.72e-3, 2.09e-5, 2.52e-6, 1.95e-7, 3.87e-5, 2.33e-5, 3.06e-8, 3.76e-5, 3.94e-9]),
)


def test_a_spike_off_a_fast_falling_sparse_loss_is_measured_against_the_fall() -> None:
    """The level of a sparse log of a falling loss is where the fall has got to by the last point, not the median of
    the last three (a point behind: 8-10x here). Against that median the 198x point at step 500 was 15x above a
    level that the evidence's own median (of all four points before) put at 3.3x: no unresolved spike, `healthy`
    high. The detector now hands its level over with the spike (``spike_levels``), and the evidence uses it."""
    from adamdiag.analysis.evidence import unresolved_spike

    s, y = FAST_FALL
    ev = detect_loss_events(s, y)
    assert ev == detect_loss_events_ref(s, y)
    assert ev.spikes == [500] and ev.blowup_step is None  # 4 points before it: too few for a blowup's level
    assert ev.spike_levels[0] == pytest.approx(1.95e-7, rel=0.01)
    u = unresolved_spike(s, y, ev.spikes, ev.spike_levels)
    assert u is not None and u["step"] == 500 and u["ratio"] > 100
    assert unresolved_spike(s, y, ev.spikes) is None  # the median of the points before: 3.3x


def test_a_sparse_loss_that_stops_falling_raises_nothing() -> None:
    """The other side: the level follows the fall no further than the last point (the larger of it and the recent
    median moved one trend step on), so where a fast fall stops — a loss falling 2-10x per point that flattens
    after 3-11 points, 1-10% noise, every 50 or 100 steps — the first flat points are no rise: no spike, no
    blowup (300 seeded series; projecting the trend past the last point made spikes of such knees)."""
    rng = np.random.default_rng(3)
    for _ in range(300):
        per = int(rng.choice([50, 100]))
        s = np.arange(per - 1, per * 40, per)
        fall, knee, sigma = rng.uniform(2, 10), int(rng.integers(3, 12)), rng.uniform(0.01, 0.1)
        y = 1e-2 * fall ** -np.minimum(np.arange(len(s)), knee) * np.exp(sigma * rng.standard_normal(len(s)))
        ev = detect_loss_events(s, y)
        assert ev == detect_loss_events_ref(s, y)
        assert not ev.spikes and ev.blowup_step is None and ev.unbased_rise_step is None


def test_an_early_blip_does_not_hide_the_blowup_after_it() -> None:
    """Lightning every 20 of the lab's mlp_small_hot s181: a 2.7x point at step 99 (the log's 5th point, too few
    before it for a blowup's level) and a 670x blowup at step 139. The blip is a recovered spike, and its excursion
    lasted until the loss was back within 2x of the blip's level — step 579, after the whole blowup. The search goes
    on from the first point with a based level instead: 139 is judged against its own level."""
    s = np.arange(19, 600, 20)
    y = np.array(
        [0.0121, 0.0032, 0.00143, 0.00085, 0.00231, 0.00186, 0.573, 0.0554, 0.0119, 0.0158, 0.00385, 0.0227, 0.0398]
        + [0.399, 0.194, 0.0915, 0.0288, 0.011, 0.00436, 0.00335, 0.00273, 0.00715, 0.00216, 0.0021, 0.00601, 0.0186]
        + [0.00473, 0.00199, 0.00143, 0.0013]
    )
    ev = detect_loss_events(s, y)
    assert ev == detect_loss_events_ref(s, y)
    assert ev.spikes == [99] and ev.blowup_step == 139 and ev.peak_step == 139
