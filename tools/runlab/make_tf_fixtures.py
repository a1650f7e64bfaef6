"""Write small TensorFlow / Keras fixtures with TensorFlow's and Keras' own saving code, and record
what TensorFlow (``tf.train.load_checkpoint``) and h5py read back from them, so adamdiag's readers
(which run without TensorFlow) can be checked against the real thing.

    python tools/runlab/make_tf_fixtures.py [OUT_DIR]      # default: tests/fixtures/tf

Needs ``tensorflow-cpu`` (tested with 2.21.0, Keras 3.15) and h5py — in a separate virtual
environment, not adamdiag's: ``python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install
tensorflow-cpu==2.21.0 h5py numpy``. Deterministic up to TensorFlow's own op-level nondeterminism
(CPU, single thread: in practice bit-identical).

Layouts written (total well under 2 MB):

* ``tf1/``        — TF1 graph mode, ``tf.compat.v1.train.AdamOptimizer``, ref variables, no global_step
  variable, ``Saver`` checkpoints ``model.ckpt-30`` and ``model.ckpt-60`` (``.index``, ``.data-…``, ``.meta``)
  and the ``checkpoint`` file with the (now stale) absolute paths of the temporary directory it was made in;
* ``tf1_rmsprop/``  — RMSProp (slots named like Adam's, no ``.meta``): must be refused;
* ``tf1_many/``    — 300 variables (an ``.index`` of several table blocks), saved without ``.meta``;
* ``tf1_resource/`` — resource variables, a ``global_step`` variable passed to ``minimize``, the learning
  rate fed through a ``placeholder_with_default`` (in no Const node): ``model.ckpt-50``;
* ``tf1_b2p0/``   — the same graph, ``beta2_power`` assigned 0 before saving ``model.ckpt-40`` (what
  float32 underflow does after ~100k steps at β2 = 0.999): the step must come from the ``-N`` suffix;
* ``tf2/``        — ``tf.train.Checkpoint(model=…, optimizer=…)`` of a Keras 3 model after ``fit``, via
  ``tf.train.CheckpointManager`` (``ckpt-1``);
* ``tf2_tfkeras/``, ``tf2_legacy/`` — the same with tf.keras (``tf_keras`` 2.21, Keras 2): its Adam and
  ``optimizers.legacy.Adam`` (slots as ``.OPTIMIZER_SLOT/optimizer/m|v``, β1/β2 as variables); only
  when ``tf_keras`` is installed (``pip install tf_keras~=2.21.0``);
* ``keras/``      — ``plain.keras``, ``plain.weights.h5`` (Adam), ``schedule.*`` (ExponentialDecay: no lr
  variable), ``amsgrad.*`` (a third slot per variable), ``ema_accum.*`` (an EMA copy and a gradient
  accumulator per variable before the m/v pairs);
* ``keras_h5/``   — HDF5 *model* files, ``model.save("x.h5")`` (what ``ModelCheckpoint("….h5")`` and MLflow's
  Keras autolog write): ``k3_*.h5`` by Keras 3 (``optimizer_weights`` named ``<opt>/<var path>_momentum|_velocity``),
  ``tfk_*.h5`` by tf.keras 2 (``Adam/m/<var>:0``; ``optimizers.legacy.Adam``: ``Adam/<var>/m:0``); plus SGD, a
  weights-only file and one saved without the optimizer (must be refused in one line); ``tfk_adam_savedmodel/``,
  ``tfk_legacy_savedmodel/``: the same two models saved as tf.keras' SavedModel (a path without ``.h5``: TF2's
  default), whose ``keras_metadata.pb`` holds the optimizer's β/eps; ``keras_h5/mixed/``: mixed precision (Adam
  wrapped in a LossScaleOptimizer) by Keras 3 (.keras, .weights.h5, .h5) and tf.keras 2 (.h5, SavedModel,
  tf.train.Checkpoint): ``make_tf_fixtures.py --only keras_mixed``. Only this folder:
  ``make_tf_fixtures.py --only keras_h5`` (merges its records into an existing ``expected.json``);
* ``logs_f1/``, ``logs_f10/`` — Keras TensorBoard callback logs of ``model.fit`` with ``update_freq=1`` and
  ``10`` (``batch_loss`` is Keras' running mean since the start of the epoch), one bad batch (targets ×10).

``expected.json`` holds, per checkpoint and variable, float64 numpy statistics of the tensors as
TensorFlow / h5py read them: mean v, max v, mean |m|, quantiles of √v (un-corrected; both numpy's
default ``linear`` method and ``nearest`` = element round(q·(n-1)) of the sorted values, which is
adamdiag's definition), step and hyperparameters; for the logs the true per-batch losses (the loss
of each batch at the weights it was computed with, evaluated before the step) and what was logged.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402

QS = {"min": 0.0, "p01": 0.01, "p50": 0.5, "p99": 0.99, "max": 1.0}
SEED = 1234


def stats(m: np.ndarray, v: np.ndarray) -> dict[str, Any]:
    """float64 statistics of one variable's slots (the numbers adamdiag's inspect must reproduce)."""
    m64, v64 = np.asarray(m, np.float64).ravel(), np.asarray(v, np.float64).ravel()
    s = np.sqrt(v64)
    return {
        "numel": int(v64.size),
        "v_mean": float(v64.mean()),
        "v_max": float(v64.max()),
        "m_abs_mean": float(np.abs(m64).mean()),
        "sqrt_v_q_linear": {k: float(np.quantile(s, q)) for k, q in QS.items()},
        "sqrt_v_q_nearest": {k: float(np.quantile(s, q, method="nearest")) for k, q in QS.items()},
    }


def data(n: int, bad: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A fixed regression problem: 3 inputs → 4 targets (a smooth function plus noise)."""
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    w = rng.normal(size=(3, 4)).astype(np.float32)
    y = (np.tanh(x @ w) + 0.05 * rng.normal(size=(n, 4))).astype(np.float32)
    return x, y


