"""Checkpoints count optimizer steps. A loss logged once per epoch at ``step=epoch`` puts every checkpoint far past
the log's end (none can be placed on it); one logged against the tokens seen puts every checkpoint far before the
log's start (taken for early steps of it, so a replay start "before the blowup" may be one saved after it). scan
says so (AD901 warning) instead of quietly diagnosing; logged per optimizer step, the same run gets no warning."""

from __future__ import annotations

from pathlib import Path

import torch

from adamdiag.pipeline.scan import scan_paths

BATCHES = 16


TOKENS_PER_STEP = 16 * 64


def _run(out: Path, per_epoch: bool, epochs: int = 20, tokens: bool = False) -> None:
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    w = SummaryWriter(str(out))
    step = 0
    for epoch in range(epochs):
        total = 0.0
        for _ in range(BATCHES):
            idx = torch.randint(0, 256, (16,))
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            step += 1
            total += loss.item()
            if not per_epoch:
                w.add_scalar("train/loss", loss.item(), step * TOKENS_PER_STEP if tokens else step)
        if per_epoch:
            w.add_scalar("train/loss", total / BATCHES, epoch)
        if epoch % 5 == 4:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, out / f"ckpt_{epoch}.pt")
    w.close()


def _past(out: Path) -> list:
    (rep,) = scan_paths([out]).runs
    return [f for f in rep.findings if f.id == "AD901" and "past the log's last step" in f.message]


def test_a_per_epoch_log_is_said_to_miss_the_checkpoints(tmp_path: Path) -> None:
    _run(tmp_path, per_epoch=True)
    (f,) = _past(tmp_path)
    assert f.severity == "warning" and "steps 80–320" in f.message and "(19)" in f.message


def test_a_per_token_log_is_said_to_start_after_the_checkpoints(tmp_path: Path) -> None:
    _run(tmp_path, per_epoch=False, tokens=True)
    (rep,) = scan_paths([tmp_path]).runs
    (f,) = [f for f in rep.findings if f.id == "AD901" and "before the log's first step" in f.message]
    assert f.severity == "warning" and f"({TOKENS_PER_STEP})" in f.message and "steps 80–320" in f.message


def test_a_per_step_log_is_not(tmp_path: Path) -> None:
    _run(tmp_path, per_epoch=False)
    (rep,) = scan_paths([tmp_path]).runs
    assert not [f for f in rep.findings if f.id == "AD901" and "log's" in f.message and "checkpoint" in f.message]
