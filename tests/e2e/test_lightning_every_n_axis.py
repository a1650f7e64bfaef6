"""Lightning's every-N log is 0-based too: it logs when ``(global_step + 1) % log_every_n_steps == 0``, at
``global_step`` 9, 19, 29, ... for every 10 — the point logged at 9 holds the 10th update's gradient. The series has
no point at step 0, so session 21's "logged at step 0" test read it 1-based: every checkpoint seed one step off the
points around it and each logged g² standing for one step too few of its interval.

A real Lightning Trainer (``grad_norm`` logged in ``on_before_optimizer_step``, a ModelCheckpoint every 100 steps);
the truth is the optimizer's own state after every update. On a log this sparse r = g²/v̂ is an estimate either
way (each logged g² stands for its whole interval); read on Adam's count it is the closer one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from adamdiag.analysis.evidence import logged_zero_based, reconstruct
from adamdiag.cli import app
from adamdiag.io.events import read_run

pytest.importorskip("lightning")

EVERY = 10
STEPS = 240
BETA2 = 0.95  # a short memory: one step in ten of it is visible
TAG = "grad_2.0_norm_total"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, tuple[float, float]]]:
    """(run dir, {Adam's step t: (mean g² of update t, mean v̂ after it)})."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.utilities import grad_norm

    d = tmp_path_factory.mktemp("lightning_every_n")
    torch.manual_seed(1)
    x = torch.randn(256, 16)
    y = x[:, :1] * 2.0 + 5.0  # an offset the init lacks: gradients that change a lot over the run
    truth: dict[int, tuple[float, float]] = {}

    class Regression(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
            self.g2 = 0.0

        def training_step(self, batch: list[torch.Tensor], _: int) -> torch.Tensor:
            loss = ((self.net(batch[0]) - batch[1]) ** 2).mean()
            self.log("train_loss", loss)
            return loss

        def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
            self.log_dict(grad_norm(self, norm_type=2))
            params = list(self.parameters())
            self.g2 = float(sum((p.grad.double() ** 2).sum() for p in params)) / sum(p.numel() for p in params)

        def on_train_batch_end(self, *_: object) -> None:
            opt = self.optimizers().optimizer
            params = list(self.parameters())
            t = int(opt.state[params[0]]["step"])
            v = sum(float(opt.state[p]["exp_avg_sq"].double().sum()) for p in params) / sum(p.numel() for p in params)
            truth[t] = (self.g2, v / (1 - BETA2**t))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=3e-3, betas=(0.9, BETA2))

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    trainer = pl.Trainer(
        max_steps=STEPS,
        log_every_n_steps=EVERY,
        logger=TensorBoardLogger(str(d), name="", version=""),
        callbacks=[ModelCheckpoint(dirpath=d / "checkpoints", every_n_train_steps=100, save_top_k=-1)],
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(Regression(), data)
    return d, truth


def test_lightning_logs_on_the_every_n_grid(run: tuple[Path, dict[int, tuple[float, float]]]) -> None:
    d, _ = run
    s = read_run(d).scalars
    steps = np.sort(s.loc[s["tag"] == TAG, "step"].to_numpy())
    assert steps.tolist() == list(range(EVERY - 1, STEPS, EVERY))  # 9, 19, ..., 239: no point at step 0
    assert logged_zero_based(steps)


def test_r_is_read_on_adams_count(run: tuple[Path, dict[int, tuple[float, float]]]) -> None:
    d, truth = run
    res = CliRunner().invoke(app, ["scan", str(d), "--with-series", "--format", "json"])
    assert res.exit_code in (0, 1), res.output
    (report,) = json.loads(res.stdout)["runs"]
    assert report["grad_norm_tag"] == TAG and "checkpoints" in report["sources"]
    curve = report["series"]["r"]
    got = dict(zip(curve["step"], curve["value"]))
    logged = np.array(sorted(got), np.int64)
    true_r = {s: truth[s + 1][0] / truth[s][1] for s in logged[1:]}  # point s: update s+1 over v̂ after update s

    s = read_run(d).scalars
    norm = s[s["tag"] == TAG].sort_values("step")["value"].to_numpy(np.float64)
    n = 16 * 32 + 32 + 32 + 1
    seeds = [(t, truth[t][1] * (1 - BETA2**t)) for t in (100, 200)]  # the checkpoints' mean v

    def error(r: dict[int, float]) -> float:
        return float(np.median([abs(r[s] / true_r[s] - 1) for s in true_r]))

    read = {zb: reconstruct(logged, norm**2 / n, BETA2, seeds, 0.0, "g", zero_based=zb).r for zb in (True, False)}
    as_adam, as_one_based = ({int(s): float(x) for s, x in zip(logged, read[zb])} for zb in (True, False))
    # scan's curve is the 0-based reading (the checkpoints' own mean v matches the optimizer's to float32 sums) ...
    np.testing.assert_allclose([got[s] for s in true_r], [as_adam[s] for s in true_r], rtol=1e-5)
    # ... and the closer one: about 5% less median error on every seed and β2 tried (0.95, 0.999; seeds 0-2)
    assert error(got) < 0.97 * error(as_one_based), (error(got), error(as_one_based))
