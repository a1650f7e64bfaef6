"""Writes tests/fixtures/keras_epoch_axis/: a Keras 3 ``model.fit`` at Keras' defaults — ``batch_size=32`` on 96
samples (3 updates per epoch), ``TensorBoard(log_dir)`` (``update_freq='epoch'``: ``epoch_loss`` at step = epoch
index), validation data (Keras 3 then also logs ``evaluation_loss_vs_iterations`` at the iteration count),
``ModelCheckpoint('ckpt/e{epoch:02d}.keras', save_freq=9)`` (every 9 iterations = every 3 epochs). ``truth.json``
holds the per-epoch losses Keras returned (``history``) and each checkpoint's optimizer iterations.

    /tmp/tfvenv/bin/python tools/runlab/make_keras_epoch_axis_fixture.py   # tensorflow-cpu 2.21.0, Keras 3
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "keras_epoch_axis"
EPOCHS, SAMPLES, BATCH = 12, 96, 32


def main() -> None:
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, 4)).astype("float32")
    y = (x @ rng.normal(size=(4, 1))).astype("float32")
    shutil.rmtree(OUT, ignore_errors=True)
    (OUT / "ckpt").mkdir(parents=True)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    hist = model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=EPOCHS,
        validation_data=(x[:32], y[:32]),
        shuffle=False,
        verbose=0,
        callbacks=[
            keras.callbacks.TensorBoard(str(OUT / "logs")),
            keras.callbacks.ModelCheckpoint(str(OUT / "ckpt" / "e{epoch:02d}.keras"), save_freq=9),
        ],
    )
    ckpts = {}
    for p in sorted((OUT / "ckpt").glob("*.keras")):
        m = keras.saving.load_model(p)
        ckpts[p.name] = int(m.optimizer.iterations.numpy())
    truth = {
        "made_with": {"keras": keras.__version__},
        "updates_per_epoch": SAMPLES // BATCH,
        "epoch_loss": [float(v) for v in hist.history["loss"]],
        "checkpoint_iterations": ckpts,
    }
    (OUT / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")


if __name__ == "__main__":
    main()
