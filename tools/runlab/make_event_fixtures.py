"""Write small TensorBoard event files with TensorFlow's and Keras' own summary writers, and record the
values each writer was given, so adamdiag's event reader (which runs without TensorFlow) can be checked
against what the writer really wrote — the generator of ``tests/fixtures/events_tf/``.

    /tmp/tfvenv/bin/python tools/runlab/make_event_fixtures.py [OUT_DIR]   # default tests/fixtures/events_tf

Needs ``tensorflow-cpu`` (tested with 2.21.0, Keras 3.15) in a separate virtual environment, not
adamdiag's (see tools/runlab/make_tf_fixtures.py). The values are deterministic; the file names and wall
times are not (they hold the time and pid of the run), so the tests never depend on them.

Runs written (each a folder of its own, ~100 KB in all):

* ``tf2_dtypes/``  — one ``tf.summary.create_file_writer``: ``tf.summary.scalar`` given float32, float64,
  float16, int32 and int64 tensors (it casts them to float32), ``tf.summary.write`` with the scalars
  plugin's metadata and the tensor left in its own dtype (what code that bypasses ``tf.summary.scalar``
  writes), steps as int64 tensors and as Python ints, NaN/±inf in the loss, ``tf.summary.histogram`` of
  a gradient every 5 steps;
* ``tf2_multi/``   — three ``create_file_writer``s into one folder (three files): the first logs the loss and
  gradient norm for steps 0..29, the second the learning rate, the third — created later, as a training
  process restarted from a checkpoint at step 20 would — the loss and gradient norm again from step 20;
* ``tf1/``         — TF1 graph mode: ``tf.compat.v1.summary.scalar``/``histogram`` merged by ``merge_all``
  (several values in one Summary, ``simple_value`` and ``HistogramProto``), run in a Session and written by
  ``tf.compat.v1.summary.FileWriter``, plus hand-made ``Summary(simple_value=…)`` of Python floats;
* ``tf1_restart/`` — two FileWriters in one folder: the first logs steps 0..59, the second (a restart from
  step 40) writes ``SessionLog(START)`` at step 40 — TensorBoard's purge of the orphaned steps ≥ 40 — and
  logs 40..79 with other values; a tag only the first file logs (``eval_only``) loses its steps ≥ 40 too;
* ``keras/``       — Keras 3 ``keras.callbacks.TensorBoard(update_freq=2, histogram_freq=1)`` over ``fit``
  with validation data: ``train/`` and ``validation/`` folders, ``batch_*`` and ``epoch_*`` scalars and
  weight histograms.

``expected.json``: per run and tag, the (step, value) pairs each writer was handed, as the writer stores
them (float32 for ``tf.summary.scalar``/``simple_value``; the tensor's own dtype for ``tf.summary.write``),
JSON floats round-trip exactly (NaN/Infinity as Python's json writes them); for histograms (step, min, max,
count) of the tensor logged; for Keras the ``logs`` its callbacks were given at every batch and epoch.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402

SEED = 1234
DTYPES = ("float32", "float64", "float16", "int32", "int64")


def value(step: int, j: int = 0) -> float:
    """A float64 value that float32 does not hold exactly (so a lost or extra rounding shows)."""
    return 1.0 / (step + 3) + j + 1.0 / 3.0


def pairs(steps: list[int], values: list[float]) -> list[list[float]]:
    return [[int(s), float(v)] for s, v in zip(steps, values)]


def make_tf2_dtypes(out: Path) -> dict[str, Any]:
    """tf.summary.scalar / tf.summary.write in every dtype, int64-tensor steps, NaN/inf, a histogram."""
    import tensorflow as tf
    from tensorboard.plugins.scalar import metadata as scalar_metadata

    meta = scalar_metadata.create_summary_metadata(display_name=None, description=None)
    expected: dict[str, list] = {}
    hist: list[list[float]] = []
    special = {7: float("nan"), 8: float("inf"), 9: float("-inf")}
    rng = np.random.default_rng(SEED)
    w = tf.summary.create_file_writer(str(out))
    with w.as_default():
        for s in range(20):
            step = tf.constant(s, tf.int64)  # a step as an int64 tensor (what a training loop's counter is)
            loss = special.get(s, value(s))
            t = tf.constant(loss, tf.float64)
            tf.summary.scalar("train/loss", t, step=step)
            expected.setdefault("train/loss", []).append([s, float(tf.cast(t, tf.float32).numpy())])
            tf.summary.scalar("train/grad_norm", tf.constant(value(s, 2), tf.float32), step=s)  # Python int step
            expected.setdefault("train/grad_norm", []).append([s, float(np.float32(value(s, 2)))])
            tf.summary.scalar("train/learning_rate", 1e-3 * 0.9**s, step=step)  # a Python float
            expected.setdefault("train/learning_rate", []).append([s, float(np.float32(1e-3 * 0.9**s))])
            for dt in DTYPES:
                x = round(value(s, 1) * 1e6) if dt.startswith("int") else value(s, 1)
                tx = tf.constant(x, getattr(tf, dt))
                tf.summary.scalar(f"scalar/{dt}", tx, step=step)
                expected.setdefault(f"scalar/{dt}", []).append([s, float(tf.cast(tx, tf.float32).numpy())])
                tf.summary.write(f"write/{dt}", tx, step=step, metadata=meta)  # the tensor in its own dtype
                expected.setdefault(f"write/{dt}", []).append([s, float(tx.numpy())])
            if s % 5 == 0:
                g = rng.standard_normal(500) * 10.0 ** (-s / 5)
                tf.summary.histogram("grads/dense/kernel", g, step=step)
                hist.append([s, float(g.min()), float(g.max()), 500.0])
    w.close()
    return {"scalars": expected, "histograms": {"grads/dense/kernel": hist}}


def make_tf2_multi(out: Path) -> dict[str, Any]:
    """Three file writers in one folder; the third re-logs the loss from step 20 (a restart)."""
    import tensorflow as tf

    first = tf.summary.create_file_writer(str(out))
    lr_writer = tf.summary.create_file_writer(str(out))
    files: dict[str, dict[str, list]] = {"first": {}, "lr": {}, "restart": {}}
    for s in range(30):
        with first.as_default():
            tf.summary.scalar("loss", value(s), step=s)
            tf.summary.scalar("grad_norm", value(s, 1), step=s)
        files["first"].setdefault("loss", []).append([s, float(np.float32(value(s)))])
        files["first"].setdefault("grad_norm", []).append([s, float(np.float32(value(s, 1)))])
        with lr_writer.as_default():
            tf.summary.scalar("lr", 0.01, step=s)
        files["lr"].setdefault("lr", []).append([s, float(np.float32(0.01))])
    first.close()
    time.sleep(1.1)  # the restart's first wall time (and file name) after the first writer's
    restart = tf.summary.create_file_writer(str(out))
    with restart.as_default():
        for s in range(20, 40):
            tf.summary.scalar("loss", value(s) + 5, step=s)
            tf.summary.scalar("grad_norm", value(s, 1) + 5, step=s)
            files["restart"].setdefault("loss", []).append([s, float(np.float32(value(s) + 5))])
            files["restart"].setdefault("grad_norm", []).append([s, float(np.float32(value(s, 1) + 5))])
    restart.close()
    lr_writer.close()
    return {"files": files, "restart_step": 20}


def make_tf1(out: Path) -> dict[str, Any]:
    """TF1 graph mode: merged simple_value + HistogramProto summaries through FileWriter."""
    import tensorflow as tf

    v1 = tf.compat.v1
    expected: dict[str, list] = {}
    hist: list[list[float]] = []
    rng = np.random.default_rng(SEED + 1)
    with tf.Graph().as_default():
        x = v1.placeholder(tf.float32, [], name="x")
        g = v1.placeholder(tf.float32, [200], name="g")
        v1.summary.scalar("loss", x)
        v1.summary.scalar("grad_norm", tf.norm(g))
        v1.summary.histogram("gradients/w", g)
        merged = v1.summary.merge_all()
        writer = v1.summary.FileWriter(str(out))
        with v1.Session() as sess:
            for s in range(25):
                gv = (rng.standard_normal(200) * 0.5 ** (s / 4)).astype(np.float32)
                summ, norm = sess.run([merged, tf.norm(g)], {x: value(s), g: gv})
                writer.add_summary(summ, s)
                expected.setdefault("loss", []).append([s, float(np.float32(value(s)))])
                expected.setdefault("grad_norm", []).append([s, float(np.float32(norm))])
                hist.append([s, float(gv.min()), float(gv.max()), 200.0])
                # a hand-made summary of a Python float (the proto's float field rounds it)
                hand = v1.Summary(value=[v1.Summary.Value(tag="lr", simple_value=1e-3 / (s + 1))])
                writer.add_summary(hand, s)
                expected.setdefault("lr", []).append([s, float(np.float32(1e-3 / (s + 1)))])
        writer.close()
    return {"scalars": expected, "histograms": {"gradients/w": hist}}


def make_tf1_restart(out: Path) -> dict[str, Any]:
    """A TF1 restart: the second FileWriter says SessionLog.START at step 40 (TensorBoard purges)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    files: dict[str, dict[str, list]] = {"first": {}, "restart": {}}

    def log(writer: Any, tag: str, s: int, x: float, into: dict[str, list]) -> None:
        writer.add_summary(v1.Summary(value=[v1.Summary.Value(tag=tag, simple_value=x)]), s)
        into.setdefault(tag, []).append([s, float(np.float32(x))])

    with tf.Graph().as_default():
        w1 = v1.summary.FileWriter(str(out))
        for s in range(60):
            log(w1, "loss", s, value(s), files["first"])
            if s % 10 == 5:
                log(w1, "eval_only", s, value(s, 3), files["first"])
        w1.close()
        time.sleep(1.1)
        w2 = v1.summary.FileWriter(str(out))
        w2.add_session_log(v1.SessionLog(status=v1.SessionLog.START), 40)
        for s in range(40, 80):
            log(w2, "loss", s, value(s) + 7, files["restart"])
        w2.close()
    return {"files": files, "purge_step": 40}


