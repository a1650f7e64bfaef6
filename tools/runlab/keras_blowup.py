"""A Keras 3 ``model.fit`` run that blows up at a known step, logged the way Keras users log: the
``TensorBoard`` callback (``update_freq=1`` and ``update_freq=10``) and ``ModelCheckpoint`` ``.keras``
files — the generator of ``tests/fixtures/keras_blowup/`` (issue 14).

The model is a linear regression (``Dense(1)`` on 40 features) trained with ``keras.optimizers.Adam``
(lr 0.02, β1 0.9, β2 0.9, Keras' default eps 1e-7), 8 epochs of 100 batches. The last 32 features go
quiet (scaled by 1e-4) for updates ``QUIET_FROM+1 … QUIET_TO``: their gradients shrink by 1e-4, √v
follows them down within 1/(1-β2) = 10 steps, and Adam — which divides by √v — keeps taking
lr-sized steps on what is now noise, so the quiet features' weights random-walk away. When the
features come back (update ``QUIET_TO+1`` = 471, late in epoch 5) the drifted weights meet full-size
inputs: the batch loss jumps ~100x and stays high for tens of steps. The blowup step is known by
construction; :func:`true_blowup_step` checks it on the true per-batch losses (a decade above the
trailing level, holding for 10 steps) and ``main`` refuses to write a run where it moved.

Keras' ``batch_loss`` is the running mean since the start of the epoch, not the batch's loss, so the
run also records the *true* per-batch loss (each batch's loss at the weights it is computed with,
before its update, float64 from the model's float32 prediction) in ``truth.json``, with the running
means Keras logged. Per-batch target noise varies from batch to batch (log-normal scale), as the
loss of real mini-batches does: the one-batch running mean at each epoch start then jumps against the
smooth late-epoch mean — what scans of raw Keras logs reported as loss spikes at epoch boundaries.

    /tmp/tfvenv/bin/python tools/runlab/keras_blowup.py [OUT]   # default tests/fixtures/keras_blowup

Writes ``OUT/logs_f1/train/``, ``OUT/logs_f10/train/`` (event files), ``OUT/ckpt/epochNN.keras``
(``ModelCheckpoint(save_freq=200)``: steps 200, 400, 600, 800 — named by epoch; written by the
``update_freq=1`` run) and
``OUT/truth.json``. The two runs are the same training (seeded, single-threaded, op determinism; checked:
their true losses must be equal). Needs TensorFlow (``pip install 'adamdiag[tf]'`` or a separate venv:
``python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0``); adamdiag itself
never imports it. The replay entry for this run: ``examples/keras_replay_entry.py``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # plain Eigen kernels: the same bits on every CPU

import numpy as np  # noqa: E402

FEATURES, LOUD, BATCH = 40, 8, 32
STEPS_PER_EPOCH, EPOCHS = 100, 8
QUIET_FROM, QUIET_TO = 200, 470  # updates 201..470: features LOUD.. scaled by 1e-4; back at 471
LR, BETA1, BETA2, EPS = 0.02, 0.9, 0.9, 1e-7
SAVE_EVERY = 200  # batches: epoch02.keras (step 200), epoch04 (400), epoch06 (600), epoch08 (800)
SEED = 7
W_TRUE = np.random.default_rng(123).standard_normal(FEATURES) / math.sqrt(FEATURES)


def batch(t: int) -> tuple[np.ndarray, np.ndarray]:
    """The batch of update ``t`` (1-based global step), float32, seeded by ``t`` alone: a replay from
    any checkpoint sees the very same batches."""
    rng = np.random.default_rng(1000 + t)
    x = rng.standard_normal((BATCH, FEATURES))
    if QUIET_FROM < t <= QUIET_TO:
        x[:, LOUD:] *= 1e-4
    noise = 0.1 * math.exp(0.5 * rng.standard_normal())  # mini-batch losses vary from batch to batch
    y = x @ W_TRUE + noise * rng.standard_normal(BATCH)
    return x.astype(np.float32), y.astype(np.float32)[:, None]


def import_keras() -> Any:
    """Keras on TensorFlow, single-threaded with op determinism (reruns give the same bits)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
    return keras


