"""A corrupted batch the run shrugged off, in a log without a gradient norm: the loss alone shows one point
10^6x both neighbours and the next batch back at the level before. That is one batch's own loss
(``bad_batch``, low confidence, AD301 warning at the step; `check` still passes at --fail-on error), while the
same run without the corrupted batch stays ``healthy``. When the batch's update damages the weights and the loss
climbs after it (a blowup), the blowup's first point is still that one batch's own loss, a decade above the next
batch's: ``bad_batch`` (rule batch_loss_blowup, AD301 error) — it read ``inconclusive`` before (a run that logs its gradient norm is judged by that
instead: tests/e2e/test_cli_scan.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from realruns import train_tiny
from typer.testing import CliRunner

from adamdiag.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("one_point")
    kw = {"lr": 1e-3, "ckpt_every": None}
    return {
        "spike": train_tiny(base / "spike", bad_batch_at=250, log_grad_norm=False, **kw),
        "clean": train_tiny(base / "clean", log_grad_norm=False, **kw),
        # lr 1e-2: the corrupted batch's update moves the weights far, and the loss climbs after it
        "damaged": train_tiny(base / "damaged", steps=300, lr=1e-2, bad_batch_at=200, log_grad_norm=False),
    }


def _scan(path: Path) -> dict:
    res = runner.invoke(app, ["scan", str(path), "--format", "json"])
    assert res.exit_code == 0, res.output
    (run,) = json.loads(res.stdout)["runs"]
    return run


def test_a_one_point_loss_spike_without_gradient_norm_is_a_bad_batch(runs):
    run = _scan(runs["spike"])
    assert (run["verdict"], run["confidence"], run["blowup_step"]) == ("bad_batch", "low", 250)
    (f,) = [f for f in run["findings"] if f["id"] == "AD301"]
    assert f["severity"] == "warning" and f["step"] == 250
    assert f["evidence"]["ratio"] > 1e4 and f["evidence"]["next"] <= 2 * f["evidence"]["previous"]
    assert runner.invoke(app, ["check", str(runs["spike"])]).exit_code == 0  # a warning: the gate passes


def test_the_same_run_without_the_batch_is_healthy(runs):
    run = _scan(runs["clean"])
    assert run["verdict"] == "healthy" and not [f for f in run["findings"] if f["id"] == "AD301"]


def test_a_blowup_that_starts_with_one_batchs_loss_is_that_batch(runs):
    res = runner.invoke(app, ["scan", str(runs["damaged"]), "--format", "json"])
    (run,) = json.loads(res.stdout)["runs"]
    assert (run["verdict"], run["confidence"], run["blowup_step"]) == ("bad_batch", "medium", 200), run
    (f,) = [f for f in run["findings"] if f["id"] == "AD301"]
    assert f["severity"] == "error" and f["step"] == 200 and "one batch's own loss" in f["message"]
    ev = f["evidence"]
    assert ev["loss"] >= 10 * max(ev["previous"], ev["next"])
    assert res.exit_code == 0  # scan diagnoses; check gates
    assert runner.invoke(app, ["check", str(runs["damaged"])]).exit_code == 1
