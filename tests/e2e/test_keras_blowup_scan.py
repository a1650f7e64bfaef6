"""A blown-up Keras 3 run, scanned without TensorFlow (issue 14 acceptance: Keras logs give no
epoch-boundary spikes and the blown-up run is diagnosed with the right blowup step).

tests/fixtures/keras_blowup/ was written by tools/runlab/keras_blowup.py: ``model.fit`` with Keras'
``TensorBoard`` callback at ``update_freq=1`` and ``10`` (8 epochs of 100 batches), ``ModelCheckpoint``
``.keras`` files every 200 batches; the batch loss jumps ~100x at step 471 (late in epoch 5) and
stays high. ``truth.json`` holds the true per-batch losses and that step. Keras logs ``batch_loss`` as
the running mean since the epoch start; read raw (the control below) the blowup shows as a
recovered bump and the epoch starts as spikes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from adamdiag.analysis.keras_logs import reconstruct_running_mean
from adamdiag.cli import app
from adamdiag.io.events import read_run

RUN = Path(__file__).resolve().parents[1] / "fixtures" / "keras_blowup"
TRUTH = json.loads((RUN / "truth.json").read_text())
SPE = TRUTH["steps_per_epoch"]


def _scan(*args: str) -> dict:
    res = CliRunner().invoke(app, ["scan", *args, "--format", "json"])
    assert res.exit_code in (0, 1), res.output  # 1: the run has error findings (it blew up)
    (run,) = json.loads(res.stdout)["runs"]
    return run


def _logged_steps_of_epoch_starts(freq: int) -> set[int]:
    """The logged steps whose value covers an epoch's first batch (Keras' step = the update's number)."""
    return {e * SPE + freq for e in range(1, TRUTH["epochs"])}


@pytest.mark.parametrize("freq", [1, 10])
def test_blowup_step_and_no_epoch_boundary_spikes(freq: int):
    run = _scan(str(RUN / f"logs_f{freq}"))
    ids = [f["id"] for f in run["findings"]]
    assert "AD603" in ids and run["loss_tag"].endswith("batch_loss")
    true = TRUTH["blowup_step"]
    # within the logging interval: the first logged step whose value covers batch `true`
    assert true <= run["blowup_step"] < true + freq
    assert run["blowup_step"] == -(-true // freq) * freq
    spikes = {f["step"] for f in run["findings"] if f["id"] == "AD002"}
    assert not spikes & _logged_steps_of_epoch_starts(freq)


@pytest.mark.parametrize("freq", [1, 10])
def test_reconstructed_series_equals_the_true_losses(freq: int):
    s = read_run(RUN / f"logs_f{freq}" / "train").scalars
    b = s[s.tag == "batch_loss"].sort_values("step")
    epochs = s[s.tag == "epoch_loss"].sort_values("step").value.to_numpy()
    r = reconstruct_running_mean(b.step.to_numpy().astype(np.int64), b.value.to_numpy(), epoch_values=epochs)
    assert r.reconstructed, r.reason
    tr = np.asarray(TRUTH["true_batch_loss"])
    truth = np.array([tr[e - k : e].mean() for e, k in zip(r.steps, r.span)])
    # float32 logging: within the rounding bound, plus the float32 forward pass of the truth itself
    assert np.all(np.abs(r.values - truth) <= r.bound + 1e-4 * truth)


def test_raw_running_mean_shows_the_symptoms(tmp_path: Path):
    """The control: the very values Keras logged, written under a plain tag (no ``epoch_loss`` beside
    it, so nothing is reconstructed), misread as the issue reported — spikes at epoch starts and the
    blowup at the wrong step or not at all. Without AD603 the test above would fail."""
    from torch.utils.tensorboard import SummaryWriter

    s = read_run(RUN / "logs_f1" / "train").scalars
    b = s[s.tag == "batch_loss"].sort_values("step")
    w = SummaryWriter(str(tmp_path / "raw"))
    for step, value in zip(b.step.to_numpy(), b.value.to_numpy()):
        w.add_scalar("train/loss", float(value), int(step))
    w.close()
    run = _scan(str(tmp_path / "raw"))
    assert "AD603" not in [f["id"] for f in run["findings"]]
    spikes = {f["step"] for f in run["findings"] if f["id"] == "AD002"}
    assert spikes & _logged_steps_of_epoch_starts(1)
    assert run["blowup_step"] != TRUTH["blowup_step"]


def test_with_its_checkpoints_the_keras_run_is_diagnosed():
    run = _scan(str(RUN / "logs_f1"), "--checkpoints", str(RUN / "ckpt"))
    assert run["blowup_step"] == TRUTH["blowup_step"]
    assert "checkpoints" in run["sources"] and run["verdict"] not in ("healthy", "inconclusive")
    # the replay it proposes starts from the last checkpoint before the blowup (epoch04 = step 400)
    assert "epoch04.keras" in json.dumps(run)


def test_keras_run_without_checkpoints_assumes_keras_adam_defaults():
    """Keras' Adam defaults to eps 1e-7, not torch's 1e-8: a Keras-written run with no checkpoint is
    measured against (and told) Keras' value; a TF1 simple_value run keeps the torch/TF1 1e-8."""
    from adamdiag.analysis.evidence import RunInputs, gather

    keras = read_run(RUN / "logs_f10" / "train").scalars
    ev = gather(RunInputs("keras", scalars=keras), ["batch_loss"], None)
    assert (ev.hyper_assumed, ev.hyper_defaults, ev.eps) == (True, "Keras", 1e-7)
    tf1 = read_run(RUN.parent / "events_tf" / "tf1").scalars
    ev1 = gather(RunInputs("tf1", scalars=tf1), ["loss"], "grad_norm")
    assert (ev1.hyper_defaults, ev1.eps) == ("torch", 1e-8)
