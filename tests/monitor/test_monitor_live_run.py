"""A monitored run that is still being written, as `scan`/`check` meet it mid-training (issue 15): the
monitor's tags go to the user's own SummaryWriter (all tags of a logging step in one event), the live
file sits in the run directory, and the event file ends in a record cut short."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from monitor_loops import mlp, regression_data, train
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.monitor import LIVE_FILE, AdamMonitor


def test_check_on_a_monitored_run_in_progress(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    w = SummaryWriter(str(run))
    model = mlp(seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    mon = AdamMonitor(opt, model=model, writer=w, every=10, run_dir=run)
    x, y = regression_data(seed=3, n=256)
    train(model, opt, 200, data=(x, y), batch=32, after_step=lambda s, v: w.add_scalar("train/loss", v, s))
    mon.close()
    w.close()
    # the same run caught mid-write: its event file cut inside the last record
    live = tmp_path / "live"
    live.mkdir()
    (ev,) = run.glob("events.out.tfevents.*")
    data = ev.read_bytes()
    (live / ev.name).write_bytes(data[: len(data) - 9])
    shutil.copy(run / LIVE_FILE, live / LIVE_FILE)

    res = CliRunner().invoke(app, ["check", str(live), "--format", "json"])
    assert res.exit_code == 0, res.output  # in progress is no reason to fail the gate
    (r,) = json.loads(res.stdout)["runs"]
    assert r["verdict"] == "healthy"
    # the monitor's tags (multi-value events) are scan's most exact source, the live file joins as "live"
    assert "monitor" in r["sources"] and "live" in r["sources"], r["sources"]
    (f,) = [f for f in r["findings"] if f["id"] == "AD902"]
    assert f["severity"] == "info" and "in progress" in f["message"]
    assert not [f for f in r["findings"] if f["severity"] == "error"]
