"""The small regression a Lightning Trainer trains in the framework tests and the trackers' fixture scripts
(tests/e2e/test_lightning_csv_log.py, make_wandb_fixtures.py, make_mlflow_fixtures.py,
make_dvclive_lightning_fixture.py): 512 examples of a linear target (seed 0), an 8-32-1 tanh net with Adam at lr
1e-2, and targets moved by 50 from global step ``shift_at`` on — a blowup at a known step — logged through the
loggers given."""

from __future__ import annotations

from typing import Any


def fit_shifted(
    loggers: list[Any],
    *,
    tag: str,
    shift_at: int = 60,
    max_steps: int = 100,
    log_every: int = 5,
    hparams: dict[str, Any] | None = None,
    callbacks: list[Any] | None = None,
) -> Any:
    """Train the regression for ``max_steps`` with ``loggers``, its loss logged as ``tag`` every ``log_every``
    steps (``hparams``: save_hyperparameters; ``callbacks``: the Trainer's); returns the Trainer."""
    import lightning as L
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g)

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            if hparams:
                self.save_hyperparameters(hparams)
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))

        def training_step(self, batch: Any, i: int) -> torch.Tensor:
            shift = 50.0 if self.global_step >= shift_at else 0.0
            loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1] + shift)
            self.log(tag, loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    trainer = L.Trainer(
        max_steps=max_steps,
        logger=loggers,
        log_every_n_steps=log_every,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=callbacks,
    )
    trainer.fit(Module(), loader)
    return trainer


def sample_rows(name: str, tags: tuple[str, ...]) -> dict[int, dict[str, float]]:
    """step -> {tag: value} of sample_logs/<name>'s ``tags``, read with TensorBoard's own EventAccumulator (the
    values the fixture scripts log again through a tracker)."""
    from pathlib import Path

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(
        str(Path(__file__).resolve().parents[2] / "sample_logs" / name), size_guidance={"scalars": 0}
    )
    acc.Reload()
    rows: dict[int, dict[str, float]] = {}
    for tag in tags:
        for ev in acc.Scalars(tag):
            rows.setdefault(ev.step, {})[tag] = float(ev.value)
    return rows
