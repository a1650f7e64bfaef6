"""A plain PyTorch training loop that exposes the replay entry point adamdiag needs (docs/replay.md).

    python examples/replay_entry.py runs/demo      # train: event file + checkpoints in runs/demo
    adamdiag scan runs/demo                         # why did it blow up?
    adamdiag replay runs/demo/checkpoints/step_000090.pt --entry examples/replay_entry.py:adamdiag_replay

The whole contract: ``batch(t)`` is the batch of update t (1-based, the same on every call), and the loss
logged at step t is ``loss(model, batch(t))`` computed before update t. Here 32 of the 40 features go
quiet after step 100 (v collapses) and come back at step 341 (the step explodes); eps >= 1e-3 avoids it.
The collapse is per element — the weight's mean v stays up with its 8 active inputs — so scan reads it
from the checkpoints' quantiles (v_collapse, medium: lr/3 avoids it too).
"""

import sys
from pathlib import Path

import torch
from torch import nn

STEPS, CHECKPOINTS = 380, (90, 300)
W = torch.randn(40, generator=torch.Generator().manual_seed(123)) / 40**0.5


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(40, 1)


def batch(t: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + t)  # seeded by t: a replay sees the very same batches
    x = torch.randn(32, 40, generator=g)
    if 100 < t <= 340:
        x[:, 8:] *= 1e-4
    return x, (x @ W)[:, None] + 0.1 * torch.randn(32, 1, generator=g)


def loss(model: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = b
    return ((model(x) - y) ** 2).mean()


def adamdiag_replay(checkpoint: str) -> dict:
    """What adamdiag calls: the architecture (it loads the checkpoint's weights), batches and loss."""
    return {"model": make_model(), "batch": batch, "loss": loss, "clip_grad_norm": None}


def train(out: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    model, writer = make_model(), SummaryWriter(str(out))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.9), eps=1e-8)
    for t in range(1, STEPS + 1):
        value = loss(model, batch(t))
        writer.add_scalar("train/loss", value.item(), t)  # the loss of batch t, before update t
        opt.zero_grad()
        value.backward()
        opt.step()
        if t in CHECKPOINTS:  # after t updates, with the step count
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": t}
            torch.save(state, out / "checkpoints" / f"step_{t:06d}.pt")
    writer.close()


if __name__ == "__main__":
    train(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/replay_entry_demo"))