# --- TF1 --------------------------------------------------------------------------------------------
def make_tf1(tmp: Path, out: Path, *, zero_beta2_power: bool = False, resource: bool = False) -> dict[str, Any]:
    """TF1 graph-mode AdamOptimizer + Saver; returns the expected statistics per checkpoint.
    ``resource``: resource variables (ResourceApplyAdam), a global_step passed to minimize, and the
    learning rate fed through a placeholder (so it is in no Const node: unknown to a reader)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    x_np, y_np = data(256)
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-6
    with g.as_default():
        v1.set_random_seed(SEED)
        x = v1.placeholder(tf.float32, [None, 3])
        y = v1.placeholder(tf.float32, [None, 4])
        init = v1.glorot_uniform_initializer(seed=SEED)
        with v1.variable_scope("trunk"):
            w1 = v1.get_variable("w", [3, 25], initializer=init, use_resource=resource)
            c1 = v1.get_variable("b", [25], initializer=v1.zeros_initializer(), use_resource=resource)
        with v1.variable_scope("head"):
            w2 = v1.get_variable("w", [25, 4], initializer=init, use_resource=resource)
            c2 = v1.get_variable("b", [4], initializer=v1.zeros_initializer(), use_resource=resource)
        pred = tf.matmul(tf.nn.relu(tf.matmul(x, w1) + c1), w2) + c2
        loss = tf.reduce_mean(tf.square(pred - y))
        lr_in = v1.placeholder_with_default(np.float32(lr), [], name="lr") if resource else lr
        opt = v1.train.AdamOptimizer(lr_in, beta1=b1, beta2=b2, epsilon=eps)
        gs = v1.train.get_or_create_global_step() if resource else None
        train = opt.minimize(loss, global_step=gs)
        saver = v1.train.Saver(max_to_keep=5)
        b2p = [v for v in v1.global_variables() if v.op.name.startswith("beta2_power")][0]
        zero = v1.assign(b2p, 0.0)
        cfg = v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
        saves = [40] if zero_beta2_power else [50] if resource else [30, 60]
        expected = {}
        with v1.Session(graph=g, config=cfg) as sess:
            sess.run(v1.global_variables_initializer())
            for step in range(1, max(saves) + 1):
                i = (step * 32) % 256
                sess.run(train, {x: x_np[i : i + 32], y: y_np[i : i + 32]})
                if step in saves:
                    if zero_beta2_power:
                        sess.run(zero)
                    prefix = saver.save(sess, str(tmp / "model.ckpt"), global_step=gs if resource else step)
                    expected[f"model.ckpt-{step}"] = tf1_expected(prefix, step, lr, b1, b2, eps)
                    if resource:
                        expected[f"model.ckpt-{step}"]["global_step"] = int(sess.run(gs))
    for f in tmp.iterdir():
        shutil.copy2(f, out / f.name)  # the checkpoint file keeps tmp's absolute paths: stale on purpose
    return expected


def tf1_expected(prefix: str, step: int, lr: float, b1: float, b2: float, eps: float) -> dict[str, Any]:
    import tensorflow as tf

    r = tf.train.load_checkpoint(prefix)
    shapes = r.get_variable_to_shape_map()
    tensors = []
    for name in sorted(shapes):
        if f"{name}/Adam" in shapes and f"{name}/Adam_1" in shapes:
            tensors.append(
                {
                    "name": name,
                    "shape": list(shapes[name]),
                    "m_key": f"{name}/Adam",
                    "v_key": f"{name}/Adam_1",
                    **stats(r.get_tensor(f"{name}/Adam"), r.get_tensor(f"{name}/Adam_1")),
                }
            )
    b2p = float(r.get_tensor("beta2_power"))
    return {
        "layout": "tf1",
        "step": step,  # optimizer updates done (= the Saver's global_step here)
        "beta1_power": float(r.get_tensor("beta1_power")),
        "beta2_power": b2p,
        "hyper": {"lr": lr, "beta1": b1, "beta2": b2, "eps": eps},
        "tensors": tensors,
    }


def make_tf1_rmsprop(tmp: Path, out: Path) -> None:
    """A TF1 RMSProp checkpoint without ``.meta``: its slots ``<var>/RMSProp`` and ``<var>/RMSProp_1``
    look like Adam's but are (rms, momentum): a reader must refuse it, not read it as m and v."""
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        w = v1.get_variable("w", initializer=np.linspace(-1, 1, 6, dtype=np.float32))
        train = v1.train.RMSPropOptimizer(0.01, momentum=0.9).minimize(tf.reduce_sum(tf.square(w)))
        saver = v1.train.Saver()
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            for _ in range(3):
                sess.run(train)
            saver.save(sess, str(tmp / "model.ckpt"), global_step=3, write_meta_graph=False)
    for f in tmp.iterdir():
        shutil.copy2(f, out / f.name)


