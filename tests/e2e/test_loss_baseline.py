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
