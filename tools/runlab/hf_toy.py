"""The small regression an HF Trainer trains in the framework tests and fixture scripts (tests/e2e/
test_hf_trainer_state.py, make_wandb_fixtures.py, make_mlflow_fixtures.py): 512 examples of a linear target,
an 8-32-1 tanh net, and a callback that moves the targets by 50 at one step — a blowup at a known step."""

from __future__ import annotations

from typing import Any

import torch


class ShiftableData(torch.utils.data.Dataset):
    """512 examples ``{"x", "y"}``, y linear in x (seed 0); ``shift`` is added to every target."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(512, 8, generator=g)
        self.y = self.x @ torch.randn(8, 1, generator=g)
        self.shift = 0.0

    def __len__(self) -> int:
        return 512

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i] + self.shift}


class Regressor(torch.nn.Module):
    """8-32-1 with tanh; returns the Trainer's ``{"loss": mse}``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        return {"loss": torch.nn.functional.mse_loss(self.net(x), y)}


def move_targets_at(data: ShiftableData, step: int, by: float = 50.0) -> Any:
    """A TrainerCallback that adds ``by`` to the targets once the Trainer's global step reaches ``step``."""
    from transformers import TrainerCallback

    class MoveTargets(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == step:
                data.shift = by

    return MoveTargets()


def training_args(output_dir: str, report_to: str | list[str], **overrides: Any) -> Any:
    """The TrainingArguments of these runs: 120 steps of 16 examples at a constant lr 1e-2, a log every 2 steps,
    on the CPU; ``overrides`` for the rest (save_steps, adam_epsilon, run_name, ...)."""
    from transformers import TrainingArguments

    kw: dict[str, Any] = dict(
        max_steps=120,
        per_device_train_batch_size=16,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        logging_steps=2,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return TrainingArguments(output_dir, report_to=report_to, **{**kw, **overrides})
