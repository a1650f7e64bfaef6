"""Log trees as frameworks write them with their default settings (session 12's framework probe,
``tools/fwprobe/``).

``tests/fixtures/lightning_epoch/`` is a real Lightning 2.6.6 run (``tools/fwprobe/make_lightning_fixture.py``):
full-batch training, one update per epoch, ``self.log("train_loss", loss, on_step=True, on_epoch=True)`` with
the default ``log_every_n_steps=50`` — ``train_loss_step`` holds two points (steps 49 and 99), ``train_loss_epoch``
every step. The loss diverges near step 80 (an lr warm-up to 1.0). scan used to take the sparse step curve (the
shorter name) and found no blowup ("too few points before the rise"); the epoch curve is the loss here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.io.events import read_run

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "lightning_epoch"
RUN = FIX / "lightning_logs" / "version_0"


def _truth() -> np.ndarray:
    return np.asarray(json.loads((FIX / "truth.json").read_text())["loss_before_update"])


def test_fixture_is_what_lightning_logged() -> None:
    """The reader's epoch curve is the loss of every update (Lightning logs update t's loss at step t-1),
    bit for bit as float32; the step curve has the 2 points log_every_n_steps=50 leaves."""
    s = read_run(RUN).scalars
    ep = s[s["tag"] == "train_loss_epoch"].sort_values("step")
    assert ep["step"].tolist() == list(range(len(_truth())))
    np.testing.assert_array_equal(ep["value"].to_numpy(np.float64), _truth().astype(np.float32).astype(np.float64))
    assert sorted(s.loc[s["tag"] == "train_loss_step", "step"]) == [49, 99]


def test_scan_reads_the_denser_lightning_curve() -> None:
    res = CliRunner().invoke(app, ["scan", str(FIX), "--format", "json"])
    assert res.exit_code == 0, res.output
    (run,) = json.loads(res.stdout)["runs"]
    assert run["loss_tag"] == "train_loss_epoch"
    # the true blowup on Lightning's axis lies between the start of the sustained rise (every later loss above
    # 2x the lowest before it: step 69) and the first loss a decade above that lowest (step 84)
    truth = _truth()
    low = np.minimum.accumulate(truth)
    rise = next(i for i in range(1, len(truth)) if (truth[i:] > 2 * low[i:]).all())
    decade = next(i for i in range(1, len(truth)) if truth[i] > 10 * low[i])
    assert run["blowup_step"] is not None and rise <= run["blowup_step"] <= decade, (run["blowup_step"], rise, decade)


def test_explicit_step_tag_is_kept() -> None:
    """The user's --loss-tag wins over the auto-pick (and then there is too little of it to call a blowup)."""
    res = CliRunner().invoke(app, ["scan", str(FIX), "--format", "json", "--loss-tag", "train_loss_step"])
    assert res.exit_code == 0, res.output
    (run,) = json.loads(res.stdout)["runs"]
    assert run["loss_tag"] == "train_loss_step" and run["blowup_step"] is None


RESUME = Path(__file__).resolve().parents[1] / "fixtures" / "lightning_resume"


def test_lightning_resume_is_one_training() -> None:
    """``tests/fixtures/lightning_resume/`` (``tools/fwprobe/make_lightning_resume_fixture.py``): a fit stopped at
    step 60 and resumed from its checkpoint logs into ``version_1``, whose curves start at step 60 but which also
    holds Lightning's ``hp_metric`` placeholder at step 0. The two folders are one training resumed, so the
    resumed run is lent the checkpoint of ``version_0`` (scan used to take ``version_1`` for a fresh start)."""
    from adamdiag.pipeline.scan import resumed_chain, scan_paths, step_span

    v0, v1 = (read_run(RESUME / "lightning_logs" / f"version_{i}") for i in (0, 1))
    s1 = v1.scalars
    assert s1.loc[s1["tag"] == "hp_metric", "step"].tolist() == [0]
    assert step_span(v1)[0] == 60 and resumed_chain([step_span(v0), step_span(v1)])
    rep = scan_paths([RESUME])
    runs = {Path(r.run).name: r for r in rep.runs}
    assert "checkpoints" in runs["version_1"].sources
    assert any(f.id == "AD901" and "beside the run's logs" in f.message for f in runs["version_1"].findings)
