"""Writes tests/fixtures/detectron2: training logs written by Detectron2's own trainer and writers —
``SimpleTrainer`` (detectron2/engine/train_loop.py: puts ``total_loss``, each loss and ``data_time`` in its
EventStorage every iteration) and the writers ``DefaultTrainer.build_writers`` makes: ``JSONWriter``
(``metrics.json``, one JSON object per write) and ``TensorboardXWriter`` (event files), both writing each loss as the
**median of its last 20 iterations** (``window_size=20``, the loss's ``smoothing_hint``) every 20 iterations
(``PeriodicWriter(period=20)``); ``lr`` as put, unsmoothed, as detectron2's LRScheduler hook does.

Detectron2 is not on PyPI and needs a compiled extension for its models, but its trainer and writers are plain
Python: this script runs them from a source checkout (commit 02b5c4e2 of facebookresearch/detectron2) with their
few dependencies::

    git clone https://github.com/facebookresearch/detectron2 /tmp/d2   # or its source tree
    pip install --target /tmp/d2site --no-deps fvcore iopath portalocker tabulate termcolor
    PYTHONPATH=/tmp/d2:/tmp/d2site python tools/runlab/make_detectron2_fixtures.py

The hooks (PeriodicWriter, the lr put) are detectron2's two-line ``after_step`` bodies, written out here because
detectron2/engine/hooks.py imports its model zoo. Runs (a small regression, Adam, 300 iterations at most):

- ``badbatch/``: targets x100 for the one batch of iteration 150 — a raw loss spike of one iteration, which no
  median of 20 shows;
- ``diverge/``: lr warmed up linearly to 0.5 over 300 iterations: the loss blows up, turns non-finite, and
  ``write_metrics`` raises FloatingPointError (what stops a detectron2 run) — the writers' last write is at the
  iteration before.

``expected.json``: per run, every iteration's raw losses (what the medians were taken of) and the iteration the raw
total loss first went 10x above its running minimum.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ITERS = 300
PERIOD = 20  # PeriodicWriter's default in DefaultTrainer.build_hooks
BAD_ITER = 150


def _train_loop() -> Any:
    """detectron2/engine/train_loop.py, loaded without detectron2/engine/__init__.py (which imports the model zoo)."""
    import detectron2

    path = Path(detectron2.__file__).parent / "engine" / "train_loop.py"
    spec = importlib.util.spec_from_file_location("detectron2_train_loop", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def train(out: Path, name: str, *, bad_iter: int | None, peak_lr: float | None) -> dict[str, Any]:
    import torch
    from detectron2.utils.events import JSONWriter, TensorboardXWriter

    tl = _train_loop()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2048, 16, generator=g)
    w_true = torch.randn(16, 2, generator=g)
    y = x @ w_true + 0.1 * torch.randn(2048, 2, generator=g)
    raw: list[dict[str, float]] = []

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))

        def forward(self, batch: tuple[Any, Any]) -> dict[str, Any]:
            xb, yb = batch
            out = self.net(xb)
            losses = {
                "loss_a": torch.nn.functional.mse_loss(out[:, 0], yb[:, 0]),
                "loss_b": torch.nn.functional.mse_loss(out[:, 1], yb[:, 1]),
            }
            raw.append({k: float(v.detach()) for k, v in losses.items()})
            return losses

    def batches() -> Any:
        it = 0
        while True:
            idx = torch.randint(0, 2048, (32,), generator=g)
            xb, yb = x[idx], y[idx]
            if bad_iter is not None and it == bad_iter:
                yb = yb * 100.0
            yield xb, yb
            it += 1

    model = Model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3 if peak_lr is None else peak_lr / ITERS)
    trainer = tl.SimpleTrainer(model, batches(), opt)
    d = out / name
    d.mkdir(parents=True)
    writers = [JSONWriter(str(d / "metrics.json")), TensorboardXWriter(str(d))]

    class LRAndWriters(tl.HookBase):
        def after_step(self) -> None:
            # detectron2's LRScheduler hook: the lr of the step just taken, unsmoothed
            self.trainer.storage.put_scalar("lr", opt.param_groups[0]["lr"], smoothing_hint=False)
            if peak_lr is not None:
                for group in opt.param_groups:
                    group["lr"] = peak_lr * min(1.0, (self.trainer.iter + 2) / ITERS)
            # PeriodicWriter.after_step
            if (self.trainer.iter + 1) % PERIOD == 0 or self.trainer.iter == self.trainer.max_iter - 1:
                for w in writers:
                    w.write()

        def after_train(self) -> None:  # PeriodicWriter.after_train
            for w in writers:
                w.write()
                w.close()

    trainer.register_hooks([LRAndWriters()])
    stopped = None
    try:
        trainer.train(0, ITERS)
    except FloatingPointError as e:
        stopped = str(e).splitlines()[0]
    totals = [sum(r.values()) for r in raw]
    floor, onset = math.inf, None
    for i, t in enumerate(totals):
        if onset is None and math.isfinite(floor) and not (t < 10 * floor):
            onset = i
        floor = min(floor, t)
    return {"raw": raw, "raw_onset": onset, "stopped": stopped}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "detectron2")
    a = p.parse_args(argv)
    if a.out.exists():
        shutil.rmtree(a.out)
    a.out.mkdir(parents=True)
    expected = {
        "badbatch": train(a.out, "badbatch", bad_iter=BAD_ITER, peak_lr=None),
        "diverge": train(a.out, "diverge", bad_iter=None, peak_lr=0.5),
    }
    (a.out / "expected.json").write_text(json.dumps(expected, indent=0, sort_keys=True) + "\n")
    for name, e in expected.items():
        print(name, "iterations", len(e["raw"]), "raw onset", e["raw_onset"], "stopped:", e["stopped"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
