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


# ------------------------------------------------------------------------------------------------------------
# Event files of the format before SessionLog restarts (file_version "brain.Event:1", written by TensorFlow
# before 0.12, or no file_version event at all): no current writer writes them, so they are built from the real
# protobufs (tensorboard.compat.proto) and framed by TensorBoard's own RecordWriter. Needs only tensorboard (in
# adamdiag's environment):  python tools/runlab/make_event_fixtures.py --legacy [OUT_DIR]
# (default tests/fixtures/events_v1). Deterministic: fixed wall times, file names in wall-time order.

LEGACY_T0 = 1.5e9  # wall time of the first event (2017, when such files were written)


def _legacy_value(tag: str, step: int, attempt: int) -> float:
    """A float32-exact value, different per tag and per attempt (so a value kept from the wrong attempt shows)."""
    return float(np.float32(1.0 / (step + 3) + 0.001 * attempt + sum(map(ord, tag)) % 7))


class _LegacyFile:
    """One event file being built: Event protos in order, with increasing wall times."""

    def __init__(self, version: str | None, t0: float) -> None:
        from tensorboard.compat.proto import event_pb2

        self.pb = event_pb2
        self.t = t0
        self.events: list[Any] = []
        if version is not None:
            self.events.append(event_pb2.Event(wall_time=self._tick(), step=0, file_version=version))

    def _tick(self) -> float:
        self.t += 1.0
        return self.t

    def scalars(self, step: int, tags: tuple[str, ...], attempt: int, *, merged: bool = True) -> None:
        """``simple_value`` summaries; ``merged``: all tags in one Summary (TF1 merge_all), else one event each."""
        from tensorboard.compat.proto import summary_pb2

        vals = [summary_pb2.Summary.Value(tag=t, simple_value=_legacy_value(t, step, attempt)) for t in tags]
        groups = [vals] if merged else [[v] for v in vals]
        for g in groups:
            self.events.append(self.pb.Event(wall_time=self._tick(), step=step, summary=summary_pb2.Summary(value=g)))

    def tensor_scalar(self, step: int, tag: str, attempt: int, first: bool) -> None:
        """A TF2-style scalar: a float32 tensor of plugin 'scalars' (metadata on the tag's first value only)."""
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.plugins.scalar import metadata
        from tensorboard.util import tensor_util

        v = summary_pb2.Summary.Value(
            tag=tag, tensor=tensor_util.make_tensor_proto(np.float32(_legacy_value(tag, step, attempt)))
        )
        if first:
            v.metadata.CopyFrom(metadata.create_summary_metadata(display_name=None, description=None))
        self.events.append(self.pb.Event(wall_time=self._tick(), step=step, summary=summary_pb2.Summary(value=[v])))

    def histogram(self, step: int, tag: str, attempt: int) -> None:
        from tensorboard.compat.proto import summary_pb2

        x = np.random.default_rng(step + 1000 * attempt).standard_normal(64) * (1 + attempt)
        h = summary_pb2.HistogramProto(
            min=float(x.min()), max=float(x.max()), num=64, sum=float(x.sum()), sum_squares=float((x * x).sum())
        )
        h.bucket_limit.extend([0.0, 1e300])
        h.bucket.extend([float((x < 0).sum()), float((x >= 0).sum())])
        self.events.append(
            self.pb.Event(
                wall_time=self._tick(),
                step=step,
                summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, histo=h)]),
            )
        )

    def session_log(self, step: int, status: str) -> None:
        status_id = getattr(self.pb.SessionLog, status)
        self.events.append(
            self.pb.Event(wall_time=self._tick(), step=step, session_log=self.pb.SessionLog(status=status_id))
        )

    def write(self, folder: Path, k: int) -> None:
        from tensorboard.summary.writer.record_writer import RecordWriter

        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"events.out.tfevents.{int(LEGACY_T0) + 1000 * k}.legacy", "wb") as f:
            rw = RecordWriter(f)
            for ev in self.events:
                rw.write(ev.SerializeToString())


