"""Writes tests/fixtures/mmcv: a work_dir as OpenMMLab's mmcv 1.x runner leaves it (mmdetection 2.x, mmsegmentation
0.x, mmpose 0.x... before mmengine): ``<timestamp>.log.json`` (``TextLoggerHook``: one JSON line per logging interval —
``mode``, ``epoch``, ``iter`` (within the epoch, 1-based), ``lr`` of the first group, and the interval's means, every
float rounded to 5 decimals), the text log ``<timestamp>.log`` beside it (``Epoch [e][i/N]``), the same values through
``TensorboardLoggerHook`` (event files under ``tf_logs/``, at the global iteration), and ``epoch_N.pth`` checkpoints
with the optimizer's state and ``meta`` (``epoch``, ``iter``).

mmcv 1.x needs a compiled build only for its ops; its runner and hooks are plain Python, run here from its source (tag
v1.7.2) with its few pure-Python dependencies::

    git clone -b v1.7.2 https://github.com/open-mmlab/mmcv /tmp/mmcv17
    pip install --target /tmp/mmcvsite --no-deps addict yapf opencv-python-headless platformdirs
    mkdir -p /tmp/tvstub/torchvision && touch /tmp/tvstub/torchvision/__init__.py
    PYTHONPATH=/tmp/mmcv17:/tmp/mmcvsite:/tmp/tvstub python tools/runlab/make_mmcv_fixtures.py

(mmcv/runner/checkpoint.py imports torchvision at its top for model-zoo URLs this script never uses; torchvision for
torch 2.13 has no CPU build on the machine that made the fixture, so an empty package stands in for it — nothing of
the run goes through it.)

The run: ``EpochBasedRunner`` (the mmdet 2.x default), a small regression, Adam, 6 epochs of 40 iterations (batch
16), ``log_config`` interval 10, ``OptimizerHook(grad_clip=dict(max_norm=100))`` (so ``grad_norm`` is logged, before
clipping — a bound that never binds here), a validation after every epoch, checkpoints every 2 epochs. The lr warms
up linearly to 0.5 over the 240 iterations: the loss diverges in the last epochs.

``expected.json``: every iteration's raw loss (what the logged interval means were taken of) and the global
iteration the raw loss first went 10x above its running minimum.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EPOCHS, ITERS, BATCH, INTERVAL = 6, 40, 16, 10
PEAK_LR = 0.5


def write_iter_based(work_dir: Path, x: Any, y: Any) -> list[float]:
    """``work_dir_iter/``: the same model under ``IterBasedRunner`` (mmseg 0.x's default): 60 iterations, log
    interval 10 — its json log's ``iter`` is the global iteration (``Iter [i/60]`` in the text log). Returns the raw
    losses."""
    import time

    import torch
    from mmcv.runner import IterBasedRunner
    from mmcv.utils import get_logger

    work_dir.mkdir()
    torch.manual_seed(0)
    raw: list[float] = []

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(16, 1)

        def train_step(self, batch: Any, optimizer: Any, **kw: Any) -> dict[str, Any]:
            loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
            raw.append(float(loss.detach()))
            return {"loss": loss, "log_vars": {"loss": float(loss.detach())}, "num_samples": len(batch[0])}

    model = Model()
    timestamp = time.strftime("%Y%m%d_%H%M%S", time.localtime())
    logger = get_logger("mmseg", log_file=str(work_dir / f"{timestamp}.log"))
    runner = IterBasedRunner(
        model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-2), work_dir=str(work_dir), logger=logger
    )
    runner.timestamp = timestamp
    runner.register_training_hooks(
        lr_config=None,
        optimizer_config={},
        log_config={"interval": INTERVAL, "by_epoch": False, "hooks": [{"type": "TextLoggerHook", "by_epoch": False}]},
    )
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=False)
    runner.run([loader], [("train", 60)], max_iters=60)
    return raw


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "mmcv")
    a = p.parse_args(argv)

    import time

    import torch
    from mmcv.runner import EpochBasedRunner, Hook
    from mmcv.utils import get_logger

    if a.out.exists():
        shutil.rmtree(a.out)
    a.out.mkdir(parents=True)
    a.out = a.out.resolve()
    os.chdir(a.out)  # the paths the checkpoints' meta keeps are relative: the fixture names no machine's folders
    work_dir = Path("work_dir")
    work_dir.mkdir()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(ITERS * BATCH, 16, generator=g)
    y = x @ torch.randn(16, 1, generator=g)
    raw: list[float] = []

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))

        def train_step(self, batch: Any, optimizer: Any, **kw: Any) -> dict[str, Any]:
            loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
            raw.append(float(loss.detach()))
            return {"loss": loss, "log_vars": {"loss": float(loss.detach())}, "num_samples": len(batch[0])}

        def val_step(self, batch: Any, optimizer: Any = None, **kw: Any) -> dict[str, Any]:
            with torch.no_grad():
                loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
            return {"log_vars": {"val_loss": float(loss)}, "num_samples": len(batch[0])}

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=False)
    model = Model()
    optimizer = torch.optim.Adam(model.parameters(), lr=PEAK_LR / (EPOCHS * ITERS))
    # as mmdet 2.x's train_detector: the text log named by the run's timestamp, and the runner told that timestamp
    timestamp = time.strftime("%Y%m%d_%H%M%S", time.localtime())
    logger = get_logger("mmdet", log_file=str(work_dir / f"{timestamp}.log"))
    # as mmdet 2.x's train.py: the config's pretty text in the meta (the json log's first line)
    from mmcv import Config

    cfg = Config(
        {
            "optimizer": {"type": "Adam", "lr": PEAK_LR, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
            "optimizer_config": {"grad_clip": {"max_norm": 100.0, "norm_type": 2}},
            "lr_config": {"policy": "fixed", "warmup": "linear", "warmup_iters": EPOCHS * ITERS},
            "runner": {"type": "EpochBasedRunner", "max_epochs": EPOCHS},
            "log_config": {
                "interval": INTERVAL,
                "hooks": [{"type": "TextLoggerHook"}, {"type": "TensorboardLoggerHook"}],
            },
            "checkpoint_config": {"interval": 2},
        }
    )
    meta = {"env_info": "sys.platform: linux", "config": cfg.pretty_text, "seed": 0, "exp_name": "fixture.py"}
    runner = EpochBasedRunner(model, optimizer=optimizer, work_dir=str(work_dir), logger=logger, meta=meta)
    runner.timestamp = timestamp

    class LinearWarmup(Hook):  # the lr the LrUpdaterHook of a linear warm-up sets, before each iteration
        def before_train_iter(self, runner: Any) -> None:
            for group in runner.optimizer.param_groups:
                group["lr"] = PEAK_LR * (runner.iter + 1) / (EPOCHS * ITERS)

    runner.register_training_hooks(
        lr_config=None,
        optimizer_config={"grad_clip": {"max_norm": 100.0}},
        checkpoint_config={"interval": 2},
        log_config={
            "interval": INTERVAL,
            "hooks": [{"type": "TextLoggerHook"}, {"type": "TensorboardLoggerHook"}],
        },
    )
    runner.register_hook(LinearWarmup(), priority="HIGH")
    runner.run([loader, loader], [("train", 1), ("val", 1)], max_epochs=EPOCHS)
    for f in work_dir.glob("latest.pth"):  # a link to the newest checkpoint: the files themselves stay
        f.unlink()
    iter_raw = write_iter_based(Path("work_dir_iter"), x, y)
    floor, onset = math.inf, None
    for i, v in enumerate(raw, start=1):
        if onset is None and math.isfinite(floor) and not v < 10 * floor:
            onset = i
        floor = min(floor, v)
    (a.out / "expected.json").write_text(
        json.dumps(
            {
                "raw": raw,
                "raw_onset": onset,
                "iters_per_epoch": ITERS,
                "interval": INTERVAL,
                "iter_based_raw": iter_raw,
            },
            indent=0,
        )
        + "\n"
    )
    print("wrote", a.out, sorted(p.relative_to(a.out).as_posix() for p in a.out.rglob("*") if p.is_file()))
    print("raw onset", onset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
