"""Writes ``tests/fixtures/lightning_epoch/``: a real Lightning run whose epochs are shorter than its logging
interval (session 12's framework probe).

fwprobe's ``lr_high`` design (an MLP regression trained full batch — one update per epoch — with a linear
warm-up to lr 1.0; the loss falls to ~0.05, then diverges near step 80 and never recovers), cut at 120 epochs,
with ``self.log("train_loss", loss, on_step=True, on_epoch=True)`` and Lightning's defaults:
``TensorBoardLogger`` (``lightning_logs/version_0``, ``hparams.yaml``, the ``epoch`` scalar, ``hp_metric``)
and ``log_every_n_steps=50`` — so ``train_loss_step`` has two points (steps 49, 99) and ``train_loss_epoch``
one per step. Checkpointing is off (the default ``ModelCheckpoint`` keeps only the last epoch, after the
blowup, and would add ~60 kB for nothing the test reads). ``truth.json``: the loss of every update, as
``fwprobe._loop``'s plain torch loop computes it on the same batches, for the test to compare with.

    .venv/bin/python tools/fwprobe/make_lightning_fixture.py     # lightning 2.6.6, torch 2.13.0 (CPU)
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fwprobe  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "lightning_epoch"
EPOCHS = 120


def truth() -> list[float]:
    """The loss before each update 1..EPOCHS, recomputed by a plain loop (Lightning logs update t's loss at
    step t-1: its global_step before the update)."""
    design = fwprobe.DESIGNS["lr_high"]
    model = fwprobe.net()
    opt = torch.optim.Adam(model.parameters(), lr=design["lr"], betas=design["betas"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: fwprobe.lr_factor(design, s))
    x, y = fwprobe.data()
    out = []
    for _ in range(EPOCHS):
        loss = F.mse_loss(model(x).squeeze(-1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        out.append(loss.item())
    return out


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    fwprobe.run_lightning("lr_high", None, OUT, steps=EPOCHS, checkpointing=False)
    (OUT / "truth.json").write_text(json.dumps({"loss_before_update": truth()}))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
