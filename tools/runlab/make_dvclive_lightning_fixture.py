"""Writes tests/fixtures/dvclive/lightning: a Lightning Trainer logging through dvclive's DVCLiveLogger and a
TensorBoardLogger at once (targets move at global step 60; a log every 5 steps). DVCLiveLogger puts DVCLive's step
at the trainer's global step, so the folder reads as the TensorBoard log (tests/io/test_dvclive_log.py).

    v/bin/pip install dvclive lightning torch==2.13.0      # dvclive 3.49.1, lightning 2.6.6 made it
    v/bin/python tools/runlab/make_dvclive_lightning_fixture.py       # writes to ./ : run it in the fixture folder
"""

import lightning as L
import torch
from dvclive.lightning import DVCLiveLogger
from lightning.pytorch.loggers import TensorBoardLogger


class M(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters({"lr": 1e-2})
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))

    def training_step(self, b: list, i: int) -> torch.Tensor:
        s = 50.0 if self.global_step >= 60 else 0.0
        loss = torch.nn.functional.mse_loss(self.net(b[0]), b[1] + s)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def main() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g)
    torch.manual_seed(0)
    tr = L.Trainer(
        max_steps=100,
        logger=[DVCLiveLogger(dir="dvclive", save_dvc_exp=False), TensorBoardLogger(".", name="tb")],
        log_every_n_steps=5,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    tr.fit(M(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16))


if __name__ == "__main__":
    main()
