"""`-q` means errors only (review F15, item 3): `scan --verify` with the replay entry named by an
adamdiag.toml printed "verifying RUN" and "importing entry X from FILE" even with -q. Without -q both
lines are still printed (the import notice comes before the entry's code runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from realruns import train_sh99
from typer.testing import CliRunner

from adamdiag.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The lab's sh99 run (v collapse, blowup at 462, checkpoints every 50) in a project whose
    adamdiag.toml names an entry; the entry fails at once, so the replay costs nothing."""
    root = tmp_path_factory.mktemp("quiet")
    train_sh99(root / "runs" / "sh99")
    (root / "entry.py").write_text("def adamdiag_replay(c):\n    raise RuntimeError('no data on this machine')\n")
    (root / "adamdiag.toml").write_text('[replay]\nentry = "entry.py:adamdiag_replay"\n')
    return root


def scan(project: Path, monkeypatch, *flags: str):
    monkeypatch.chdir(project)  # the project's own config: trusted without --trust-entry
    res = runner.invoke(app, ["scan", "runs", "--verify", "--device", "cpu", "--format", "json", *flags])
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["runs"]
    (f,) = [f for f in r["findings"] if f["id"] == "AD703"]  # the entry ran and failed: not verified
    assert "no data on this machine" in f["message"]
    return res


def test_without_q_the_verify_and_import_notices_are_printed(project, monkeypatch):
    err = scan(project, monkeypatch).stderr
    assert "verifying runs/sh99" in err
    assert "adamdiag: importing entry entry.py:adamdiag_replay from" in err


def test_q_prints_nothing_but_errors(project, monkeypatch):
    res = scan(project, monkeypatch, "-q")
    assert res.stderr == ""
