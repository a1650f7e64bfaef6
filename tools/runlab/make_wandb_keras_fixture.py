"""Writes tests/fixtures/wandb/keras: a Keras 3 model trained with wandb's Keras callback WandbMetricsLogger
(log_freq=1) and Keras' own TensorBoard callback (update_freq=1) at once — the second half of every epoch has
targets moved by 50, so the loss jumps mid-epoch. tests/e2e/test_wandb_runs.py reads the wandb run as the Keras
TensorBoard log (the same tags, steps, values and verdict).

    python -m venv v && v/bin/pip install tensorflow-cpu==2.21.0 wandb      # wandb 0.31.0, keras 3.15.1 made it
    v/bin/python tools/runlab/make_wandb_keras_fixture.py [--out tests/fixtures/wandb/keras]
    v/bin/python tools/runlab/make_wandb_keras_fixture.py --out tests/fixtures/wandb/keras_freq5 --log-freq 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "wandb" / "keras")
    p.add_argument(
        "--log-freq", type=int, default=1, help="WandbMetricsLogger's log_freq and the callback's update_freq"
    )
    a = p.parse_args(argv)
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")
    import keras
    import numpy as np
    import wandb
    from wandb.integration.keras import WandbMetricsLogger

    out = a.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    keras.utils.set_random_seed(0)
    run = wandb.init(
        project="adamdiag-fixtures", dir=str(out), settings=wandb.Settings(x_disable_stats=True, console="off")
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1024, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 1))).astype("float32")
    y[512:] += 50.0
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="tanh"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.fit(
        x,
        y,
        batch_size=32,
        epochs=3,
        shuffle=False,
        verbose=0,
        callbacks=[
            WandbMetricsLogger(log_freq=a.log_freq),
            keras.callbacks.TensorBoard(str(out / "tb"), update_freq=a.log_freq),
        ],
    )
    run.finish()
    for junk in list(out.rglob("*.log")) + list(out.rglob("requirements.txt")):
        junk.unlink()
    print(f"wrote {out} (wandb {wandb.__version__}, keras {keras.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
