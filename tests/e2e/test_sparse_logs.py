"""A sparse log of a converging run that blows up: one point every 20 steps (Lightning logs every 50 by default,
HF Trainer every 500). On a loss that falls ~1.4x from one point to the next, the detector's ≥ 10-point trailing
window spans 200 steps and its median is the level of ~100 steps ago, and the first differences it took for noise
are the trend: the blowup's 10x off the current level read as a 3x blip — "healthy, high" on the lab's own
v-collapse run (tests/realruns.train_sh99, v collapses and the loss blows up at step 462) logged every 20 steps.
Now the level of a sparse log is the lower of the window's and the last ~100 steps' (signals._recent_points) and
its noise is measured around the trend (``rolling_mad(trend=rolling_trend(...))``).

Real runlab training, real SummaryWriter and checkpoints; `bench/relogged.py` measures the same on the whole
validation matrix re-logged at 20/50/100 steps per point.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from adamdiag.analysis.frames import series
from adamdiag.analysis.signals import detect_loss_events, detect_loss_events_ref
from adamdiag.cli import app
from adamdiag.io.events import read_run


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import runlab
    from realruns import sh99_config

    d = tmp_path_factory.mktemp("sparse") / "sh99_every20"
    runlab.train(dataclasses.replace(sh99_config(600), log_every=20), d)
    return d


def test_the_blowup_in_a_log_every_20_steps_is_found(sparse_run: Path) -> None:
    truth = json.loads((sparse_run / "truth.json").read_text())["summary"]
    assert truth["cause"] == "v_collapse" and truth["blowup_step"] == 462  # the run as the lab recorded it
    s = series(read_run(sparse_run).scalars, "train/loss")
    steps, values = s.index.to_numpy(), s.to_numpy(np.float64)
    ev, ref = detect_loss_events(steps, values), detect_loss_events_ref(steps, values)
    assert ev == ref
    # within two logged points after the true blowup (480 is 7.6x, 500 the 10x), and no earlier one
    assert ev.blowup_step == 500 and ev.pre_level is not None
    res = CliRunner().invoke(app, ["scan", str(sparse_run), "--format", "json"])
    run = json.loads(res.stdout)["runs"][0]
    assert res.exit_code == 0 and run["verdict"] == "v_collapse", run
    assert run["blowup_step"] == 500 and any(f["id"] == "AD001" and f["step"] == 500 for f in run["findings"])
