"""Mixed-precision loss scaling skips a step whose gradients overflow (torch's GradScaler, DeepSpeed's and
Megatron's fp16 scalers), and the logged gradient norm of that step is Inf — a few times at the start while
the scale calibrates, then now and then as it grows back. That is training as designed, not a failure:
scan used to call such a run `nonfinite` with an error, so `check` failed a healthy run. A real
GradScaler run, logged as HF Trainer logs it (the norm clip_grad_norm_ returns after unscale_)."""

from __future__ import annotations

import json
import math

import torch
from typer.testing import CliRunner

from adamdiag.cli import app


def _run(logdir, *, scaler: bool, steps: int = 400) -> list[float]:
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    # a scale at the edge of float32: every step that doubles it overflows, GradScaler skips it and halves
    # the scale again (growth_interval=1: a skipped step every other step, the rest train)
    sc = torch.amp.GradScaler("cpu", init_scale=2.0**127, growth_interval=1) if scaler else None
    x = torch.randn(128, 8)
    y = x @ torch.randn(8, 1)
    w = SummaryWriter(str(logdir))
    norms = []
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        if sc is not None:
            sc.scale(loss).backward()
            sc.unscale_(opt)
        else:
            loss.backward()
            if step == 200:  # an Inf gradient that the optimizer does take: the parameters turn NaN
                model[0].weight.grad[0, 0] = math.inf
        gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9))
        if sc is not None:
            sc.step(opt)
            sc.update()
        else:
            opt.step()
        w.add_scalar("train/loss", float(loss.detach()), step)
        w.add_scalar("train/grad_norm", gn, step)
        norms.append(gn)
    w.close()
    return norms


def test_overflow_steps_skipped_by_the_scaler_are_no_failure(tmp_path):
    norms = _run(tmp_path / "amp", scaler=True)
    skipped = [i + 1 for i, g in enumerate(norms) if not math.isfinite(g)]
    assert skipped[0] == 1 and len(skipped) >= 3, skipped  # the first step, then each time the scale grows back
    res = CliRunner().invoke(app, ["check", str(tmp_path / "amp"), "--format", "json"])
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["runs"]
    assert r["verdict"] == "healthy"
    (f,) = [f for f in r["findings"] if f["id"] == "AD401"]
    assert f["severity"] == "info" and "loss scaling" in f["message"]
    # an Inf norm between two finite ones is a skipped step, not a batch Adam absorbed
    assert not [f for f in r["findings"] if f["id"] == "AD301"], r["findings"]
    assert f["evidence"]["count"] == len(skipped) and f["evidence"]["steps"] == skipped[: len(f["evidence"]["steps"])]


def test_an_inf_gradient_the_optimizer_takes_is_still_a_failure(tmp_path):
    """Without a scaler the Inf step is taken, the parameters turn NaN and so does every later loss:
    `nonfinite`, an error, from the step of the Inf gradient norm."""
    _run(tmp_path / "fp32", scaler=False)
    res = CliRunner().invoke(app, ["check", str(tmp_path / "fp32"), "--format", "json"])
    assert res.exit_code == 1, res.output
    (r,) = json.loads(res.stdout)["runs"]
    assert r["verdict"] == "nonfinite"
    (f,) = [f for f in r["findings"] if f["id"] == "AD401"]
    assert f["severity"] == "error" and f["step"] == 200
