"""A corrupted batch the run shrugged off, in a log without a gradient norm: the loss alone shows one point
10^6x both neighbours and the next batch back at the level before. That is one batch's own loss
(``bad_batch``, low confidence, AD301 warning at the step; `check` still passes at --fail-on error), while the
same run without the corrupted batch stays ``healthy`` (a run that logs its gradient norm is judged by that
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
