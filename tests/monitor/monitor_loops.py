"""Tiny deterministic CPU training loops shared by the monitor tests (real torch, no mocks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def regression_data(seed: int = 0, n: int = 256, d: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, x @ torch.randn(d, 1, generator=g)


def mlp(seed: int = 0, d: int = 8, h: int = 16) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.Tanh(), torch.nn.Linear(h, 1))


def train(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    steps: int,
    *,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    shift_at: int | None = None,
    shift: float = 0.0,
    batch: int | None = None,
    after_step: Callable[[int, float], Any] | None = None,
) -> list[float]:
    """Full-batch (or fixed-order minibatch) MSE training; returns the per-step losses.

    ``shift_at``: from that step on the targets move by ``shift`` — the gradients re-grow, which is
    what turns a collapsed v into a blowup.
    """
    x, y = data if data is not None else regression_data()
    losses = []
    for step in range(1, steps + 1):
        if shift_at is not None and step == shift_at:
            y = y + shift
        if batch is None:
            xb, yb = x, y
        else:
            i = ((step - 1) * batch) % x.shape[0]
            xb, yb = x[i : i + batch], y[i : i + batch]
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(xb), yb)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if after_step is not None:
            after_step(step, losses[-1])
    return losses