def make_tf1_many(tmp: Path, out: Path, n_vars: int = 300) -> dict[str, Any]:
    """A TF1 Saver checkpoint with many variables, so its ``.index`` spans several table blocks
    (prefix-compressed keys, restart points); no ``.meta`` (too big for a fixture): the reader must
    pair the slots by name and take the step from the ``-N`` suffix."""
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        v1.set_random_seed(SEED)
        rng = np.random.default_rng(SEED)
        xs = [
            v1.get_variable(f"block{i // 10:02d}/unit{i % 10}/w", initializer=rng.normal(size=(3,)).astype(np.float32))
            for i in range(n_vars)
        ]
        loss = tf.add_n([tf.reduce_sum(tf.square(x - 0.5)) * (1 + i % 7) for i, x in enumerate(xs)])
        train = v1.train.AdamOptimizer(0.05).minimize(loss)
        saver = v1.train.Saver()
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            for _ in range(5):
                sess.run(train)
            prefix = saver.save(sess, str(tmp / "model.ckpt"), global_step=5, write_meta_graph=False)
    for f in tmp.iterdir():
        shutil.copy2(f, out / f.name)
    exp = tf1_expected(prefix, 5, 0.05, 0.9, 0.999, 1e-8)
    exp["hyper"] = {"lr": None, "beta1": None, "beta2": None, "eps": None}  # no .meta: not knowable
    exp["index_bytes"] = (out / "model.ckpt-5.index").stat().st_size
    return {"model.ckpt-5": exp}


