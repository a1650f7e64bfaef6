"""Keras runs logged by MLflow's own Keras callback (``mlflow.tensorflow.autolog``, ``mlflow.keras.MlflowCallback``),
read as Keras' TensorBoard callback writes the same values.

tests/fixtures/mlflow/keras was written by MLflow 3.17.2 + Keras 3.15.1 (tools/runlab/make_mlflow_keras_fixtures.py):
one seeded regression whose 17th iteration's batch loss jumps ~500x; truth.json holds what Keras handed the callbacks
(the epoch's running mean) and each batch's true loss.
"""

from __future__ import annotations

import gzip
import json
import math
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from adamdiag.cli import app

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "mlflow" / "keras"
TRUTH = json.loads((FIX / "truth.json").read_text())
runner = CliRunner()


def scan_json(*args: str) -> dict:
    res = runner.invoke(app, ["scan", *args, "--format", "json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def unpacked(tmp_path: Path, name: str) -> Path:
    """A copy of a SQLite-store fixture with its database unpacked (gzip only stores it) beside its mlruns/."""
    d = tmp_path / name
    shutil.copytree(FIX / name, d)
    with gzip.open(d / "mlflow.db.gz", "rb") as f_in, open(d / "mlflow.db", "wb") as f_out:
        shutil.copyfileobj(f_in, f_out)
    (d / "mlflow.db.gz").unlink()
    return d


def finding(run: dict, rule: str) -> list[dict]:
    return [f for f in run["findings"] if f["id"] == rule]


def test_per_batch_autolog_reads_as_keras_running_means_with_the_true_blowup():
    """File store, autolog per batch: one run (the TensorBoard log autolog copied into artifacts/ is per epoch and
    not a run of its own), ``batch_loss`` = what Keras handed the callback, rebuilt into the true batch losses."""
    from adamdiag.analysis.evidence import loss_series
    from adamdiag.io.events import read_run

    truth = TRUTH["filestore"]
    out = scan_json(str(FIX / "filestore"))
    (run,) = out["runs"]
    assert "artifacts" not in run["run"] and Path(run["run"], "meta.yaml").is_file()
    assert run["blowup_step"] == truth["blowup_step"] == 17
    (rebuilt,) = finding(run, "AD603")
    assert "every 29 batches (3 epochs)" in rebuilt["message"] and truth["batches_per_epoch"] == 29
    # the optimizer's own config, not torch's defaults: Keras' eps 1e-7
    assert "checkpoints" in run["sources"]  # autolog's latest_checkpoint.h5 (a Keras HDF5 model file)

    events = read_run(Path(run["run"]))
    s = events.scalars
    logged = s[s.tag == "batch_loss"].sort_values("step")
    want = {int(k): v for k, v in truth["running_mean"].items()}
    assert logged.step.tolist() == sorted(want)
    assert all(math.isclose(v, want[st], rel_tol=1e-7) for st, v in zip(logged.step, logged.value))
    assert sorted(s[s.tag == "validation/epoch_loss"].step) == [0, 1, 2]
    assert events.running_means == {"batch_loss": 3}  # one validation per epoch: 3 finished epochs

    steps, values = loss_series(s, "batch_loss", sorted(set(s.tag)), [], events.running_means)
    true = np.array([truth["batch_loss"][str(int(st))] for st in steps])
    # Keras' running mean weighs each batch by its size: the last batch of an epoch (26 samples of 922, not 32) is
    # rebuilt as if full — off by its share of the difference to the mean; every other batch is exact up to float32
    full = steps % truth["batches_per_epoch"] != 0
    assert np.allclose(values[full], true[full], rtol=2e-5)
    assert np.all(np.abs(values[~full] / true[~full] - 1) < 0.2)


def test_per_batch_autolog_in_the_sqlite_store_finds_its_checkpoint_in_its_artifacts(tmp_path):
    """SQLite store: the database run is the run (its artifacts' TensorBoard copy is not a second one) and its
    checkpoint is found in its artifacts folder — at the artifact_uri MLflow recorded, or, the store moved, where
    MLflow puts it by default beside the database (mlruns/<experiment>/<run id>/artifacts)."""
    from adamdiag.io.mlflow_log import artifacts_dir, sqlite_runs

    d = unpacked(tmp_path, "sqlite")
    con = sqlite3.connect(d / "mlflow.db")  # the store moved: the recorded artifact_uri is gone
    con.execute("update runs set artifact_uri = '/nonexistent/mlruns/1/x/artifacts'")
    con.commit()
    con.close()
    (run_path,) = sqlite_runs(d / "mlflow.db")
    art = artifacts_dir(run_path)
    assert art is not None and art.parent.parent.parent == d / "mlruns"  # not the path the writer recorded
    (run,) = scan_json(str(d))["runs"]
    assert run["run"] == str(run_path)
    assert run["blowup_step"] == 17 and "checkpoints" in run["sources"]
    assert "every 29 batches (3 epochs)" in finding(run, "AD603")[0]["message"]


def test_per_epoch_autolog_is_the_same_log_as_its_tensorboard_copy(tmp_path):
    """autolog's default (per epoch): the database run's ``loss`` is Keras' ``epoch_loss`` at the epoch index —
    the epochs of the TensorBoard log autolog copied into its artifacts, which is read instead (as a file-store run
    with that copy inside is): the training is diagnosed once."""
    from adamdiag.io.framework_logs import read_framework_log
    from adamdiag.io.mlflow_log import sqlite_runs

    d = unpacked(tmp_path, "epoch")
    (run_path,) = sqlite_runs(d / "mlflow.db")
    data = read_framework_log(run_path)
    assert data is not None and set(data.tags) == {"epoch_loss", "epoch_val_loss", "validation/epoch_loss"}
    assert not data.running_means
    res = runner.invoke(app, ["scan", str(d), "--format", "json"])
    assert res.exit_code == 0, res.output
    (run,) = json.loads(res.stdout)["runs"]
    assert "tensorboard_logs" in run["run"] and run["loss_tag"] == "train/epoch_loss"
    assert "checkpoints" in run["sources"]


def test_mlflow_keras_callback_without_validation_or_epoch_count():
    """mlflow.keras.MlflowCallback by hand: its params are ``optimizer_*``; no validation and no ``epochs`` param,
    so the epoch starts come from the drops of the running sum alone (said in the evidence)."""
    out = scan_json(str(FIX / "callback"))
    (run,) = out["runs"]
    assert run["blowup_step"] == TRUTH["callback"]["blowup_step"] == 17
    (rebuilt,) = finding(run, "AD603")
    assert "drops" in rebuilt["message"] and rebuilt["evidence"]["reconstructed"]
    assert any("epoch count not checked" in n for n in rebuilt["evidence"]["notes"])


@pytest.mark.parametrize("name", ["filestore", "callback"])
def test_keras_optimizer_config_gives_beta2_and_eps(name):
    """opt_* (mlflow.tensorflow) and optimizer_* (mlflow.keras) params: β2/eps of the run's own Keras Adam."""
    from adamdiag.io.events import read_run, writer_adam_hyperparameters

    (meta,) = (FIX / name).glob("mlruns/*/*/meta.yaml")
    hyper, source = writer_adam_hyperparameters(read_run(meta.parent))
    assert hyper == {"beta2": 0.999, "eps": 1e-7} and "Keras optimizer's config" in source


def test_keras_callback_rows_epoch_and_batch_series_by_initial_epoch():
    """A resumed fit (initial_epoch=2): its epoch series starts at 2, a batch series at an iteration count."""
    from adamdiag.io.framework_logs import LogRows
    from adamdiag.io.mlflow_log import keras_callback_rows

    ema = {"opt_use_ema": False, "opt_ema_momentum": 0.99, "opt_ema_overwrite_frequency": None}
    params = {"opt_name": "adam", "opt_learning_rate": 0.01, **ema, "initial_epoch": 2, "epochs": 4}
    for per_batch in (False, True):
        rows = LogRows()
        for e in (2, 3):
            if per_batch:
                for it in range(1, 11):
                    rows.add("loss", e * 10 + it, 1.0 / it)
            else:
                rows.add("loss", e, 0.5)
            rows.add("validation_loss", 0, 0.7)
        got = keras_callback_rows(rows, params, finished=True)
        assert got is not None
        tags = [got.rows.tags[c] for c in got.rows.codes]
        assert ("batch_loss" in tags) == per_batch and ("epoch_loss" in tags) != per_batch
        val = [s for t, s in zip(tags, got.rows.steps) if t == "validation/epoch_loss"]
        assert val == [2, 3]
        assert got.running_means == ({"batch_loss": 2} if per_batch else {})
    assert keras_callback_rows(LogRows(), {"lr": 0.1}, finished=True) is None
    # a PyTorch run whose flattened config happens to hold optimizer_name/learning_rate/decay: not Keras
    torch_like = {"optimizer_name": "adamw", "optimizer_learning_rate": 1e-3, "optimizer_decay": 0.1}
    rows = LogRows()
    rows.add("loss", 1, 2.0)
    assert keras_callback_rows(rows, torch_like, finished=True) is None


def test_a_declared_keras_running_mean_brings_keras_adam_defaults():
    """With no checkpoint and no optimizer config to read β2/eps from, a run its reader knows Keras wrote (a declared
    running mean, no epoch_* tags) is measured against Keras' eps 1e-7, as a Keras TensorBoard log is."""
    from adamdiag.analysis.evidence import RunInputs, gather
    from adamdiag.io.events import read_run

    (meta,) = (FIX / "callback").glob("mlruns/*/*/meta.yaml")
    events = read_run(meta.parent)
    ev = gather(RunInputs("k", scalars=events.scalars, running_means=events.running_means), ["batch_loss"], None)
    assert (ev.hyper_defaults, ev.eps) == ("Keras", 1e-7)
    ev = gather(RunInputs("k", scalars=events.scalars), ["batch_loss"], None)
    assert (ev.hyper_defaults, ev.eps) == ("torch", 1e-8)  # the same rows, undeclared: not known to be Keras
