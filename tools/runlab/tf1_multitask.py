"""The original report's own world: a TF1 graph-mode multi-task conv net, and the generator of
``sample_logs/tf1_vcollapse/`` (issue 14, item 5).

A small conv trunk (conv 3x3 → a residual block of two 3x3 convs → 2x2 mean pool → dense) with four
heads: a probability head (cross-entropy against soft targets) and three L2 regression heads; the
heads' losses are stacked into one vector that ``tf.compat.v1.train.AdamOptimizer`` minimises (TF1
differentiates the sum), as in the report. Targets come from a fixed random *teacher* of the same
shape, so every head can be fitted (almost) exactly: trained full batch, the gradients shrink for a
long time, g² ≪ v̂, √v̂ decays toward eps and the per-element step lr/(√v̂+eps) grows until the run
goes unstable (v collapse). β2 = 0.99 makes that happen within a few thousand steps.

The run writes what a TF1 script writes: ``tf.compat.v1.summary`` scalars every step (``train/loss``,
the four head losses, ``train/grad_norm``, ``train/lr``) through a ``FileWriter``, and ``Saver``
checkpoints ``model.ckpt-N`` every ``SAVE_EVERY`` steps (``.index``, ``.data``, ``.meta``, the
``checkpoint`` file). Everything is seeded from numpy (inputs, teacher, initial weights) and TF runs
single-threaded with op determinism, so a rerun gives the same losses.

    /tmp/tfvenv/bin/python tools/runlab/tf1_multitask.py --out sample_logs/tf1_vcollapse

Needs TensorFlow (``pip install 'adamdiag[tf]'`` or a separate venv: ``python3 -m venv /tmp/tfvenv &&
/tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0``); adamdiag itself never imports it. The replay
entry for this run is ``examples/tf1_replay_entry.py`` (framework-neutral kind).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # plain Eigen kernels: the same bits on every CPU

import numpy as np  # noqa: E402

N_EXAMPLES, SIZE, IN_CH, CH, HIDDEN, CLASSES = 32, 8, 2, 8, 16, 4
HEADS = ("prob", "reg_a", "reg_b", "reg_c")
# The run's settings (what the checkpoints' .meta graph records as AdamOptimizer's Const nodes)
LR, BETA1, BETA2, EPS = 1e-2, 0.9, 0.99, 1e-8
STEPS, SAVE_EVERY = 300, 50  # blows up near step 210; every checkpoint is kept (max_to_keep=None)


def data() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The fixed inputs and the teacher's targets (numpy, float32): the same on every call."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N_EXAMPLES, SIZE, SIZE, IN_CH)).astype(np.float32)
    teacher = init_weights(np.random.default_rng(1000), scale=1.5)
    out = forward_np(x, teacher)
    e = np.exp(out["prob"] - out["prob"].max(axis=1, keepdims=True))
    targets = {"prob": (e / e.sum(axis=1, keepdims=True)).astype(np.float32)}
    targets.update({h: out[h].astype(np.float32) for h in HEADS[1:]})
    return x, targets


def init_weights(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Glorot-like initial weights by variable name (numpy: no TF random op, so reruns agree)."""

    def w(*shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[:-1]))
        return (scale * rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    def b(n: int) -> np.ndarray:
        return (0.1 * scale * rng.standard_normal(n)).astype(np.float32)

    flat = (SIZE // 2) * (SIZE // 2) * CH
    out = {
        "trunk/conv0/kernel": w(3, 3, IN_CH, CH),
        "trunk/conv0/bias": b(CH),
        "trunk/res/conv1/kernel": w(3, 3, CH, CH),
        "trunk/res/conv1/bias": b(CH),
        "trunk/res/conv2/kernel": w(3, 3, CH, CH),
        "trunk/res/conv2/bias": b(CH),
        "trunk/dense/kernel": w(flat, HIDDEN),
        "trunk/dense/bias": b(HIDDEN),
    }
    for h in HEADS:
        out[f"heads/{h}/kernel"] = w(HIDDEN, CLASSES if h == "prob" else 1)
        out[f"heads/{h}/bias"] = b(CLASSES if h == "prob" else 1)
    return out


def _conv_np(x: np.ndarray, k: np.ndarray, b: np.ndarray) -> np.ndarray:
    p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((*x.shape[:3], k.shape[-1]), dtype=np.float64)
    for i in range(3):
        for j in range(3):
            out += p[:, i : i + x.shape[1], j : j + x.shape[2], :] @ k[i, j]
    return out + b


def forward_np(x: np.ndarray, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The teacher's forward pass in numpy (float64): the same function as :func:`build_net`."""
    h = np.tanh(_conv_np(x, w["trunk/conv0/kernel"], w["trunk/conv0/bias"]))
    r = np.tanh(_conv_np(h, w["trunk/res/conv1/kernel"], w["trunk/res/conv1/bias"]))
    h = np.tanh(h + _conv_np(r, w["trunk/res/conv2/kernel"], w["trunk/res/conv2/bias"]))
    n = h.shape[0]
    h = h.reshape(n, SIZE // 2, 2, SIZE // 2, 2, CH).mean(axis=(2, 4)).reshape(n, -1)
    h = np.tanh(h @ w["trunk/dense/kernel"] + w["trunk/dense/bias"])
    return {hd: h @ w[f"heads/{hd}/kernel"] + w[f"heads/{hd}/bias"] for hd in HEADS}


def build_net(tf: Any, x: Any, targets: dict[str, Any]) -> tuple[dict[str, Any], Any, dict[str, Any], dict[str, Any]]:
    """The student in the current TF1 graph: (variables by name, the stacked loss vector, head losses,
    the initial-value placeholders to feed :func:`initial_feed` to at initialisation). Data and initial
    values are fed, not baked in as constants: the ``.meta`` graph of every checkpoint stays small."""
    init = {
        name: tf.compat.v1.placeholder(tf.float32, val.shape, name=f"init/{name}")
        for name, val in init_weights(np.random.default_rng(0)).items()
    }
    v = {name: tf.compat.v1.Variable(ph, name=name) for name, ph in init.items()}

    def conv(h: Any, scope: str) -> Any:
        return tf.nn.conv2d(h, v[f"{scope}/kernel"], strides=1, padding="SAME") + v[f"{scope}/bias"]

    h = tf.tanh(conv(x, "trunk/conv0"))
    r = tf.tanh(conv(h, "trunk/res/conv1"))
    h = tf.tanh(h + conv(r, "trunk/res/conv2"))  # the residual block
    h = tf.nn.avg_pool2d(h, ksize=2, strides=2, padding="VALID")
    h = tf.reshape(h, [-1, (SIZE // 2) * (SIZE // 2) * CH])
    h = tf.tanh(tf.matmul(h, v["trunk/dense/kernel"]) + v["trunk/dense/bias"])
    out = {hd: tf.matmul(h, v[f"heads/{hd}/kernel"]) + v[f"heads/{hd}/bias"] for hd in HEADS}
    p = targets["prob"]
    # cross-entropy minus the targets' entropy (a KL divergence): a perfect fit reads 0
    entropy = -tf.reduce_mean(tf.reduce_sum(p * tf.math.log(p), axis=1))
    losses = {"prob": tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=p, logits=out["prob"])) - entropy}
    losses.update({hd: tf.reduce_mean(tf.square(out[hd] - targets[hd])) for hd in HEADS[1:]})
    return v, tf.stack([losses[hd] for hd in HEADS]), losses, init


def placeholders(tf: Any) -> tuple[Any, dict[str, Any]]:
    """The input batch and the four heads' targets, fed every step (as a TF1 input pipeline would)."""
    x = tf.compat.v1.placeholder(tf.float32, (None, SIZE, SIZE, IN_CH), name="x")
    y = {
        hd: tf.compat.v1.placeholder(tf.float32, (None, CLASSES if hd == "prob" else 1), name=f"y_{hd}") for hd in HEADS
    }
    return x, y


def batch_feed(x: Any, y: dict[str, Any], t: int) -> dict[Any, np.ndarray]:
    """The batch of update t: the whole fixed data set (full batch), the same for every t."""
    x_np, targets = DATA
    return {x: x_np, **{y[hd]: targets[hd] for hd in HEADS}}


def initial_feed(init: dict[str, Any]) -> dict[Any, np.ndarray]:
    vals = init_weights(np.random.default_rng(0))
    return {ph: vals[name] for name, ph in init.items()}


def session(tf: Any) -> Any:
    cfg = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
    return tf.compat.v1.Session(config=cfg)


def import_tf() -> Any:
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    tf.config.experimental.enable_op_determinism()
    return tf


def train(out: Path, steps: int = STEPS) -> Path:
    """The sample run: event file and Saver checkpoints in ``out``, replacing a previous generation's
    (other files, such as the run's ``adamdiag.toml``, are kept)."""
    tf = import_tf()
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("events.out.tfevents.*"), *out.glob("model.ckpt-*"), out / "checkpoint"]:
        if old.is_file():
            old.unlink()
    g = tf.Graph()
    with g.as_default():
        x, y = placeholders(tf)
        _, loss_vec, losses, init = build_net(tf, x, y)
        gs = tf.compat.v1.train.get_or_create_global_step()
        opt = tf.compat.v1.train.AdamOptimizer(LR, beta1=BETA1, beta2=BETA2, epsilon=EPS)
        gv = opt.compute_gradients(loss_vec)  # a loss vector: TF1 differentiates its sum
        train_op = opt.apply_gradients(gv, global_step=gs)
        total = tf.reduce_sum(loss_vec)
        summaries = [tf.compat.v1.summary.scalar("train/loss", total)]
        summaries += [tf.compat.v1.summary.scalar(f"train/loss_{hd}", losses[hd]) for hd in HEADS]
        summaries.append(tf.compat.v1.summary.scalar("train/grad_norm", tf.linalg.global_norm([g_ for g_, _ in gv])))
        summaries.append(tf.compat.v1.summary.scalar("train/lr", tf.constant(LR)))
        merged = tf.compat.v1.summary.merge(summaries)
        saver = tf.compat.v1.train.Saver(max_to_keep=None)
        with session(tf) as sess:
            sess.run(tf.compat.v1.global_variables_initializer(), feed_dict=initial_feed(init))
            writer = tf.compat.v1.summary.FileWriter(str(out))
            for t in range(1, steps + 1):
                # summaries and loss are computed from the weights before update t, in the same run
                s, _ = sess.run([merged, train_op], feed_dict=batch_feed(x, y, t))
                writer.add_summary(s, t)
                if t % SAVE_EVERY == 0:
                    saver.save(sess, str(out / "model.ckpt"), global_step=t)
            writer.close()
    return out


DATA = data()  # inputs and targets, computed once (numpy)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("sample_logs/tf1_vcollapse"))
    ap.add_argument("--steps", type=int, default=STEPS)
    a = ap.parse_args()
    train(a.out, a.steps)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
