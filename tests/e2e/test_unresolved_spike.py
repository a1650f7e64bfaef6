"""A recovered spike the log cannot tell from a blowup. A blowup is a decade above the level that holds for 10 steps;
a log every 100 steps shows one point of it. On the validation matrix re-logged every 100 steps, v-collapse blowups
that held ~40 steps and were over by the next point read `healthy`, high. Now a spike ≥ 10x at a point whose next
10 steps are not logged leaves `healthy` at medium, and its AD002 says why; logged every step, the same spike is seen
to be one step and the bill stays high.

Real SummaryWriter files; a gradient norm is logged, so the verdict has mechanism data (else it is low anyway). A
decade point later in a sparse log is a blowup already (its 10-step persistence window holds the point alone); this is
the spike a short or early stretch of a sparse log leaves: fewer than 5 points before it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from adamdiag.cli import app

SPIKE = 500  # the 5th point of the log every 100 steps: 4 points before it, too few for a blowup's level


def _write(d: Path, every: int) -> None:
    from torch.utils.tensorboard import SummaryWriter

    rng = np.random.default_rng(0)
    w = SummaryWriter(str(d))
    for step in range(every, 3001, every):
        loss = 0.05 * (step / 100.0) ** -0.3 * float(np.exp(0.1 * rng.standard_normal()))
        if step == SPIKE:
            loss *= 200.0
        w.add_scalar("train/loss", loss, step)
        w.add_scalar("train/grad_norm", 0.3 * float(np.exp(0.1 * rng.standard_normal())), step)
    w.close()


def _scan(d: Path) -> dict:
    res = CliRunner().invoke(app, ["scan", str(d), "--format", "json"])
    assert res.exit_code == 0, res.output
    (run,) = json.loads(res.stdout)["runs"]
    return run


def test_a_sparse_decade_spike_is_no_sure_healthy(tmp_path: Path) -> None:
    _write(tmp_path / "every100", 100)
    run = _scan(tmp_path / "every100")
    assert (run["verdict"], run["confidence"]) == ("healthy", "medium")
    (f,) = [f for f in run["findings"] if f["id"] == "AD002"]
    assert f["step"] == SPIKE and "the next 99 steps are not logged" in f["message"]


def test_the_same_spike_logged_every_step_is_seen_to_be_one_step(tmp_path: Path) -> None:
    _write(tmp_path / "every1", 1)
    run = _scan(tmp_path / "every1")
    assert (run["verdict"], run["confidence"]) == ("healthy", "high")
    (f,) = [f for f in run["findings"] if f["id"] == "AD002"]
    assert f["step"] == SPIKE and "not logged" not in f["message"]


def _write_fast_fall(d: Path) -> None:
    """A loss falling 8x per point (the lab's shallow fits logged every 100 steps), 15x above the point before at the
    spike — 2x above the median of the three before it — and back below it at the next point."""
    from torch.utils.tensorboard import SummaryWriter

    rng = np.random.default_rng(0)
    w = SummaryWriter(str(d))
    for k, step in enumerate(range(100, 3001, 100)):
        loss = 1e-2 * 8.0 ** -min(k, 4) * float(np.exp(0.05 * rng.standard_normal()))
        if step == SPIKE:
            loss = 15.0 * 1e-2 * 8.0**-3
        w.add_scalar("train/loss", loss, step)
        w.add_scalar("train/grad_norm", 0.3 * float(np.exp(0.1 * rng.standard_normal())), step)
    w.close()


def test_a_spike_off_a_fast_falling_sparse_loss_is_no_sure_healthy(tmp_path: Path) -> None:
    """On a sparse log of a fast-falling loss the level is where the fall has got to (the point before), not the
    median of the last three (a point behind, 8x higher): the 15x point was a 2x blip, no spike at all, `healthy`
    high."""
    _write_fast_fall(tmp_path / "fall")
    run = _scan(tmp_path / "fall")
    assert (run["verdict"], run["confidence"]) == ("healthy", "medium")
    (f,) = [f for f in run["findings"] if f["id"] == "AD002"]
    assert f["step"] == SPIKE and "the next 99 steps are not logged" in f["message"]