# --- Keras 3 ---------------------------------------------------------------------------------------
def keras_model():
    import keras

    keras.utils.set_random_seed(SEED)
    return keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(25, activation="relu", name="trunk"),
            keras.layers.Dense(4, name="head"),
        ],
        name="net",
    )


def keras_slots(opt, model) -> list[dict[str, Any]]:
    """Per trainable variable: its Keras path, shape, and m / v (/ v̂) as the optimizer holds them."""
    out = []
    for i, var in enumerate(model.trainable_variables):
        m = opt._momentums[i].numpy()
        v = opt._velocities[i].numpy()
        row = {"name": var.path, "shape": list(var.shape), "trainable_index": i}
        if getattr(opt, "amsgrad", False):
            vh = opt._velocity_hats[i].numpy()
            row.update(stats(m, vh))  # the denominator is v̂ (the running max) with amsgrad
            row["v_plain"] = stats(m, v)
        else:
            row.update(stats(m, v))
        out.append(row)
    return out


def make_keras(out: Path) -> dict[str, Any]:
    import keras

    x, y = data(320)
    expected = {}
    variants = {
        "plain": lambda: keras.optimizers.Adam(1e-2),
        "schedule": lambda: keras.optimizers.Adam(
            keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=10, decay_rate=0.9), epsilon=1e-6
        ),
        "amsgrad": lambda: keras.optimizers.Adam(3e-3, beta_2=0.99, amsgrad=True),
        # an EMA copy and a gradient accumulator per variable come before the m/v pairs
        "ema_accum": lambda: keras.optimizers.Adam(1e-2, use_ema=True, gradient_accumulation_steps=2),
    }
    for name, make_opt in variants.items():
        model = keras_model()
        opt = make_opt()
        model.compile(optimizer=opt, loss="mse")
        model.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0)
        model.save(out / f"{name}.keras")
        model.save_weights(out / f"{name}.weights.h5")
        cfg = opt.get_config()
        lr = cfg["learning_rate"]
        expected[name] = {
            "layout": "keras",
            "step": int(opt.iterations.numpy()),
            "hyper": {
                "lr": float(lr) if isinstance(lr, (int, float)) else None,
                "lr_schedule": None if isinstance(lr, (int, float)) else lr["class_name"],
                "lr_at_step": float(opt.learning_rate.numpy()),
                "beta1": cfg["beta_1"],
                "beta2": cfg["beta_2"],
                "eps": cfg["epsilon"],
                "amsgrad": cfg["amsgrad"],
            },
            "n_optimizer_vars": len(opt.variables),
            "tensors": keras_slots(opt, model),
        }
        # what h5py reads back from the file (must equal the live state above)
        import h5py

        with h5py.File(out / f"{name}.weights.h5", "r") as f:
            ov = f["optimizer/vars"]
            expected[name]["h5_optimizer_vars"] = [list(ov[str(k)].shape) for k in range(len(ov))]
    return expected


def make_tf2(tmp: Path, out: Path) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    x, y = data(320)
    model = keras_model()
    opt = keras.optimizers.Adam(1e-2, epsilon=1e-7)
    model.compile(optimizer=opt, loss="mse")
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    ck = tf.train.Checkpoint(model=model, optimizer=opt)
    mgr = tf.train.CheckpointManager(ck, str(tmp), max_to_keep=3)
    path = mgr.save()
    for f in tmp.iterdir():
        shutil.copy2(f, out / f.name)
    r = tf.train.load_checkpoint(path)
    keys = r.get_variable_to_shape_map()
    tensors = keras_slots(opt, model)
    # Check the TF reader sees the same slot values as the live optimizer (k = 2+2i: m, 3+2i: v).
    for t in tensors:
        i = t["trainable_index"]
        m = r.get_tensor(f"optimizer/_variables/{2 + 2 * i}/.ATTRIBUTES/VARIABLE_VALUE")
        v = r.get_tensor(f"optimizer/_variables/{3 + 2 * i}/.ATTRIBUTES/VARIABLE_VALUE")
        got = stats(m, v)
        assert all(got[k] == t[k] for k in ("v_mean", "v_max", "m_abs_mean")), t["name"]
    return {
        "ckpt-1": {
            "layout": "tf2",
            "step": int(opt.iterations.numpy()),
            "hyper": {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-7},
            "keys": sorted(keys),
            "tensors": tensors,
        }
    }