def build_model(keras: Any) -> Any:
    """The run's model and optimizer (seeded glorot init), compiled as the run compiled it."""
    keras.utils.set_random_seed(SEED)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1, name="linear")], name="regression")
    opt = keras.optimizers.Adam(learning_rate=LR, beta_1=BETA1, beta_2=BETA2, epsilon=EPS)
    model.compile(optimizer=opt, loss="mse", jit_compile=False)
    return model


def true_blowup_step(losses: list[float], *, window: int = 50) -> int | None:
    """The first step (1-based) whose loss, and the median of it and the next 9, are ≥ 10x the median
    of the ``window`` losses before it: a decade above the trailing level that holds (the per-batch
    noise here has single batches 10x above the level now and then; none is followed by 9 more)."""
    a = np.asarray(losses, dtype=np.float64)
    for i in range(window, len(a) - 10):
        base = float(np.median(a[i - window : i]))
        if a[i] >= 10 * base and float(np.median(a[i : i + 10])) >= 10 * base:
            return i + 1
    return None


def train(out: Path, update_freq: int, *, save: bool) -> dict[str, list[float]]:
    """One ``model.fit`` of the whole run; returns the true per-batch losses and Keras' running means."""
    keras = import_keras()
    model = build_model(keras)
    true_losses: list[float] = []
    running: list[float] = []
    state = {"epoch": 0}

    class Truth(keras.callbacks.Callback):
        """The loss of each batch at the weights it is computed with (before its update)."""

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            state["epoch"] = epoch

        def on_train_batch_begin(self, b: int, logs: Any = None) -> None:
            x, y = batch(state["epoch"] * STEPS_PER_EPOCH + b + 1)
            pred = np.asarray(model(x, training=False), dtype=np.float64)
            true_losses.append(float(np.mean((pred - y) ** 2)))

        def on_train_batch_end(self, b: int, logs: Any = None) -> None:
            running.append(float(logs["loss"]))

    def data():
        for t in range(1, EPOCHS * STEPS_PER_EPOCH + 1):
            yield batch(t)

    callbacks = [
        Truth(),
        keras.callbacks.TensorBoard(
            str(out / f"logs_f{update_freq}"), update_freq=update_freq, write_graph=False, profile_batch=0
        ),
    ]
    if save:
        (out / "ckpt").mkdir()
        callbacks.append(
            keras.callbacks.ModelCheckpoint(str(out / "ckpt" / "epoch{epoch:02d}.keras"), save_freq=SAVE_EVERY)
        )
    model.fit(data(), steps_per_epoch=STEPS_PER_EPOCH, epochs=EPOCHS, verbose=0, callbacks=callbacks, shuffle=False)
    return {"true": true_losses, "running": running}


def main(out: Path) -> None:
    import keras
    import tensorflow as tf

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    f1 = train(out, 1, save=True)
    f10 = train(out, 10, save=False)
    if f1["true"] != f10["true"]:
        raise SystemExit("the two runs differ: TensorFlow is not deterministic here")
    blowup = true_blowup_step(f1["true"])
    if blowup != QUIET_TO + 1:
        raise SystemExit(f"the run blew up at {blowup}, not at {QUIET_TO + 1}: the lab's settings changed")
    truth = {
        "made_with": {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__},
        "settings": {"lr": LR, "beta1": BETA1, "beta2": BETA2, "eps": EPS, "batch": BATCH, "features": FEATURES},
        "steps_per_epoch": STEPS_PER_EPOCH,
        "epochs": EPOCHS,
        "quiet": [QUIET_FROM + 1, QUIET_TO],
        "blowup_step": blowup,
        "blowup_rule": "first step whose loss and the median of it and the next 9 are >= 10x the median of the 50 before",
        "step_convention": "Keras 3 logs batch b (0-based global) at step b+1 = the update's number",
        "checkpoints": {
            p.name: int(p.stem[len("epoch") :]) * STEPS_PER_EPOCH for p in sorted((out / "ckpt").iterdir())
        },
        "true_batch_loss": f1["true"],
        "running_mean_loss": {"update_freq_1": f1["running"], "update_freq_10": f10["running"]},
    }
    (out / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({size / 1e3:.0f} kB): blowup at step {blowup}")


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "keras_blowup"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
