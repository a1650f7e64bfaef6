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


def runlab() -> Any:
    """The training lab (tools/runlab, formerly examples/), or skip when this checkout has neither."""
    import importlib
    import sys
    from pathlib import Path

    import pytest

    root = Path(__file__).resolve().parents[2]
    for d in (root / "tools" / "runlab", root / "examples"):
        if (d / "runlab.py").exists():
            if str(d) not in sys.path:
                sys.path.insert(0, str(d))
            return importlib.import_module("runlab")
    pytest.skip("the training lab (tools/runlab) is not in this checkout")


def vcollapse_run(
    every: int,
    steps: int = 700,
    recipe: str = "vcollapse",
    grad_norms: list[float] | None = None,
    clip: float | None = None,
    **monitor_kw: Any,
) -> tuple[Any, list[float], list[dict], Any]:
    """A shipped ``sample_logs/<recipe>`` run trained with an AdamMonitor; returns (monitor, losses,
    per-step global signals, lab module). ``vcollapse``: full batch, lr 1e-2, eps 1e-8, the loss blows up
    at step 662 from a v collapse; ``stable_eps1e-3``: the same with eps 1e-3, which bounds the step.
    ``grad_norms``: gets each step's total gradient norm (before clipping, as HF Trainer logs it);
    ``clip``: clip the gradients to this norm before the step."""
    import json
    from pathlib import Path

    import torch

    from adamdiag.monitor import AdamMonitor

    lab = runlab()
    cfg_path = Path(__file__).resolve().parents[2] / "sample_logs" / recipe / "config.json"
    cfg = lab.RunConfig.from_json(json.loads(cfg_path.read_text())["config"])
    data = lab.build_data(cfg)
    model = lab.build_model(cfg)
    opt = lab.build_optimizer(cfg, model)
    mon = AdamMonitor(opt, model=model, every=every, **monitor_kw)
    losses: list[float] = []
    hist: list[dict] = []
    for step in range(1, steps + 1):
        batch = lab.batch_for_step(cfg, step, data)
        opt.zero_grad(set_to_none=True)
        loss = lab.total_loss(cfg, model, batch)
        loss.backward()
        if grad_norms is not None or clip is not None:
            params = [p for p in model.parameters() if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else float("inf"))
            if grad_norms is not None:
                grad_norms.append(float(norm))
        opt.step()
        losses.append(float(loss.detach()))
        mon.log_loss(step, losses[-1])
        if step % every == 0 and mon.last:
            hist.append({"step": step, **mon.last["global"]})
    return mon, losses, hist, lab