def tfkeras_slots(opt, model, *, legacy: bool) -> list[dict[str, Any]]:
    """Per trainable variable of a tf.keras model: its name, shape, and m / v (/ v̂) as its optimizer holds them
    (``legacy``: ``optimizers.legacy``' slots by ``get_slot``; else the new optimizer's lists)."""
    out = []
    for i, var in enumerate(model.trainable_variables):
        if legacy:
            m, v = opt.get_slot(var, "m").numpy(), opt.get_slot(var, "v").numpy()
        else:
            m, v = opt._momentums[i].numpy(), opt._velocities[i].numpy()
        row = {"name": var.name.split(":")[0], "shape": list(var.shape), "trainable_index": i}
        if not legacy and getattr(opt, "amsgrad", False):
            row.update(stats(m, opt._velocity_hats[i].numpy()))  # the denominator is v̂ with amsgrad
            row["v_plain"] = stats(m, v)
        else:
            row.update(stats(m, v))
        out.append(row)
    return out


def make_tf2_tfkeras(tmp: Path, out: Path, *, legacy: bool) -> dict[str, Any]:
    """tf.keras (the ``tf_keras`` package, Keras 2) in ``tf.train.Checkpoint``: its Adam (``legacy``:
    ``optimizers.legacy.Adam``, slots as ``.OPTIMIZER_SLOT/optimizer/m|v`` plus ``optimizer/beta_1`` …)."""
    import tensorflow as tf
    import tf_keras

    x, y = data(320)
    tf_keras.utils.set_random_seed(SEED)
    model = tf_keras.Sequential(
        [
            tf_keras.layers.Dense(25, activation="relu", input_shape=(3,), name="trunk"),
            tf_keras.layers.Dense(4, name="head"),
        ]
    )
    make = tf_keras.optimizers.legacy.Adam if legacy else tf_keras.optimizers.Adam
    opt = make(5e-3, beta_2=0.995, epsilon=1e-7)
    model.compile(optimizer=opt, loss="mse")
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    path = tf.train.Checkpoint(model=model, optimizer=opt).save(str(tmp / "ckpt"))
    for f in tmp.iterdir():
        shutil.copy2(f, out / f.name)
    r = tf.train.load_checkpoint(path)
    tensors = tfkeras_slots(opt, model, legacy=legacy)
    step = int(opt.iterations.numpy())
    return {
        Path(path).name: {
            "layout": "tf2-legacy" if legacy else "tf2-tfkeras",
            "step": step,
            "hyper": {"lr": 5e-3, "beta1": 0.9, "beta2": 0.995, "eps": 1e-7},
            "keys": sorted(r.get_variable_to_shape_map()),
            "tensors": tensors,
        }
    }


