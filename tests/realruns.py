"""Tiny real training runs for tests: a real model, real torch.optim.Adam, real SummaryWriter and
torch.save checkpoints — with the failure injected the way it happens in practice (a corrupted
batch, NaN in the data, a huge eps, a too-high learning rate). Each takes well under a second.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn


def train_tiny(
    out: Path,
    *,
    steps: int = 400,
    lr: float = 1e-2,
    eps: float = 1e-8,
    seed: int = 0,
    bad_batch_at: int | None = None,
    bad_batch_scale: float = 1e3,
    label_shift_from: int | None = None,
    nan_at: int | None = None,
    log_grad_norm: bool = True,
    ckpt_every: int | None = 100,
    noise: float = 0.1,
    monitor_every: int | None = None,
) -> Path:
    """Regression with a small MLP on a fixed noisy data set, mini-batches of 32. ``monitor_every``:
    an :class:`adamdiag.monitor.AdamMonitor` watches the optimizer and writes its ``adamdiag/*`` tags
    into the same event file every that many steps (as a user's monitored run does)."""
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 8, generator=g)
    w_true = torch.randn(8, 1, generator=g)
    y = torch.tanh(x @ w_true) + noise * torch.randn(512, 1, generator=g)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=lr, eps=eps)
    out.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=str(out))
    mon = None
    if monitor_every:
        from adamdiag.monitor import AdamMonitor

        mon = AdamMonitor(opt, model=model, writer=writer, every=monitor_every, run_dir=str(out))
    for step in range(1, steps + 1):
        idx = torch.randint(0, 512, (32,), generator=g)
        xb, yb = x[idx].clone(), y[idx].clone()
        if bad_batch_at == step:
            yb = yb * bad_batch_scale  # a corrupted label batch: one-step loss and gradient spike
        if label_shift_from is not None and step >= label_shift_from:
            yb = yb * bad_batch_scale  # every batch from then on (a data shift): the loss rises and stays up
        if nan_at is not None and step >= nan_at:
            xb[0, 0] = math.nan
        loss = nn.functional.mse_loss(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        gn = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
        opt.step()
        writer.add_scalar("train/loss", loss.item(), step)
        if log_grad_norm:
            writer.add_scalar("train/grad_norm", gn.item(), step)
        writer.add_scalar("train/lr", lr, step)
        if ckpt_every and step % ckpt_every == 0:
            (out / "checkpoints").mkdir(exist_ok=True)
            torch.save(
                {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step},
                out / "checkpoints" / f"step_{step:06d}.pt",
            )
    if mon is not None:
        mon.close()
    writer.close()
    return out


def project_module(root: Path, name: str, source: str):
    """Write a user's training project (``source``) to ``root/<name>.py`` and import it: the same file
    then serves the test's training run and, as ``--entry <file>:adamdiag_replay``, the replay."""
    import importlib.util
    import sys

    path = root / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


# The lab's replay entry for its runs (tools/runlab is on the test pythonpath).
ENTRY = f"{Path(__file__).resolve().parents[1] / 'tools' / 'runlab' / 'multitask.py'}:adamdiag_replay"


def train_sh99(out: Path, steps: int = 520) -> dict:
    """The lab's multi-task MLP ("tiny", regression heads, 32 examples, full batch, lr 3e-3, β2 0.99,
    eps 1e-8, checkpoints every 50): fits its targets to ~1e-7, then v collapses and it blows up at step
    462. From the checkpoint at 450, eps 1e-3 avoids the blowup while lr/3 only postpones it."""
    import runlab

    return runlab.train(sh99_config(steps), out)


def sh99_config(steps: int = 520, ckpt_every: int = 50):
    """The RunConfig of :func:`train_sh99` (for loops that train it themselves, e.g. with a monitor)."""
    import multitask
    import runlab

    return runlab.RunConfig(
        name="sh99",
        family=multitask.FAMILY,
        size="tiny",
        data={**multitask.SAMPLE_DATA, "prob_weight": 0.0, "n_examples": 32},
        steps=steps,
        lr=3e-3,
        betas=(0.9, 0.99),
        eps=1e-8,
        ckpt_every=ckpt_every,
        seed=0,
    )
