"""scan takes the all-parameter trajectory from a gradient norm logged every step rather than from the
monitor's every-``every``-steps tags when the two agree at every step both have (a quiet stretch of 20 steps
is two of the monitor's points and an excursion between them is not seen); where they disagree — here a clip
the writer did not log, so the logged norm is not what Adam saw — the monitor's own values stand. Real
training runs (sample_logs/vcollapse's recipe) with a real SummaryWriter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from monitor_loops import vcollapse_run

import adamdiag.analysis.diagnose as diagnose
from adamdiag.pipeline.scan import scan_paths

STEPS = 300


def _write_run(run: Path, clip: float | None) -> None:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(run))
    norms: list[float] = []
    mon, losses, _, _ = vcollapse_run(every=10, steps=STEPS, writer=w, grad_norms=norms, clip=clip)
    for step, (loss, norm) in enumerate(zip(losses, norms, strict=True), 1):
        w.add_scalar("train/loss", loss, step)
        w.add_scalar("train/grad_norm", norm, step)
    mon.close()
    w.close()


def _global_trajectory(run: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    seen: list[Any] = []
    decide = diagnose.decide

    def keep(ev: Any) -> Any:
        seen.append(ev)
        return decide(ev)

    monkeypatch.setattr(diagnose, "decide", keep)
    rep = scan_paths([run]).runs[0]
    assert "monitor" in rep.sources
    (ev,) = seen
    assert any(t.source == "monitor" and t.label != "global" for t in ev.trajectories)  # tensors: the monitor's
    (g,) = [t for t in ev.trajectories if t.label == "global"]
    return g


def test_dense_logged_norm_that_agrees_gives_the_global_trajectory(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    _write_run(run, clip=None)
    g = _global_trajectory(run, monkeypatch)
    assert g.source == "log" and len(g.steps) == STEPS and g.exact


def test_logged_norm_before_an_unlogged_clip_leaves_the_monitors(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    _write_run(run, clip=1e-3)  # every step clipped; the log holds the norm before it, Adam saw the clipped one
    g = _global_trajectory(run, monkeypatch)
    assert g.source == "monitor" and len(g.steps) < STEPS // 5
