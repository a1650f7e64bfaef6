"""fwprobe's Keras side (session 12): fwprobe.py's task and designs trained with ``keras.Model.fit``, logged by
the ``TensorBoard`` callback and saved by ``ModelCheckpoint``, at their defaults and with a user's tweak.

The same MLP regression (8 → 64 → 64 → 1, SiLU), full batch (``batch_size=256`` on 256 samples: one update per
epoch, so epochs are updates), ``keras.optimizers.Adam`` with Keras' default eps 1e-7:

* ``healthy``: lr 1e-3, beta2 0.999, 600 epochs.
* ``lr_high``: ``CosineDecay(0, warmup_target=1.0, warmup_steps=300)``, beta2 0.999, 400 epochs.
* ``vcollapse``: ``CosineDecayRestarts(0.01, first_decay_steps=1000, t_mul=1, m_mul=1)``, beta2 0.99, 2000 epochs.

Variants: default (``TensorBoard(log_dir)``: ``update_freq='epoch'``; ``ModelCheckpoint('ckpt/model.keras')``
overwritten every epoch, validation data given), ``f10`` (``update_freq=10`` and
``ModelCheckpoint('ckpt/e{epoch:04d}.keras', save_freq=250)``), ``mb`` (Keras' default ``batch_size=32``: 8
updates per epoch, the design's updates in epochs/8; default ``TensorBoard``; ``ModelCheckpoint(save_freq=80)``).

No counterfactual here (a Keras optimizer with a schedule takes no new lr): the truth of a design is its torch
twin's counterfactual (``fwprobe.py cf``), which the Keras run's eps 1e-7 (TF convention) only approximates.

    /tmp/tfvenv/bin/python tools/fwprobe/keras_probe.py vcollapse [--variant f10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402

ROOT = Path("/tmp/s12fw/keras")
DESIGNS = {
    "healthy": {"epochs": 600, "beta2": 0.999},
    "lr_high": {"epochs": 400, "beta2": 0.999},
    "vcollapse": {"epochs": 2000, "beta2": 0.99},
}


def data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """fwprobe.data's samples, saved by the torch venv (the TF venv has no torch): ``python -c "import fwprobe as
    f, numpy as np; x, y = f.data(); xv, yv = f.data(601); np.savez('/tmp/s12fw/data.npz', x=x.numpy(), ...)"``."""
    d = np.load("/tmp/s12fw/data.npz")
    return (d["x"], d["y"]) if seed == 600 else (d["xv"], d["yv"])


def schedule(design: str) -> Any:
    import keras

    if design == "healthy":
        return 1e-3
    if design == "lr_high":
        return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=10**9, warmup_target=1.0, warmup_steps=300)
    return keras.optimizers.schedules.CosineDecayRestarts(0.01, first_decay_steps=1000, t_mul=1.0, m_mul=1.0)


def model() -> Any:
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(64, "silu"), keras.layers.Dense(64, "silu"), keras.layers.Dense(1)]
    )


def train(design: str, variant: str | None) -> None:
    import keras

    out = ROOT / (design + (f"_{variant}" if variant else ""))
    if out.exists():
        shutil.rmtree(out)
    (out / "ckpt").mkdir(parents=True)
    x, y = data(600)
    xv, yv = data(601)
    m = model()
    m.compile(optimizer=keras.optimizers.Adam(schedule(design), beta_2=DESIGNS[design]["beta2"]), loss="mse")
    batch, epochs = 256, DESIGNS[design]["epochs"]
    if variant == "mb":  # Keras' default batch_size 32: 8 updates per epoch, epoch-level logs, batch-counted saves
        batch, epochs = 32, epochs // 8
        cbs = [
            keras.callbacks.TensorBoard(str(out / "logs")),
            keras.callbacks.ModelCheckpoint(str(out / "ckpt" / "e{epoch:04d}.keras"), save_freq=80),
        ]
    elif variant == "f10":
        cbs = [
            keras.callbacks.TensorBoard(str(out / "logs"), update_freq=10),
            keras.callbacks.ModelCheckpoint(str(out / "ckpt" / "e{epoch:04d}.keras"), save_freq=250),
        ]
    else:
        cbs = [
            keras.callbacks.TensorBoard(str(out / "logs")),
            keras.callbacks.ModelCheckpoint(str(out / "ckpt" / "model.keras")),
        ]
    h = m.fit(x, y, batch_size=batch, epochs=epochs, validation_data=(xv, yv), callbacks=cbs, verbose=0)
    (out / "history.json").write_text(json.dumps({k: [float(v) for v in vs] for k, vs in h.history.items()}))
    print(f"keras {design} {variant or ''} -> {out}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("design", choices=sorted(DESIGNS))
    ap.add_argument("--variant", choices=["f10", "mb"])
    a = ap.parse_args()
    train(a.design, a.variant)


if __name__ == "__main__":
    main()