def make_keras_h5(out: Path) -> dict[str, Any]:
    """Keras 3 and tf.keras 2 HDF5 model files (``model.save("….h5")``, optimizer included) and what each
    optimizer held when it was saved."""
    import h5py
    import keras

    x, y = data(320)
    expected: dict[str, Any] = {}

    def record(name: str, opt, tensors: list[dict[str, Any]], cfg: dict[str, Any], lr_now: float) -> None:
        lr = cfg["learning_rate"]
        expected[name] = {
            "layout": "keras-h5",
            "step": int(opt.iterations.numpy()),
            "hyper": {
                "lr": None if isinstance(lr, dict) else float(lr),
                "lr_at_step": float(lr_now),
                "beta1": cfg["beta_1"],
                "beta2": cfg["beta_2"],
                "eps": cfg["epsilon"],
                "amsgrad": cfg.get("amsgrad", False),
                "weight_decay": cfg.get("weight_decay") or 0.0,
            },
            "tensors": tensors,
        }
        with h5py.File(out / name, "r") as f:
            expected[name]["optimizer_weight_names"] = [
                n.decode() if isinstance(n, bytes) else str(n) for n in f["optimizer_weights"].attrs["weight_names"]
            ]

    k3 = {
        "k3_plain.h5": lambda: keras.optimizers.Adam(1e-2),
        "k3_amsgrad.h5": lambda: keras.optimizers.Adam(3e-3, beta_2=0.99, amsgrad=True),
        "k3_schedule.h5": lambda: keras.optimizers.Adam(
            keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=10, decay_rate=0.9), epsilon=1e-6
        ),
        "k3_adamw.h5": lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.05),
    }
    for name, make_opt in k3.items():
        model = keras_model()
        opt = make_opt()
        model.compile(optimizer=opt, loss="mse")
        model.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0)
        model.save(out / name)
        record(name, opt, keras_slots(opt, model), opt.get_config(), float(opt.learning_rate.numpy()))
    try:
        import tf_keras
    except ImportError:
        print("tf_keras not installed: no keras_h5/tfk_*.h5 fixtures", file=sys.stderr)
        return expected
    tfk = {
        "tfk_adam.h5": lambda: tf_keras.optimizers.Adam(5e-3, beta_2=0.995, epsilon=1e-6),
        "tfk_legacy.h5": lambda: tf_keras.optimizers.legacy.Adam(5e-3, beta_2=0.995),
        "tfk_amsgrad.h5": lambda: tf_keras.optimizers.Adam(3e-3, amsgrad=True),
        "tfk_adamw.h5": lambda: tf_keras.optimizers.AdamW(5e-3, weight_decay=0.05),
        "tfk_sgd.h5": lambda: tf_keras.optimizers.SGD(1e-2, momentum=0.9),
    }
    for name, make_opt in tfk.items():
        tf_keras.utils.set_random_seed(SEED)
        model = tf_keras.Sequential(
            [
                tf_keras.layers.Dense(25, activation="relu", input_shape=(3,), name="trunk"),
                tf_keras.layers.Dense(4, name="head"),
            ]
        )
        opt = make_opt()
        model.compile(optimizer=opt, loss="mse")
        model.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0)
        model.save(out / name)
        if name in ("tfk_adam.h5", "tfk_legacy.h5"):  # TF2's default format for a path without .h5: a SavedModel
            model.save(out / name.replace(".h5", "_savedmodel"))
        if name == "tfk_sgd.h5":
            continue
        legacy = name == "tfk_legacy.h5"
        tensors = tfkeras_slots(opt, model, legacy=legacy)
        cfg = opt.get_config()
        if legacy:  # optimizers.legacy.Adam's config has no weight decay; β1/β2 may be tensors
            cfg = {**cfg, "beta_1": float(cfg["beta_1"]), "beta_2": float(cfg["beta_2"])}
        lr_now = float(tf_keras.backend.get_value(opt.learning_rate if not legacy else opt.lr))
        record(name, opt, tensors, cfg, lr_now)
        if name in ("tfk_adam.h5", "tfk_legacy.h5"):  # the same optimizer state, saved the other way
            saved = dict(expected[name], layout="tf2-savedmodel")
            saved.pop("optimizer_weight_names")
            expected[name.replace(".h5", "_savedmodel")] = saved
    # refused: a weights-only file, and a model saved without its optimizer
    model.save_weights(out / "tfk_weights_only.h5")
    model.save(out / "tfk_no_optimizer.h5", include_optimizer=False)
    return expected


