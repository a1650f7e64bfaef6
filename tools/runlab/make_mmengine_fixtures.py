"""Writes tests/fixtures/mmengine: an OpenMMLab ``mmengine`` Runner's work_dir, as mmengine itself writes it, read by
adamdiag in tests/io/test_mmengine.py (adamdiag never imports mmengine).

    python -m venv v && v/bin/pip install torch==2.13.0 mmengine tensorboard   # made with mmengine 0.10.7
    v/bin/python tools/runlab/make_mmengine_fixtures.py [--out tests/fixtures/mmengine]

The training: a regression (8 inputs, Linear(8, 32), Tanh, Linear(32, 1)) through ``mmengine.runner.Runner`` with an
``AdamW`` optim_wrapper (lr 3e-3, betas (0.9, 0.98), eps 1e-6, ``clip_grad`` max_norm 10: mmengine then logs
``grad_norm``), batches of 8 in order, one epoch of 120 iterations; the targets of the second half of the data are
moved by +40, so the loss jumps at iteration 61. Logged every iteration (``LoggerHook(interval=1)``,
``LogProcessor(window_size=1)``: mmengine logs the mean over the last ``window_size`` iterations) to both
``LocalVisBackend`` (``<timestamp>/vis_data/scalars.json``, mmengine's default) and ``TensorboardVisBackend``;
checkpoints ``iter_40.pth``, ``iter_80.pth``, ``iter_120.pth`` (``CheckpointHook(interval=40, by_epoch=False)``: the
message hub they carry pickles mmengine's HistoryBuffer objects); a validation at the epoch's end (its ``mse``
and timings: a line without ``iter`` at step = the epoch).

``expected.json``: per checkpoint, the optimizer's step and per-parameter mean v / max v as the live optimizer held
them when it was saved, and the losses mmengine computed at each iteration.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
N, BATCH, SHIFT_FROM = 960, 8, 480


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "mmengine")
    a = p.parse_args(argv)
    import mmengine
    import torch
    from mmengine.evaluator import BaseMetric, Evaluator
    from mmengine.hooks import Hook
    from mmengine.model import BaseModel
    from mmengine.runner import Runner
    from torch.utils.data import Dataset

    out = a.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    work = out / "work_dir"

    class Regression(Dataset):
        def __init__(self) -> None:
            g = torch.Generator().manual_seed(0)
            self.x = torch.randn(N, 8, generator=g)
            w = torch.randn(8, 1, generator=g)
            self.y = self.x @ w
            self.y[SHIFT_FROM:] += 40.0

        def __len__(self) -> int:
            return N

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"x": self.x[i], "y": self.y[i]}

    class Net(BaseModel):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))

        def forward(self, x: Any, y: Any, mode: str = "loss") -> Any:
            pred = self.net(x)
            return {"loss": ((pred - y) ** 2).mean()} if mode == "loss" else (pred, y)

    recorded: dict[str, Any] = {"losses": {}, "checkpoints": {}}

    class MeanSquaredError(BaseMetric):
        """The validation metric (mmengine logs it at the epoch, beside the validation's timings)."""

        def process(self, data_batch: Any, data_samples: Any) -> None:
            pred, y = data_samples
            self.results.append(float(((pred - y) ** 2).mean()))

        def compute_metrics(self, results: list) -> dict:
            return {"mse": sum(results) / len(results)}

    class Record(Hook):
        """The loss of each iteration, and the optimizer's state at each checkpoint (saved after this hook)."""

        priority = "HIGHEST"

        def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
            it = runner.iter + 1
            recorded["losses"][it] = float(outputs["loss"])
            if it % 40 == 0:
                opt = runner.optim_wrapper.optimizer
                names = [n for n, _ in runner.model.named_parameters()]
                tensors = {}
                for n, prm in zip(names, runner.model.parameters()):
                    st = opt.state[prm]
                    v = st["exp_avg_sq"].double()
                    tensors[n] = {"step": int(st["step"]), "v_mean": float(v.mean()), "v_max": float(v.max())}
                recorded["checkpoints"][f"iter_{it}.pth"] = tensors

    torch.manual_seed(0)
    runner = Runner(
        model=Net(),
        work_dir=str(work),
        train_dataloader={
            "dataset": Regression(),
            "sampler": {"type": "DefaultSampler", "shuffle": False},
            "batch_size": BATCH,
            "collate_fn": {"type": "default_collate"},
        },
        train_cfg={"by_epoch": True, "max_epochs": 1, "val_interval": 1},
        val_dataloader={
            "dataset": Regression(),
            "sampler": {"type": "DefaultSampler", "shuffle": False},
            "batch_size": 64,
            "collate_fn": {"type": "default_collate"},
        },
        val_cfg={},
        val_evaluator=Evaluator(MeanSquaredError()),
        optim_wrapper={
            "optimizer": {"type": "AdamW", "lr": 3e-3, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.01},
            "clip_grad": {"max_norm": 10.0},
        },
        default_hooks={
            "checkpoint": {"type": "CheckpointHook", "interval": 40, "by_epoch": False},
            "logger": {"type": "LoggerHook", "interval": 1},
        },
        custom_hooks=[Record()],
        log_processor={"window_size": 1, "by_epoch": True},
        visualizer={
            "type": "Visualizer",
            "vis_backends": [{"type": "LocalVisBackend"}, {"type": "TensorboardVisBackend"}],
        },
        randomness={"seed": 0},
    )
    runner.train()
    import logging

    logging.shutdown()
    for junk in work.rglob("*.log"):  # the text log: host names and timings, not read
        junk.unlink()
    recorded["made_with"] = {"mmengine": mmengine.__version__, "torch": torch.__version__}
    recorded["blowup_iteration"] = SHIFT_FROM // BATCH + 1
    (out / "expected.json").write_text(json.dumps(recorded, indent=1) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e3:.0f} kB; mmengine {mmengine.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
