"""scan reads the live monitor's `adamdiag/*` tags as its most exact source (issue 15 item 1): a real run
trained with AdamMonitor writing to a SummaryWriter, no gradient norm logged — scan still sees the
collapse (from the monitor's own r and v̂), names the source, and matches the lab's blowup step."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from adamdiag.cli import app


def _train_with_monitor(out: Path, steps: int = 520) -> int:
    import runlab
    from realruns import sh99_config
    from torch.utils.tensorboard import SummaryWriter

    from adamdiag.monitor import AdamMonitor

    cfg = sh99_config(steps)  # this loop saves no checkpoints: the monitor's tags are the only v data
    data, model = runlab.build_data(cfg), runlab.build_model(cfg)
    opt = runlab.build_optimizer(cfg, model)
    w = SummaryWriter(str(out))
    mon = AdamMonitor(opt, model=model, writer=w, every=1, run_dir=str(out))
    losses = []
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = runlab.total_loss(cfg, model, runlab.batch_for_step(cfg, step, data))
        w.add_scalar("train/loss", float(loss), step)  # the loss of update `step`, before it (runlab's convention)
        loss.backward()
        opt.step()
        losses.append(float(loss))
        mon.log_loss(step, losses[-1])
    mon.close()
    w.close()
    return runlab.detect_blowup(losses)


def test_scan_uses_the_monitor_tags(tmp_path):
    blowup = _train_with_monitor(tmp_path / "run")
    res = CliRunner().invoke(app, ["scan", str(tmp_path / "run"), "--format", "json"])
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["runs"]
    assert "monitor" in r["sources"] and r["grad_norm_tag"] is None
    assert r["verdict"] == "v_collapse" and r["blowup_step"] == blowup, r["findings"]
    ad101 = [f for f in r["findings"] if f["id"] == "AD101"]
    assert ad101 and ad101[0]["step"] < blowup


def test_check_gates_on_the_live_file(tmp_path):
    """`adamdiag-live.json` (written by the monitor during training) joins the run, so check gates on
    what the monitor saw: here a run stopped before its blowup (healthy so far) whose live file holds an
    error the events do not show (a NaN found in the optimizer state at the last logging step)."""
    _train_with_monitor(tmp_path / "run", steps=300)
    path = tmp_path / "run" / "adamdiag-live.json"
    live = json.loads(path.read_text())
    assert live["schema"] == "adamdiag.live/1"
    assert CliRunner().invoke(app, ["check", str(tmp_path / "run")]).exit_code == 0
    live["runs"][0]["findings"].append(
        {"id": "AD401", "severity": "error", "message": "non-finite values in exp_avg_sq", "step": 300, "tensor": "w"}
    )
    path.write_text(json.dumps(live))
    res = CliRunner().invoke(app, ["check", str(tmp_path / "run"), "--format", "json"])
    assert res.exit_code == 1, res.output
    (r,) = json.loads(res.stdout)["runs"]
    assert "live" in r["sources"]
    (f,) = [f for f in r["findings"] if f["id"] == "AD401"]
    assert f["evidence"]["source"] == "live"
    path.write_text("{not json")
    res = CliRunner().invoke(app, ["scan", str(tmp_path / "run"), "--format", "json"])
    assert res.exit_code == 0 and "unreadable live file" in res.stdout
