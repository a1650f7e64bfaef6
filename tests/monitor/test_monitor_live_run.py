"""A monitored run that is still being written, as `scan`/`check` meet it mid-training (issue 15): the
monitor's tags go to the user's own SummaryWriter (all tags of a logging step in one event), the live
file sits in the run directory, and the event file ends in a record cut short."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from monitor_loops import mlp, regression_data, train
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.monitor import LIVE_FILE, AdamMonitor


def _train_monitored(run: Path, loss_writer: Any, monitor_writer: Any) -> None:
    """200 real Adam steps on a small regression MLP with the monitor (every=10, its tags in
    ``monitor_writer``, its live file in ``run``) and the loss written to ``loss_writer``."""
    model = mlp(seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    mon = AdamMonitor(opt, model=model, writer=monitor_writer, every=10, run_dir=run)
    x, y = regression_data(seed=3, n=256)
    train(model, opt, 200, data=(x, y), batch=32, after_step=lambda s, v: loss_writer.add_scalar("train/loss", v, s))
    mon.close()


def test_check_on_a_monitored_run_in_progress(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    w = SummaryWriter(str(run))
    _train_monitored(run, w, w)
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


def test_a_second_live_event_file_cut_short_is_in_progress_too(tmp_path: Path) -> None:
    """The monitor's tags in an event file of its own beside the run's (a second SummaryWriter, as
    bench/monitor_validation.py writes them), both caught mid-write: each file's cut-short last record
    is "in progress" (AD902 info), not damage (AD902 warning) — both writers were still writing."""
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    w = SummaryWriter(str(run))
    wm = SummaryWriter(str(run), filename_suffix=".adamdiag-monitor")
    _train_monitored(run, w, wm)
    w.close()
    wm.close()
    live = tmp_path / "live"
    live.mkdir()
    files = sorted(run.glob("events.out.tfevents.*"))
    assert len(files) == 2
    for ev in files:
        data = ev.read_bytes()
        (live / ev.name).write_bytes(data[: len(data) - 9])
    res = CliRunner().invoke(app, ["check", str(live), "--format", "json"])
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["runs"]
    ad902 = [f for f in r["findings"] if f["id"] == "AD902"]
    assert len(ad902) == 2 and all(f["severity"] == "info" and "in progress" in f["message"] for f in ad902), ad902


def test_restart_from_a_checkpoint_goes_on_from_the_live_file(tmp_path: Path) -> None:
    """A run restarted from a checkpoint (a new process: new model, optimizer and AdamMonitor on the same
    run directory) goes on from the live file the monitor before the restart wrote: its findings up to
    the checkpoint's step (not those of the abandoned steps after it) and each trajectory's peak v̂. The
    sample_logs/vcollapse recipe: v collapses deep at 250 (every=10); the checkpoint is at 180, the crash at
    200. Without the peak the new monitor never calls the collapse deep: v̂ was already far down at 180."""
    from monitor_loops import runlab

    lab = runlab()
    cfg_path = Path(__file__).resolve().parents[2] / "sample_logs" / "vcollapse" / "config.json"
    cfg = lab.RunConfig.from_json(json.loads(cfg_path.read_text())["config"])
    data = lab.build_data(cfg)
    run = tmp_path / "run"

    def steps(model: torch.nn.Module, opt: torch.optim.Optimizer, first: int, last: int) -> None:
        for step in range(first, last + 1):
            opt.zero_grad(set_to_none=True)
            lab.total_loss(cfg, model, lab.batch_for_step(cfg, step, data)).backward()
            opt.step()
            if step == 180:
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "ck.pt")

    model = lab.build_model(cfg)
    opt = lab.build_optimizer(cfg, model)
    mon = AdamMonitor(opt, model=model, every=10, run_dir=run)
    steps(model, opt, 1, 200)
    mon.close()  # the crash
    before = list(mon.findings)
    peak = json.loads((run / LIVE_FILE).read_text())["runs"][0]["monitor_state"]["peaks"]["global"]
    assert peak[0] < 10  # v̂ peaks in the first steps
    assert any(f.step is not None and f.step > 180 for f in before)  # the abandoned steps said something
    assert not [f for f in before if f.id == "AD101" and f.tensor is None and f.severity == "warning"]

    model = lab.build_model(cfg)
    opt = lab.build_optimizer(cfg, model)
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    mon2 = AdamMonitor(opt, model=model, every=10, run_dir=run)
    steps(model, opt, 181, 300)
    mon2.close()
    carried = [f for f in mon2.findings if f.step is not None and f.step <= 180]
    assert carried == [f for f in before if f.step is not None and f.step <= 180] and carried
    warn = [f for f in mon2.findings if f.id == "AD101" and f.tensor is None and f.severity == "warning"]
    assert warn and 180 < warn[0].step <= 300 and mon2.warning_step == warn[0].step
    live = json.loads((run / LIVE_FILE).read_text())["runs"][0]
    assert live["step"] == 300 and live["warning_step"] == warn[0].step
    assert live["monitor_state"]["peaks"]["global"] == peak  # the peak went on


def test_restart_resumes_from_any_restored_optimizer(tmp_path: Path) -> None:
    """Two optimizers (body and head); after the restart only the body's comes from the checkpoint — the
    head's is new (step 1), as when a user re-creates it. The live file is still read, at the body's first
    step: its trajectory's peak v̂ (from the first steps, before the restart) goes on; a new monitor
    that waited for the first optimizer to be a restored one would start the peak over at a fallen v̂."""
    x, y = regression_data(seed=5, n=64)

    def build() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.Optimizer]:
        model = mlp(seed=5)
        return model, torch.optim.Adam(model[2].parameters(), lr=1e-2), torch.optim.Adam(model[0].parameters(), lr=1e-2)

    def steps(model: torch.nn.Module, opts: list[torch.optim.Optimizer], n: int) -> None:
        for _ in range(n):
            for o in opts:
                o.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(model(x), y).backward()
            for o in opts:
                o.step()

    run = tmp_path / "run"
    model, head, body = build()
    mon = AdamMonitor([head, body], model=model, every=10, run_dir=run)
    steps(model, [head, body], 100)
    ck = {"model": model.state_dict(), "body": body.state_dict()}
    mon.close()
    peaks = json.loads((run / LIVE_FILE).read_text())["runs"][0]["monitor_state"]["peaks"]
    assert peaks["1/global"][0] <= 30  # the body's v̂ peaked in the first steps

    model, head, body = build()
    model.load_state_dict(ck["model"])
    body.load_state_dict(ck["body"])  # the head's optimizer starts anew
    mon2 = AdamMonitor([head, body], model=model, every=10, run_dir=run)
    steps(model, [head, body], 20)
    mon2.close()
    after = json.loads((run / LIVE_FILE).read_text())["runs"][0]["monitor_state"]["peaks"]
    assert after["1/global"] == peaks["1/global"]  # (without the live file: a step after 100)
