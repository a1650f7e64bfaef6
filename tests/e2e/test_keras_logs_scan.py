"""scan on real Keras 3 TensorBoard logs (written by tools/runlab/make_tf_fixtures.py with model.fit and
update_freq=1): `batch_loss` is a per-epoch running mean, rebuilt per batch before detection (AD603), so
the one bad batch (step 28, targets x10) is a recovered spike, not a blowup, and no epoch boundary
shows as a spike. The log has no gradient norm: that spike — one point 500x both neighbours, back at its
level at the next batch — is the batch's own loss, ``bad_batch`` (low) with AD301 at the step."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from adamdiag.cli import app

LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "tf" / "logs_f1"
EXPECTED = json.loads((LOGS.parent / "expected.json").read_text())["logs"]["logs_f1"]


def test_keras_running_mean_is_rebuilt_before_detection():
    res = CliRunner().invoke(app, ["scan", str(LOGS), "--format", "json"])
    assert res.exit_code == 0, res.output
    (run,) = json.loads(res.stdout)["runs"]
    ids = [f["id"] for f in run["findings"]]
    assert "AD603" in ids and "AD001" not in ids, run["findings"]
    spikes = [f["step"] for f in run["findings"] if f["id"] == "AD002"]
    bad = EXPECTED["bad_batch"] + 1  # 0-based batch index → Keras' 1-based global step
    assert spikes == [bad]
    epoch_starts = {k * EXPECTED["batches_per_epoch"] + 1 for k in range(1, EXPECTED["epochs"])}
    assert not epoch_starts & set(spikes)
    assert (run["verdict"], run["confidence"]) == ("bad_batch", "low") and run["loss_tag"].endswith("batch_loss")
    assert [f["step"] for f in run["findings"] if f["id"] == "AD301"] == [bad]
