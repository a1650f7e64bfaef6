"""The diagnosis's small decision rules on hand-built series (the end-to-end checks on real runs are in
test_cli_scan.py and the validation matrix)."""

from __future__ import annotations

import numpy as np

from adamdiag.analysis.evidence import abrupt_gradient_jump as _abrupt_gradient_jump


def _gn(n: int, every: int, jump_at: int | None, factor: float) -> tuple[np.ndarray, np.ndarray]:
    steps = np.arange(every, every * (n + 1), every)
    vals = np.full(n, 1e-3) * (1 + 0.05 * np.sin(np.arange(n)))
    if jump_at is not None:
        vals[steps == jump_at] *= factor
    return steps, vals


def test_abrupt_gradient_jump_needs_one_step_and_history():
    steps, vals = _gn(400, 1, 300, 50.0)
    hit = _abrupt_gradient_jump(300, (steps, vals))
    assert hit is not None and hit["step"] == 300
    # A gradual 1.4x-per-step growth (a v-collapse instability) is not one batch.
    steps = np.arange(1, 401)
    vals = np.r_[np.full(290, 1e-3), 1e-3 * 1.4 ** np.arange(1, 111)]
    assert _abrupt_gradient_jump(300, (steps, vals)) is None
    # Right at the start there is no healthy history to compare with.
    steps, vals = _gn(400, 1, 5, 50.0)
    assert _abrupt_gradient_jump(5, (steps, vals)) is None


def test_a_jump_among_other_ten_fold_jumps_is_an_oscillation_not_one_batch():
    # A warm-up past the edge of stability: the gradient norm swings 10-1000x from step to step (the
    # out-of-family mlp_hot_warmup run: 0.96 -> 18.6, 0.62 -> 16.6, then 0.57 -> 153 at the loss event).
    steps = np.arange(1, 61)
    vals = np.full(60, 0.8)
    vals[[30, 38]] = [18.6, 16.6]  # earlier 10x+ jumps, each back at once
    vals[45] = 153.0
    assert _abrupt_gradient_jump(46, (steps, vals)) is None
    calm = np.full(60, 0.8)
    calm[45] = 153.0
    hit = _abrupt_gradient_jump(46, (steps, calm))
    assert hit is not None and hit["step"] == 46
