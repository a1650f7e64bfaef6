"""Two step quantities, read the same way by inspect, scan and replay (issue 13 item 5):
``optimizer_step`` (Adam's t, the per-parameter state step) and ``log_step`` (global_step & co, what
the event files count), with a warning when they disagree; replay loads through the one safe loader."""

from __future__ import annotations

import fractions
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from adamdiag.cli import app

runner = CliRunner()


def _checkpoint(path: Path, **extra: object) -> Path:
    """A real Adam after 7 steps, saved with ``extra`` keys beside model and optimizer."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(7):
        model(torch.randn(4, 3)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), **extra}, path)
    return path


def test_step_and_global_step_are_read_alike_by_inspect_scan_and_replay(tmp_path):
    from adamdiag.pipeline.scan import load_checkpoint_summaries
    from adamdiag.replay.checkpoint import load_replay_checkpoint

    f = _checkpoint(tmp_path / "ck.pt", step=7, global_step=7000)
    res = runner.invoke(app, ["inspect", str(f), "--format", "json"])
    assert res.exit_code == 0, res.output
    (ck,) = json.loads(res.stdout)["checkpoints"]
    assert (ck["step"], ck["log_step"], ck["optimizer_step"]) == (7000, 7000, 7)
    assert all(t["step"] == 7 for t in ck["tensors"])  # each tensor's bias correction: Adam's own t
    msg = "log_step 7000 (global_step) and optimizer_step 7 (the optimizer's own step count) disagree"
    assert any(msg in w for w in ck["warnings"])
    warnings: list[str] = []
    (s,), _ = load_checkpoint_summaries(f, trust=False, convention=None, warnings=warnings)
    assert (s.step, s.optimizer_step) == (7000, 7) and any(msg in w for w in s.warnings)
    rc = load_replay_checkpoint(f)
    assert (rc.step, rc.optimizer_step) == (7000, 7) and any(msg in n for n in rc.notes)
    # in agreement: no warning
    g = _checkpoint(tmp_path / "ok.pt", global_step=7)
    assert not any("disagree" in n for n in load_replay_checkpoint(g).notes)


def test_without_a_stated_step_the_optimizer_step_is_the_log_step(tmp_path):
    from adamdiag.io.checkpoints import open_checkpoint
    from adamdiag.replay.checkpoint import load_replay_checkpoint

    f = _checkpoint(tmp_path / "bare_500.pt")
    ck = open_checkpoint(f)
    assert (ck.log_step, ck.optimizer_step) == (7, 7) and not any("disagree" in w for w in ck.warnings)
    assert load_replay_checkpoint(f).step == 7


def test_replay_uses_the_one_safe_loader(tmp_path, capsys):
    """replay refuses what inspect refuses with inspect's message (the global named), and its trusted
    load prints the same warning."""
    from adamdiag.errors import UntrustedCheckpointError
    from adamdiag.replay.checkpoint import load_replay_checkpoint

    f = _checkpoint(tmp_path / "ck.pt", ratio=fractions.Fraction(1, 3), global_step=7)
    with pytest.raises(UntrustedCheckpointError, match=r"Unsupported global: GLOBAL fractions\.Fraction"):
        load_replay_checkpoint(f)
    res = runner.invoke(app, ["inspect", str(f)])
    assert res.exit_code == 2 and "GLOBAL fractions.Fraction" in res.output
    capsys.readouterr()
    ck = load_replay_checkpoint(f, trust=True)
    assert ck.step == 7 and "with full unpickling (--trust-checkpoint): this runs code from the file" in (
        capsys.readouterr().err
    )
