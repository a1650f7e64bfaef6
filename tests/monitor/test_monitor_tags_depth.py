"""scan on the monitor's tags measures a collapse as deep as the monitor does: v̂ peaks in the first few
steps, before the logging grid (every=10), so the monitor writes its global tags at those steps too. Without
them scan's peak was the one at step 10, and the sample_logs/vcollapse run — √v̂ ~15x down, deep by the
log-only scan and by the monitor — read as a shallow stale v (confidence medium)."""

from __future__ import annotations

import json
from pathlib import Path

from monitor_loops import vcollapse_run
from typer.testing import CliRunner

from adamdiag.cli import app


def test_scan_on_monitor_tags_sees_the_early_peak(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    w = SummaryWriter(str(run))
    mon, losses, _, lab = vcollapse_run(every=10, writer=w)
    for step, v in enumerate(losses, 1):  # the loss of update `step` (no gradient norm: the tags are the v data)
        w.add_scalar("train/loss", v, step)
    mon.close()
    w.close()

    res = CliRunner().invoke(app, ["export", str(run), "-o", "-"])
    steps = sorted(
        {int(line.split(",")[2]) for line in res.stdout.splitlines() if ",adamdiag/global/vhat_mean," in line}
    )
    assert steps[:10] == list(range(1, 11)) and steps[10:12] == [20, 30]
    assert not [
        ln
        for ln in res.stdout.splitlines()
        if ",adamdiag/" in ln and "/global/" not in ln and int(ln.split(",")[2]) < 10
    ]

    res = CliRunner().invoke(app, ["scan", str(run), "--format", "json"])
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["runs"]
    assert "monitor" in r["sources"] and r["grad_norm_tag"] is None
    assert r["blowup_step"] == lab.detect_blowup(losses)
    assert (r["verdict"], r["confidence"]) == ("v_collapse", "high"), r["findings"]
    (g,) = [f for f in r["findings"] if f["id"] == "AD101" and f["severity"] == "error" and f["tensor"] is None]
    assert "x down" in g["message"], g["message"]
