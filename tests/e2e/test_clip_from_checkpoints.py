"""Clipping the log does not show: the usual torch loop logs what ``clip_grad_norm_`` returns — the norm
*before* clipping — while Adam squared the clipped gradient. The checkpoints' own v shows it: scan estimates
the clip from them (AD601) and rebuilds v from min(norm, clip), as ``--grad-clip`` would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adamdiag.cli import app

torch = pytest.importorskip("torch")


def _train(run: Path, *, clip: float | None, log_clipped: bool = False, steps: int = 300) -> None:
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(0)
    x = torch.randn(128, 8)
    y = torch.sin(x.sum(1, keepdim=True))
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    w = SummaryWriter(str(run))
    (run / "checkpoints").mkdir(parents=True)
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        if clip is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
            if log_clipped:
                norm = min(norm, clip)
        else:
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")))
        opt.step()
        w.add_scalar("train/loss", float(loss), step)
        w.add_scalar("train/grad_norm", norm, step)
        if step % 50 == 0:
            torch.save(
                {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step},
                run / "checkpoints" / f"step_{step:06d}.pt",
            )
    w.close()


def _scan(run: Path) -> dict:
    res = CliRunner().invoke(app, ["scan", str(run), "--format", "json"])
    assert res.exit_code in (0, 1), res.output
    return json.loads(res.stdout)["runs"][0]


def _clip_findings(r: dict) -> list[dict]:
    return [f for f in r["findings"] if f["id"] == "AD601"]


def test_the_clip_is_estimated_from_the_checkpoints(tmp_path: Path) -> None:
    run = tmp_path / "clipped"
    _train(run, clip=0.05)
    (f,) = _clip_findings(_scan(run))
    assert f["evidence"]["clip_norm"] == pytest.approx(0.05, rel=0.01), f
    assert "estimated from the checkpoints" in f["evidence"]["source"]


def test_no_clip_is_inferred_when_the_log_is_what_adam_saw(tmp_path: Path) -> None:
    _train(tmp_path / "plain", clip=None)
    _train(tmp_path / "logged_clipped", clip=0.05, log_clipped=True)
    assert _clip_findings(_scan(tmp_path / "plain")) == []
    assert _clip_findings(_scan(tmp_path / "logged_clipped")) == []
