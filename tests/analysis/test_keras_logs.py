"""Keras running-mean ``batch_loss`` → per-batch losses, on TensorBoard logs written by Keras 3.15
(tests/fixtures/tf/logs_f1, logs_f10: ``update_freq=1`` and ``10``; 3 epochs of 20 batches; global
batch 28 has targets ×10). The truth is each batch's loss at the weights it was computed with,
recorded by the generator (tools/runlab/make_tf_fixtures.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adamdiag.analysis.keras_logs import is_running_mean_tag, reconstruct_running_mean
from adamdiag.io.events import read_run

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "tf"
EXPECTED = json.loads((FIX / "expected.json").read_text())["logs"]


def logged(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, set[str]]:
    s = read_run(FIX / name / "train").scalars
    b = s[s.tag == "batch_loss"].sort_values("step")
    ev = s[s.tag == "epoch_loss"].sort_values("step").value.to_numpy()
    return b.step.to_numpy().astype(np.int64), b.value.to_numpy(), ev, set(s.tag.unique())


def truth_over(name: str, steps: np.ndarray, span: np.ndarray) -> np.ndarray:
    tr = np.asarray(EXPECTED[name]["true_batch_loss"])
    return np.array([tr[e - k : e].mean() for e, k in zip(steps, span)])


@pytest.mark.parametrize("name", ["logs_f1", "logs_f10"])
@pytest.mark.parametrize("how", ["epoch_values", "n_epochs"])
def test_reconstruction_matches_true_batch_losses(name, how):
    steps, vals, ev, tags = logged(name)
    assert is_running_mean_tag("batch_loss", tags) and not is_running_mean_tag("epoch_loss", tags)
    kw = {"epoch_values": ev} if how == "epoch_values" else {"n_epochs": len(ev)}
    r = reconstruct_running_mean(steps, vals, **kw)
    assert r.reconstructed, r.reason
    assert r.epoch_starts.tolist() == [0, 20, 40]
    freq = EXPECTED[name]["update_freq"]
    assert set(r.span.tolist()) == {freq}
    truth = truth_over(name, r.steps, r.span)
    # float32 logs: within the rounding bound, plus the float32 forward pass of the truth itself
    assert np.all(np.abs(r.values - truth) <= r.bound + 1e-4 * truth)
    # the blowup at the bad batch (global batch 28) stands out; the raw running mean hid it
    bad = EXPECTED[name]["bad_batch"] + 1
    j = int(np.argmax(r.values))
    assert r.steps[j] == bad + (-bad) % freq
    assert r.values[j] > 5 * np.median(r.values) and r.values[j] / np.median(r.values) > 2 * vals[j] / np.median(vals)


def test_no_epoch_boundary_drop_after_reconstruction():
    steps, vals, ev, _ = logged("logs_f1")
    r = reconstruct_running_mean(steps, vals, epoch_values=ev)
    # the raw series resets at the epoch start (step 21) to the first batch's loss alone; the
    # reconstruction is continuous there: step 21's loss is close to its neighbours
    assert vals[20] < 0.5 * vals[19]
    assert 0.5 < r.values[20] / r.values[19] < 2.0


def test_raw_series_kept_when_it_is_no_running_mean():
    steps = np.arange(1, 11)
    # a per-step loss that falls fast: k·a_k decreases inside one epoch → not a running mean
    vals = 10.0 * 0.5 ** np.arange(10)
    r = reconstruct_running_mean(steps, vals, n_epochs=1)
    assert not r.reconstructed and "kept the raw series" in r.reason
    assert np.array_equal(r.values, vals)
    # a metric with negative values: the checks that find epochs need S = k·a non-decreasing
    r = reconstruct_running_mean(steps, -np.ones(10), n_epochs=1)
    assert not r.reconstructed and "negative values" in r.reason
    # a log that starts mid-run: the first epoch's start is unknown
    r = reconstruct_running_mean(np.arange(500, 510), np.ones(10), n_epochs=1)
    assert not r.reconstructed and "not at the run's start" in r.reason


def test_synthetic_running_mean_with_gaps_and_partial_last_epoch():
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.5, 1.5, 70).astype(np.float64)
    losses[33] = 40.0  # a spike
    b = 25  # batches per epoch; logging every 5: ends of epochs are logged; the 3rd epoch runs on
    steps, vals = [], []
    for s in range(5, 71, 5):
        e = (s - 1) // b * b
        vals.append(np.float32(losses[e:s].mean()))
        steps.append(s)
    ev = [np.float32(losses[0:25].mean()), np.float32(losses[25:50].mean())]
    r = reconstruct_running_mean(np.array(steps), np.array(vals, np.float64), epoch_values=ev)
    assert r.reconstructed and r.epoch_starts.tolist() == [0, 25, 50]
    truth = np.array([losses[s - 5 : s].mean() for s in steps])
    np.testing.assert_allclose(r.values, truth, rtol=1e-5)
    assert r.steps[np.argmax(r.values)] == 35


def test_run_ending_in_nan_is_reconstructed_up_to_it():
    steps, vals, ev, _ = logged("logs_f1")
    # the run blows up to NaN in its third epoch (step 50 on); Keras' epoch value for it is NaN too
    vals = vals.copy()
    vals[49:] = np.nan
    ev = np.r_[ev[:2], np.nan]
    r = reconstruct_running_mean(steps, vals, epoch_values=ev)
    assert r.reconstructed and r.epoch_starts.tolist() == [0, 20, 40]
    assert np.isnan(r.values[49:]).all() and any("not finite from step 50" in n for n in r.notes)
    truth = truth_over("logs_f1", r.steps[:49], r.span[:49])
    assert np.all(np.abs(r.values[:49] - truth) <= r.bound[:49] + 1e-4 * truth)
