"""Writes tests/fixtures/mlflow/keras: Keras 3 ``model.fit`` runs logged by MLflow's own Keras callback, read by
adamdiag.io.mlflow_log in tests/e2e/test_mlflow_keras.py (adamdiag never imports mlflow or Keras).

    python -m venv v && v/bin/pip install tensorflow-cpu==2.21.0 mlflow-skinny sqlalchemy alembic pandas
    v/bin/python tools/runlab/make_mlflow_keras_fixtures.py [--out tests/fixtures/mlflow/keras]
    # made with mlflow(-skinny) 3.17.2, keras 3.15.1, tensorflow-cpu 2.21.0

The training: a small regression (8 inputs, Dense(32, tanh), Dense(1)), Adam(1e-2), batch 32, 3 epochs,
``validation_split=0.1`` (29 batches per epoch), no shuffling; the targets of samples 512-1023 are moved by +50,
so the 17th batch of every epoch (global iteration 17 first) jumps ~500x: the blowup is at iteration 17.

- ``filestore/mlruns`` — ``mlflow.tensorflow.autolog(log_every_epoch=False, log_every_n_steps=1)`` on the file
  store: ``loss`` per batch at ``optimizer.iterations`` (Keras' running mean since the epoch's start), one
  ``validation_loss`` per epoch at step 0, ``opt_*`` params; its artifacts: the TensorBoard log autolog adds (per
  epoch) and ``checkpoints/latest_checkpoint.h5`` (a Keras HDF5 model file, optimizer included);
- ``sqlite/mlflow.db.gz`` + ``sqlite/mlruns/`` — the same on the SQLite store (MLflow 3's default; the database
  gzipped, its artifacts where MLflow puts them: ``mlruns/<experiment>/<run id>/artifacts``);
- ``epoch/mlflow.db.gz`` + ``epoch/mlruns/`` — autolog's default (``log_every_epoch=True``) on the SQLite store:
  ``loss`` once per epoch at the epoch index, the same values as the ``train/epoch_loss`` of the TensorBoard log
  autolog copies into the artifacts;
- ``callback/mlruns`` — ``mlflow.keras.MlflowCallback(log_every_epoch=False, log_every_n_steps=1)`` added by hand
  (no autolog: no ``epochs`` param, no artifacts) and no validation data: the log does not say how many epochs
  there were.

``truth.json``: per run, Keras' running mean as it handed it to callbacks (``logs["loss"]`` at each iteration)
and each batch's true loss (the batch's mean squared error at the weights it was computed with, evaluated in
``on_train_batch_begin``, float64 from the model's float32 prediction), the batches per epoch and the blowup step.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BATCH, EPOCHS, SEED = 32, 3, 0


def data() -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(1024, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 1))).astype("float32")
    y[512:] += 50.0
    return x, y


def train(callbacks: list[Any], validation: bool) -> dict[str, Any]:
    """One seeded fit; returns what Keras handed the callbacks and the true per-batch losses."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(SEED)
    x, y = data()
    n_train = int(len(x) * 0.9) if validation else len(x)  # validation_split takes the last 10%
    xt, yt = x[:n_train], y[:n_train]
    per_epoch = -(-n_train // BATCH)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="tanh"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    truth: dict[str, Any] = {"running_mean": {}, "batch_loss": {}, "batches_per_epoch": per_epoch}

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            it = int(self.model.optimizer.iterations.numpy()) + 1  # the iteration this batch's update makes
            sl = slice(batch * BATCH, (batch + 1) * BATCH)
            pred = np.asarray(self.model(xt[sl], training=False), np.float64)
            truth["batch_loss"][it] = float(np.mean((pred - yt[sl].astype(np.float64)) ** 2))

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            truth["running_mean"][int(self.model.optimizer.iterations.numpy())] = float(logs["loss"])

    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        validation_split=0.1 if validation else 0.0,
        callbacks=[Record(), *callbacks],
    )
    losses = truth["batch_loss"]
    base = [losses[s] for s in range(1, 17)]
    truth["blowup_step"] = next(s for s in sorted(losses) if losses[s] > 10 * max(base))
    return truth


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "mlflow" / "keras")
    a = p.parse_args(argv)
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 refuses the file store without it
    import keras
    import mlflow
    import mlflow.keras
    import mlflow.tensorflow

    out = a.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cwd = Path.cwd()
    truth: dict[str, Any] = {"made_with": {"mlflow": mlflow.__version__, "keras": keras.__version__}}
    try:
        for name, uri, per_batch in (
            ("filestore", "file://{d}/mlruns", True),
            ("sqlite", "sqlite:///{d}/mlflow.db", True),
            ("epoch", "sqlite:///{d}/mlflow.db", False),
        ):
            d = out / name
            d.mkdir()
            os.chdir(d)  # the SQLite store's artifacts go to ./mlruns
            mlflow.set_tracking_uri(uri.format(d=d))
            mlflow.set_experiment("keras")
            how = {"log_every_epoch": False, "log_every_n_steps": 1} if per_batch else {"log_every_epoch": True}
            mlflow.tensorflow.autolog(log_models=False, silent=True, **how)
            truth[name] = train([], validation=True)
            mlflow.tensorflow.autolog(disable=True)
        d = out / "callback"
        d.mkdir()
        os.chdir(d)
        mlflow.set_tracking_uri(f"file://{d}/mlruns")
        mlflow.set_experiment("keras")
        with mlflow.start_run():
            truth["callback"] = train(
                [mlflow.keras.MlflowCallback(log_every_epoch=False, log_every_n_steps=1)], validation=False
            )
    finally:
        os.chdir(cwd)
    for db in (out / "sqlite" / "mlflow.db", out / "epoch" / "mlflow.db"):
        with open(db, "rb") as f_in, gzip.open(str(db) + ".gz", "wb", compresslevel=9) as f_out:
            shutil.copyfileobj(f_in, f_out)
        db.unlink()
    for junk in list(out.rglob("model_summary.txt")) + list(out.rglob("requirements.txt")):
        junk.unlink()
    (out / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e3:.0f} kB; mlflow {mlflow.__version__}, keras {keras.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
