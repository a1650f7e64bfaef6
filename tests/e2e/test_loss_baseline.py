"""A blowup needs a level to rise from: a curve whose first point is near zero and then sits at a
normal level (a TF Estimator eval-like curve logged every 100 steps) is no blowup — at most AD901
"too few points before the rise" — and a real blowup's message names its peak's own step."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from adamdiag.cli import app


def _write(path, values, every: int = 100) -> None:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(path))
    for i, v in enumerate(values):
        w.add_scalar("loss", float(v), (i + 1) * every)
    w.close()


def _scan(path) -> dict:
    res = CliRunner().invoke(app, ["scan", str(path), "--format", "json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)["runs"][0]


def test_near_zero_first_point_is_not_a_baseline(tmp_path):
    rng = np.random.default_rng(0)
    _write(tmp_path, np.r_[7e-8, rng.uniform(0.2, 0.9, 30)])
    r = _scan(tmp_path)
    assert not any(f["id"] == "AD001" for f in r["findings"]), r["findings"]
    assert r["blowup_step"] is None


def test_blowup_message_names_the_peak_step(tmp_path):
    rng = np.random.default_rng(1)
    values = np.r_[
        np.geomspace(1.0, 0.1, 60) * rng.uniform(0.95, 1.05, 60), np.geomspace(2.0, 50.0, 20), np.full(20, 30.0)
    ]
    values[70] = 80.0
    _write(tmp_path, values, every=1)
    r = _scan(tmp_path)
    (f,) = [f for f in r["findings"] if f["id"] == "AD001"]
    assert f["evidence"]["peak_step"] == 71 and "at step 71" in f["message"]


def test_a_run_that_diverged_in_its_first_steps_is_not_healthy(tmp_path):
    # An lr far too high without warm-up: the loss jumps ~1000x at the third step and stays there. The
    # warm-up window has no trailing level, but the starting loss is one: a 10x above every level before
    # it that holds is no healthy run (was `healthy`, confidence high).
    rng = np.random.default_rng(2)
    early = tmp_path / "early"
    _write(early, np.r_[0.035, 0.034, 40.0 * rng.uniform(0.7, 1.3, 398)], every=1)
    r = _scan(early)
    assert r["verdict"] == "inconclusive" and r["blowup_step"] is None, r["verdict"]
    (f,) = [f for f in r["findings"] if f["id"] == "AD901" and f.get("step") == 3]
    assert "too few points before the rise" in f["message"]
    # the same jump after 12 points is a blowup from the level held before it (a loss alone: no cause)
    later = tmp_path / "later"
    _write(later, np.r_[np.geomspace(0.05, 0.03, 12), 40.0 * rng.uniform(0.7, 1.3, 388)], every=1)
    r = _scan(later)
    assert r["blowup_step"] == 13 and any(f["id"] == "AD001" for f in r["findings"]), r["blowup_step"]


def test_the_peak_is_that_of_the_blowup_not_of_a_later_event(tmp_path):
    # A blowup that recovers, then 500 steps later an unrelated jump (a data shift) higher than its peak:
    # the AD001 peak is the blowup's own.
    rng = np.random.default_rng(3)
    v = np.geomspace(1.0, 0.01, 1200) * rng.uniform(0.95, 1.05, 1200)
    v[600:620] = 5.0
    v[1100:] = 50.0
    _write(tmp_path, v, every=1)
    r = _scan(tmp_path)
    (f,) = [f for f in r["findings"] if f["id"] == "AD001"]
    assert r["blowup_step"] == 601 and f["evidence"]["peak_step"] <= 620, f["evidence"]


def test_a_gradual_climb_from_the_start_on_a_sparse_log_is_not_healthy(tmp_path):
    # Logged every 10 steps, the loss climbs 2.2 -> 34 over the first points and stays: no single point
    # doubles the level before it, and the best level counted from the 5th point is already up the climb.
    # Against the starting loss it is a 10x that holds, and it began before there was a level to rise from.
    rng = np.random.default_rng(4)
    climb = np.r_[np.geomspace(2.2, 34.0, 11), 34.0 * rng.uniform(0.9, 1.1, 29)]
    _write(tmp_path, climb, every=10)
    r = _scan(tmp_path)
    assert r["verdict"] == "inconclusive", r["verdict"]
    assert any(f["id"] == "AD901" and "too few points before the rise" in f["message"] for f in r["findings"])


def test_a_batch_adam_absorbed_is_a_bad_batch_named_at_its_step(tmp_path):
    # The gradient norm jumps ~500x for one step and is back at the next; the loss does not react (a bad
    # batch absorbed). The run met a bad batch: bad_batch (medium — the loss half of the signature is missing),
    # the batch named with an AD301 warning (not an error: `check` passes), instead of healthy and nothing.
    from torch.utils.tensorboard import SummaryWriter

    rng = np.random.default_rng(5)
    w = SummaryWriter(str(tmp_path))
    for step in range(1, 401):
        w.add_scalar("loss", float(np.exp(-step / 200) * rng.uniform(0.95, 1.05)), step)
        w.add_scalar("grad_norm", 50.0 if step == 250 else float(rng.uniform(0.08, 0.12)), step)
    w.close()
    r = _scan(tmp_path)
    assert (r["verdict"], r["confidence"], r["blowup_step"]) == ("bad_batch", "medium", 250), r["verdict"]
    (f,) = [f for f in r["findings"] if f["id"] == "AD301"]
    assert f["severity"] == "warning" and f["step"] == 250 and "absorbed" in f["message"]
    assert not [f for f in r["findings"] if f["severity"] == "error"]
