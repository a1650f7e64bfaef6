"""`adamdiag replay` on a run trained by a real PyTorch Lightning Trainer (its .ckpt, its TensorBoard
log): Lightning logs the loss of update t at step t-1, which replay reads by itself (--log-step-offset
auto), and the replay reproduces the logged loss bit for bit."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from realruns import project_module
from typer.testing import CliRunner

from adamdiag.cli import app

pytest.importorskip("lightning")

LIT = textwrap.dedent('''
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset
    import lightning as L

    BATCH, N = 16, 160

    def data():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(N, 6, generator=g)
        return TensorDataset(x, torch.sin(x[:, :2] * 2))

    class Lit(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.net = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 2))

        def compute_loss(self, batch):
            x, y = batch
            return ((self.net(x) - y) ** 2).mean()

        def training_step(self, batch, i):
            loss = self.compute_loss(batch)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2, eps=1e-8)

    def adamdiag_replay(checkpoint):
        """The replay entry point, as docs/replay.md describes it for Lightning."""
        ds = data()
        per_epoch = N // BATCH

        def batch(t):  # the batch of optimizer update t (1-based): shuffle=False
            k = (t - 1) % per_epoch
            return ds[k * BATCH:(k + 1) * BATCH]

        return {"model": Lit(), "batch": batch, "loss": lambda m, b: m.compute_loss(b)}
''')


@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory) -> Path:
    import warnings

    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader

    root = tmp_path_factory.mktemp("lightning")
    mod = project_module(root, "lit_project", LIT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = L.Trainer(
            max_steps=30,
            accelerator="cpu",
            logger=TensorBoardLogger(root, name="", version="run"),
            log_every_n_steps=1,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=10, save_top_k=-1)],
        )
        trainer.fit(mod.Lit(), DataLoader(mod.data(), batch_size=mod.BATCH, shuffle=False))
    return root


def _replay(run: Path, *extra: str):
    ckpt = run / "ckpt" / "epoch=0-step=10.ckpt"
    assert ckpt.exists(), sorted(p.name for p in (run / "ckpt").iterdir())
    return CliRunner().invoke(
        app,
        [
            "replay",
            str(ckpt),
            "--entry",
            f"{run / 'lit_project.py'}:adamdiag_replay",
            "--logdir",
            str(run / "run"),
            "--loss-tag",
            "train_loss",
            "--steps",
            "15",
            "--device",
            "cpu",
            *extra,
        ],
    )


def test_lightning_run_replays_bit_for_bit(lightning_run):
    res = _replay(lightning_run, "--format", "json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["start_step"] == 10  # global_step of the .ckpt = optimizer updates done
    assert d["fidelity"]["reproduced"] and d["fidelity"]["max_rel_dev"] == 0.0
    assert d["fidelity"]["compared_steps"] == 15
    assert any("logged step t-1" in w and "Lightning" in w for w in d["warnings"])


def test_lightning_without_the_offset_is_refused_with_the_fix(lightning_run):
    res = _replay(lightning_run, "--log-step-offset", "0")
    assert res.exit_code == 2
    assert "matches the log shifted by -1 step: pass --log-step-offset -1" in res.stderr
    res = _replay(lightning_run, "--log-step-offset", "minus one")
    assert res.exit_code == 2 and "--log-step-offset must be auto or an integer" in res.stderr