def make_keras_mixed(out: Path) -> dict[str, Any]:
    """Mixed precision (``set_global_policy("mixed_float16")``): compile() wraps Adam in a LossScaleOptimizer, whose
    own iteration count stays 0 and whose files hold the wrapper's variables first. Keras 3: ``.keras``,
    ``.weights.h5``, legacy ``.h5``; tf.keras 2 (LossScaleOptimizerV3): ``.h5``, a SavedModel, a
    ``tf.train.Checkpoint``. Records the inner Adam's state."""
    import keras
    import tensorflow as tf

    x, y = data(320)
    expected: dict[str, Any] = {}
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = keras_model()
        model.compile(optimizer=keras.optimizers.Adam(1e-2, epsilon=1e-5), loss="mse")
        model.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0)
        for name in ("k3_mixed.keras", "k3_mixed.weights.h5", "k3_mixed.h5"):
            (model.save_weights if name.endswith(".weights.h5") else model.save)(out / name)
        inner = model.optimizer.inner_optimizer
        expected["k3_mixed"] = {
            "wrapper": type(model.optimizer).__name__,
            "step": int(inner.iterations.numpy()),
            "hyper": {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-5},
            "tensors": keras_slots(inner, model),
        }
    finally:
        keras.mixed_precision.set_global_policy("float32")
    try:
        import tf_keras
    except ImportError:
        print("tf_keras not installed: no keras_h5/mixed tfk_* fixtures", file=sys.stderr)
        return expected
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        tf_keras.utils.set_random_seed(SEED)
        model = tf_keras.Sequential(
            [
                tf_keras.layers.Dense(25, activation="relu", input_shape=(3,), name="trunk"),
                tf_keras.layers.Dense(4, name="head", dtype="float32"),
            ]
        )
        model.compile(optimizer=tf_keras.optimizers.Adam(5e-3, beta_2=0.995, epsilon=1e-6), loss="mse")
        model.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0)
        model.save(out / "tfk_mixed.h5")
        model.save(out / "tfk_mixed_savedmodel")
        tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(str(out / "tfk_mixed_ckpt" / "ckpt"))
        inner = model.optimizer.inner_optimizer
        expected["tfk_mixed"] = {
            "wrapper": type(model.optimizer).__name__,
            "step": int(inner.iterations.numpy()),
            "hyper": {"lr": 5e-3, "beta1": 0.9, "beta2": 0.995, "eps": 1e-6},
            "tensors": tfkeras_slots(inner, model, legacy=False),
        }
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    return expected


# --- Keras TensorBoard logs ------------------------------------------------------------------------
def make_logs(out: Path, update_freq: int) -> dict[str, Any]:
    import keras

    n, bs, epochs, bad = 320, 16, 3, 27  # 20 batches per epoch; global batch 27 has targets ×10
    x, y = data(n)
    model = keras_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    true_losses: list[float] = []
    running: list[float] = []
    state = {"epoch": 0}

    class Truth(keras.callbacks.Callback):
        """The loss of each batch at the weights it is computed with (before its update)."""

        def on_epoch_begin(self, epoch, logs=None):
            state["epoch"] = epoch

        def on_train_batch_begin(self, batch, logs=None):
            xb, yb = x[batch * bs : (batch + 1) * bs], ys[(state["epoch"], batch)]
            pred = model(xb, training=False)
            true_losses.append(float(np.mean((np.asarray(pred, np.float64) - yb) ** 2)))

        def on_train_batch_end(self, batch, logs=None):
            running.append(float(logs["loss"]))

    ys: dict[tuple[int, int], np.ndarray] = {}
    # the bad batch only in the epoch that contains global batch `bad`: a generator feeds per-epoch data
    per_epoch = n // bs
    for e in range(epochs):
        for b in range(per_epoch):
            yb = y[b * bs : (b + 1) * bs].copy()
            if e * per_epoch + b == bad:
                yb *= 10.0
            ys[(e, b)] = yb

    def gen():
        for e in range(epochs):
            for b in range(per_epoch):
                yield x[b * bs : (b + 1) * bs], ys[(e, b)]

    logdir = out / f"logs_f{update_freq}"
    tb = keras.callbacks.TensorBoard(str(logdir), update_freq=update_freq, write_graph=False, profile_batch=0)
    model.fit(gen(), steps_per_epoch=per_epoch, epochs=epochs, verbose=0, callbacks=[Truth(), tb], shuffle=False)
    return {
        "update_freq": update_freq,
        "batches_per_epoch": per_epoch,
        "epochs": epochs,
        "bad_batch": bad,
        "true_batch_loss": true_losses,
        "running_mean_loss": running,
    }


