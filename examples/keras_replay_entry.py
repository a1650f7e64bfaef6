"""A framework-neutral replay entry for a Keras 3 (TensorFlow 2) ``model.fit`` run: the blown-up run
``tests/fixtures/keras_blowup/`` (made by ``tools/runlab/keras_blowup.py``). It imports TensorFlow and
Keras; adamdiag itself never does.

    adamdiag replay tests/fixtures/keras_blowup/ckpt/epoch04.keras \\
        --logdir tests/fixtures/keras_blowup/logs_f1 \\
        --entry examples/keras_replay_entry.py:adamdiag_replay --eps 1e-2 --lr 2e-3

adamdiag calls ``run(checkpoint, variant, steps)`` once per variant (original first): load the
``.keras`` file (weights, and the optimizer with its m, v and iteration count), give the optimizer the
variant's eps/β2/lr, then for each update t = start+1, … feed the very batch the run fed and return
the loss of that batch before the update (what Keras logged, per batch: adamdiag rebuilds the per-batch
losses from Keras' running mean), the mean g² of the gradient the update uses, the mean
v̂_{t-1} = v_{t-1} / (1 - β2^(t-1)) before it, and the median √v̂_t after it. The step, the original
eps/β2/lr and the names come from the ``.keras`` file through adamdiag's own reader.

To adapt it to your run, change the three things marked RUN-SPECIFIC: how to get batch t, how the
model and data code are imported, and (if you trained with a custom ``train_step``) the update call.
Everything else is Keras 3's public API plus the Adam slot lists ``_momentums``/``_velocities``
(the order of ``model.trainable_variables``), which Keras 3 has kept since 3.0.

The update is ``model.train_on_batch``: the model's own compiled train step (the one ``fit`` runs),
so the original reproduces the log to float32 rounding on the CPU that wrote it. Keras' Adam reads
β1/β2/eps as Python floats when its update is traced, and the bias correction from its iteration
count: set on the loaded optimizer before the first update, a β2 variant runs as if the run had used
it from the start.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

# RUN-SPECIFIC: the run's model/data code (here the training lab's generator of the run).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "runlab"))
import keras_blowup as lab  # noqa: E402


def batch(t: int) -> tuple[np.ndarray, np.ndarray]:
    """RUN-SPECIFIC: the (x, y) the run fed to update ``t`` (1-based; Keras' logged step)."""
    return lab.batch(t)


def run(checkpoint: str, variant: dict[str, Any], steps: int) -> dict[str, Any]:
    keras = lab.import_keras()  # TF single-threaded with op determinism (the run's kernels)
    import tensorflow as tf

    model = keras.saving.load_model(checkpoint)  # weights + compiled optimizer state
    opt = model.optimizer
    if not isinstance(opt, keras.optimizers.Adam):
        raise ValueError(f"{checkpoint}: the optimizer is {type(opt).__name__}, not Adam")
    opt.beta_2 = float(variant["beta2"])
    opt.epsilon = float(variant["eps"])
    opt.learning_rate = float(variant["lr"])
    beta2 = opt.beta_2
    variables = list(model.trainable_variables)
    names = [v.path for v in variables]  # 'linear/kernel': the names adamdiag's Keras reader gives
    velocities = opt._velocities  # one per trainable variable, same order
    start = int(opt.iterations.numpy())

    def scopes() -> dict[str, list[float]]:
        return {"global": [], **{n: [] for n in names}}

    out: dict[str, Any] = {"loss": [], "g2": scopes(), "vhat": scopes(), "sqrt_vhat_median": scopes()}
    for t in range(start + 1, start + steps + 1):
        x, y = batch(t)
        # before update t: the gradient it will use (same weights, same batch) and v̂_{t-1}
        with tf.GradientTape() as tape:
            loss_t = model.compute_loss(x=x, y=y, y_pred=model(x, training=True))
        grads = [np.asarray(g, dtype=np.float64) for g in tape.gradient(loss_t, variables)]
        corr_before = 1.0 - beta2 ** (t - 1)
        v_before = [np.asarray(v, dtype=np.float64) / corr_before for v in velocities]
        # RUN-SPECIFIC (custom train_step): the run's own update
        loss = float(model.train_on_batch(x, y))
        corr_after = 1.0 - beta2**t
        v_after = [np.asarray(v, dtype=np.float64) / corr_after for v in velocities]
        out["loss"].append(loss)
        for key, per in (("g2", [g * g for g in grads]), ("vhat", v_before)):
            out[key]["global"].append(float(sum(a.sum() for a in per) / sum(a.size for a in per)))
            for n, a in zip(names, per):
                out[key][n].append(float(a.mean()))
        out["sqrt_vhat_median"]["global"].append(
            float(np.sqrt(np.median(np.concatenate([a.ravel() for a in v_after]))))
        )
        for n, a in zip(names, v_after):
            out["sqrt_vhat_median"][n].append(float(np.sqrt(np.median(a))))
        if not math.isfinite(loss):
            break
    return out


def adamdiag_replay(checkpoint: str) -> dict[str, Any]:
    """The entry: step, original eps/β2/lr and names come from the ``.keras`` file (adamdiag's reader)."""
    return {"run": run}
