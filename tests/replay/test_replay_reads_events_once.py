"""`replay` without --loss-tag picks the tag as scan does and then reads the logged loss: the run's event
files are read once for both (a large run's events cost seconds), and read again when they change."""

from __future__ import annotations

import shutil
from pathlib import Path

import adamdiag.io.events as events
from adamdiag.replay import runner

RUN = Path(__file__).resolve().parents[2] / "sample_logs" / "vcollapse"


def test_one_read_for_the_tag_pick_and_the_logged_loss(tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(RUN, run, ignore=shutil.ignore_patterns("checkpoints"))
    calls = []
    real = events.read_run
    monkeypatch.setattr(events, "read_run", lambda d, **kw: calls.append(d) or real(d, **kw))
    ckpt = run / "step_000600.pt"  # the run's own folder: found by walking up from it
    tag = runner.default_loss_tag(ckpt, run)
    steps, values = runner.read_logged_loss(run, tag)
    assert tag == "train/loss" and len(steps) == len(values) > 1000
    assert len(calls) == 1
    # a run still being written: new bytes → read again
    f = next(run.glob("events.out.tfevents.*"))
    with f.open("ab") as fh:
        fh.write(b"")
    f.touch()
    runner.read_logged_loss(run, tag)
    assert len(calls) == 2