def make_legacy(out: Path) -> dict[str, str]:
    """The version-1 / no-version runs (one folder each; what each shows is the docstring of its test in
    tests/io/test_events_writers.py). Returns folder -> what it holds."""
    V1, V2 = "brain.Event:1", "brain.Event:2"
    runs: dict[str, list[_LegacyFile]] = {}
    made: dict[str, str] = {}

    def new(run: str, version: str | None) -> _LegacyFile:
        f = _LegacyFile(version, LEGACY_T0 + 1000 * len(runs.setdefault(run, [])))
        runs[run].append(f)
        return f

    # v1_in_file: TF1 merged summaries, a restart into the same file at step 40 (no SessionLog), then a
    # SessionLog START at 65 and steps 65..69 again (a START means nothing in a version-1 file; it only sets
    # the most recent step).
    made["v1_in_file"] = "version 1: in-file restart at 40 without START; START at 65 re-logging 65..69"
    f = new("v1_in_file", V1)
    f.session_log(0, "START")
    for s in range(60):
        f.scalars(s, ("loss", "lr"), 0)
        if s % 10 == 5:
            f.scalars(s, ("eval_only",), 0)
        if s % 10 == 0:
            f.histogram(s, "grads/w", 0)
        if s == 30:
            f.session_log(s, "CHECKPOINT")
    for s in range(40, 80):
        f.scalars(s, ("loss", "lr"), 1)
        if s % 10 == 0:
            f.histogram(s, "grads/w", 1)
    f.session_log(65, "START")
    for s in range(65, 70):
        f.scalars(s, ("loss",), 2)
    # noversion_two_files: no file_version event at all; the restart is a second file from step 40 that logs
    # only the loss: the first file's loss at >= 40 goes, its lr stays.
    made["noversion_two_files"] = "no file_version: file 2 re-logs loss from 40"
    f = new("noversion_two_files", None)
    for s in range(60):
        f.scalars(s, ("loss", "lr"), 0, merged=False)
    f = new("noversion_two_files", None)
    for s in range(40, 80):
        f.scalars(s, ("loss",), 1, merged=False)
    # noversion_tensor: the same as TF2-style scalar tensors
    made["noversion_tensor"] = "as noversion_two_files, plugin 'scalars' float32 tensors"
    f = new("noversion_tensor", None)
    for s in range(60):
        for t in ("loss", "lr"):
            f.tensor_scalar(s, t, 0, first=s == 0)
    f = new("noversion_tensor", None)
    for s in range(40, 80):
        f.tensor_scalar(s, "loss", 1, first=s == 40)
    # v1_two_files: version 1, the restart in a second file: its file_version event (step 0) sets the most
    # recent step to 0, so nothing is purged.
    made["v1_two_files"] = "version 1 twice: file 2 from 40, nothing purged (its header resets the step)"
    f = new("v1_two_files", V1)
    for s in range(60):
        f.scalars(s, ("loss", "lr"), 0)
    f = new("v1_two_files", V1)
    for s in range(40, 80):
        f.scalars(s, ("loss",), 1)
    # v1_then_noversion: a version-1 file, then one without file_version (the folder's version 1 stays in
    # force and its most recent step carries over): purged across the files.
    made["v1_then_noversion"] = "version 1 then none: purged across files"
    f = new("v1_then_noversion", V1)
    for s in range(60):
        f.scalars(s, ("loss", "lr"), 0)
        if s % 10 == 0:
            f.histogram(s, "grads/w", 0)
    f = new("v1_then_noversion", None)
    for s in range(40, 80):
        f.scalars(s, ("loss",), 1)
        if s % 10 == 5:
            f.histogram(s, "grads/w", 1)
    # v2_then_noversion: version 2 stays in force for the second file: its steps going back purge nothing,
    # its SessionLog START at 50 purges every tag (the START comes after its steps 40..49).
    made["v2_then_noversion"] = "version 2 then none: no out-of-order purge; START at 50 purges all tags"
    f = new("v2_then_noversion", V2)
    for s in range(60):
        f.scalars(s, ("loss", "lr"), 0, merged=False)
    f = new("v2_then_noversion", None)
    for s in range(40, 50):
        f.scalars(s, ("loss",), 1, merged=False)
    f.session_log(50, "START")
    for s in range(50, 70):
        f.scalars(s, ("loss",), 2, merged=False)
    # v2_then_v1: the version-1 file's header switches the rule; its own in-file restart at 60 purges its
    # own rows; the version-2 file's rows are past the reset and stay.
    made["v2_then_v1"] = "version 2 then 1: only the version-1 file's own restart purges"
    f = new("v2_then_v1", V2)
    for s in range(60):
        f.scalars(s, ("loss", "lr"), 0)
    f = new("v2_then_v1", V1)
    for s in range(40, 80):
        f.scalars(s, ("loss", "lr"), 1)
    for s in range(60, 70):
        f.scalars(s, ("loss",), 2)
    # v1_then_v2: a version-1 file with an in-file restart, then a version-2 file with a SessionLog START at 30
    # (purges every tag of both files at >= 30) whose steps then go back from 49 to 45 (nothing: version 2).
    made["v1_then_v2"] = "version 1 (in-file restart at 50) then 2 (START at 30; steps back to 45: kept)"
    f = new("v1_then_v2", V1)
    for s in range(60):
        f.scalars(s, ("loss", "lr"), 0)
    for s in range(50, 55):
        f.scalars(s, ("lr",), 1)
    f = new("v1_then_v2", V2)
    f.session_log(30, "START")
    for s in range(30, 50):
        f.scalars(s, ("loss",), 2)
    for s in range(45, 50):
        f.scalars(s, ("loss",), 3)
    if out.exists():
        shutil.rmtree(out)
    for run, files in runs.items():
        for k, lf in enumerate(files):
            lf.write(out / run, k)
    return made


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
    fixtures = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
    args = sys.argv[1:]
    if args[:1] == ["--legacy"]:  # the version-1 / no-version files: no TensorFlow needed
        make_legacy(Path(args[1]) if len(args) > 1 else fixtures / "events_v1")
    else:
        main(Path(args[0]) if args else fixtures / "events_tf")