def make_keras(out: Path) -> dict[str, Any]:
    """Keras 3 TensorBoard callback with update_freq=2 and weight histograms, validation data."""
    import keras

    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((80, 4)).astype(np.float32)
    y = (x @ rng.standard_normal((4, 1))).astype(np.float32)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    batch_logs: list[dict[str, float]] = []
    epoch_logs: list[dict[str, float]] = []
    weights: list[dict[str, list[float]]] = []

    class Record(keras.callbacks.Callback):
        """The logs the TensorBoard callback is handed, and the weights it histograms at each epoch end."""

        def on_train_batch_end(self, batch, logs=None):
            batch_logs.append({k: float(v) for k, v in (logs or {}).items()})

        def on_epoch_end(self, epoch, logs=None):
            epoch_logs.append({k: float(v) for k, v in (logs or {}).items()})
            weights.append(
                {
                    w.path.replace(":", "_"): [
                        float(np.min(w.numpy())),
                        float(np.max(w.numpy())),
                        float(w.numpy().size),
                    ]
                    for layer in model.layers
                    for w in layer.weights
                }
            )

    tb = keras.callbacks.TensorBoard(str(out), update_freq=2, histogram_freq=1, write_graph=False, profile_batch=0)
    model.fit(x, y, batch_size=16, epochs=3, validation_split=0.2, shuffle=False, verbose=0, callbacks=[Record(), tb])
    return {
        "update_freq": 2,
        "batches_per_epoch": 4,  # 64 training rows (validation_split 0.2) in batches of 16
        "batch_logs": batch_logs,
        "epoch_logs": epoch_logs,
        "weights": weights,
    }


def main(out: Path) -> None:
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    expected: dict[str, Any] = {"made_with": {"tensorflow": tf.__version__, "keras": keras.__version__}}
    expected["tf2_dtypes"] = make_tf2_dtypes(out / "tf2_dtypes")
    expected["tf2_multi"] = make_tf2_multi(out / "tf2_multi")
    expected["tf1"] = make_tf1(out / "tf1")
    expected["tf1_restart"] = make_tf1_restart(out / "tf1_restart")
    expected["keras"] = make_keras(out / "keras")
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "events_tf"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