def main(out: Path, only: str | None = None) -> None:
    import h5py
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    if only in ("keras_h5", "keras_mixed"):  # one folder, merged into the expected.json already there
        expected_path = out / "expected.json"
        recorded = json.loads(expected_path.read_text())
        sub = out / "keras_h5" if only == "keras_h5" else out / "keras_h5" / "mixed"
        if only == "keras_h5":
            keep = out / "keras_h5" / "mixed"  # written by --only keras_mixed: kept
            for f in (out / "keras_h5").glob("*") if (out / "keras_h5").is_dir() else []:
                if f != keep:
                    shutil.rmtree(f) if f.is_dir() else f.unlink()
            sub.mkdir(exist_ok=True)
            recorded["keras_h5"] = make_keras_h5(sub)
        else:
            shutil.rmtree(sub, ignore_errors=True)
            sub.mkdir(parents=True)
            recorded["keras_mixed"] = make_keras_mixed(sub)
        recorded[f"made_with_{only}"] = {"tensorflow": tf.__version__, "keras": keras.__version__}
        expected_path.write_text(json.dumps(recorded, indent=1) + "\n")
        print(f"wrote {sub}")
        return
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    expected: dict[str, Any] = {
        "made_with": {"tensorflow": tf.__version__, "keras": keras.__version__, "h5py": h5py.__version__},
        "quantiles": "sqrt_v_q_linear: numpy.quantile default (linear); sqrt_v_q_nearest: method='nearest' "
        "(element round(q*(n-1)) of the sorted values, adamdiag's definition); of sqrt(v), not bias-corrected",
    }
    with tempfile.TemporaryDirectory() as t:
        (out / "tf1").mkdir()
        expected["tf1"] = make_tf1(Path(t), out / "tf1", zero_beta2_power=False)
    with tempfile.TemporaryDirectory() as t:
        (out / "tf1_b2p0").mkdir()
        expected["tf1_b2p0"] = make_tf1(Path(t), out / "tf1_b2p0", zero_beta2_power=True)
    with tempfile.TemporaryDirectory() as t:
        (out / "tf1_rmsprop").mkdir()
        make_tf1_rmsprop(Path(t), out / "tf1_rmsprop")
    with tempfile.TemporaryDirectory() as t:
        (out / "tf1_many").mkdir()
        expected["tf1_many"] = make_tf1_many(Path(t), out / "tf1_many")
    with tempfile.TemporaryDirectory() as t:
        (out / "tf1_resource").mkdir()
        expected["tf1_resource"] = make_tf1(Path(t), out / "tf1_resource", resource=True)
    with tempfile.TemporaryDirectory() as t:
        (out / "tf2").mkdir()
        expected["tf2"] = make_tf2(Path(t), out / "tf2")
    try:
        import tf_keras  # noqa: F401 - optional: the Keras 2 layouts
    except ImportError:
        print("tf_keras not installed: no tf2_tfkeras/ and tf2_legacy/ fixtures", file=sys.stderr)
    else:
        for legacy, sub in ((False, "tf2_tfkeras"), (True, "tf2_legacy")):
            with tempfile.TemporaryDirectory() as t:
                (out / sub).mkdir()
                expected[sub] = make_tf2_tfkeras(Path(t), out / sub, legacy=legacy)
    (out / "keras").mkdir()
    expected["keras"] = make_keras(out / "keras")
    (out / "keras_h5").mkdir()
    expected["keras_h5"] = make_keras_h5(out / "keras_h5")
    (out / "keras_h5" / "mixed").mkdir()
    expected["keras_mixed"] = make_keras_mixed(out / "keras_h5" / "mixed")
    expected["logs"] = {f"logs_f{k}": make_logs(out, k) for k in (1, 10)}
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    argv = sys.argv[1:]
    only = argv[argv.index("--only") + 1] if "--only" in argv else None
    args = [a for a in argv if a not in ("--only", only)]
    main(Path(args[0]) if args else Path(__file__).resolve().parents[2] / "tests/fixtures/tf", only=only)
