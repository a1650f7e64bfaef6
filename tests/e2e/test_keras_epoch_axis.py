"""Keras at its defaults (batch_size=32: 3 updates per epoch; TensorBoard's update_freq='epoch') logs
`epoch_loss` at step = epoch index, while its `.keras` checkpoints count optimizer iterations. scan put a blowup
at "step 125" (an epoch) beside checkpoints at iterations and said only one checkpoint preceded it. Keras 3 also
logs `evaluation_loss_vs_iterations` at each epoch's iteration count: the epoch points move there (AD604).

tests/fixtures/keras_epoch_axis/ was written by tools/runlab/make_keras_epoch_axis_fixture.py (model.fit,
tensorflow-cpu 2.21.0 / Keras 3); truth.json holds Keras' own per-epoch losses and each checkpoint's
iterations."""

from __future__ import annotations

import json
from pathlib import Path

from adamdiag.analysis.keras_logs import epoch_axis_to_iterations
from adamdiag.io.events import read_run
from adamdiag.pipeline.scan import load_checkpoint_summaries, scan_paths

RUN = Path(__file__).resolve().parents[1] / "fixtures" / "keras_epoch_axis"
TRUTH = json.loads((RUN / "truth.json").read_text())


def test_epoch_points_move_to_the_iteration_axis_of_the_checkpoints():
    rep = scan_paths([RUN / "logs"], checkpoints=RUN / "ckpt").runs[0]
    (f,) = [f for f in rep.findings if f.id == "AD604"]
    per = TRUTH["updates_per_epoch"]
    assert f.evidence["updates_per_epoch"] == per and "train/epoch_loss" in f.evidence["moved"]
    assert "checkpoints" in rep.sources
    # the curves a report draws are on the same axis (attach_series reads the log again)
    from adamdiag.pipeline.series import attach_series
    from adamdiag.results.report import Report

    attach_series(Report(runs=[rep]), checkpoints_dir=RUN / "ckpt")
    steps = rep.series["loss"]["step"]
    assert steps[0] == per and steps[-1] == per * len(TRUTH["epoch_loss"])


def test_each_epoch_loss_sits_at_its_last_iteration_beside_checkpoints_on_the_same_axis():
    events = read_run(RUN / "logs")
    moved, _ = epoch_axis_to_iterations(events.scalars)
    loss = moved[moved.tag == "train/epoch_loss"].sort_values("step")
    per = TRUTH["updates_per_epoch"]
    # epoch k's loss (Keras' own history) now at its last iteration, (k + 1) x updates per epoch
    assert loss.step.tolist() == [(k + 1) * per for k in range(len(TRUTH["epoch_loss"]))]
    assert [round(v, 5) for v in loss.value] == [round(v, 5) for v in TRUTH["epoch_loss"]]
    summaries, _ = load_checkpoint_summaries(RUN / "ckpt", trust=False, convention=None, warnings=[], non_adam=[])
    # the checkpoints count the same iterations: e03.keras after epoch 3 is iteration 9
    assert sorted(c.step for c in summaries) == sorted(TRUTH["checkpoint_iterations"].values())
    assert set(TRUTH["checkpoint_iterations"].values()) <= set(loss.step)


def test_without_checkpoints_the_epoch_axis_stays():
    rep = scan_paths([RUN / "logs"]).runs[0]
    assert "checkpoints" not in rep.sources and not [f for f in rep.findings if f.id == "AD604"]
