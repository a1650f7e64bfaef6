"""scan's text table follows the terminal (review F15, item 2): the terminal's width or COLUMNS, at least
72 columns (narrower: a compact table whose headers and sources wrap, never a verdict or a step), and
110 columns into a pipe or a file whatever terminal it runs from, so saved text and diffs stay stable."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import sys
import termios
from pathlib import Path

import pytest
from realruns import train_tiny
from typer.testing import CliRunner

from adamdiag import console
from adamdiag.cli import app

runner = CliRunner()
LONG = "experiment_sweep_lr0.001_wd0.1_warmup200_seed"  # two runs whose names differ at the end only


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("width")
    train_tiny(root / f"{LONG}1", steps=100, ckpt_every=None)
    # a blowup with only the loss logged: "inconclusive", the longest verdict word, must stay whole
    train_tiny(root / f"{LONG}2", steps=100, ckpt_every=None, label_shift_from=50, log_grad_norm=False)
    res = runner.invoke(app, ["scan", str(root), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert "inconclusive" in {r["verdict"] for r in json.loads(res.stdout)["runs"]}
    out = root / "report.json"
    out.write_text(res.stdout)
    return out


def table(saved: Path, env: dict[str, str], monkeypatch) -> list[str]:
    """The summary table's lines (up to the first blank line) of `show -f text`, stdout captured."""
    monkeypatch.delenv("COLUMNS", raising=False)
    res = runner.invoke(app, ["show", str(saved), "-f", "text"], env=env)
    assert res.exit_code == 0, res.output
    lines = res.stdout.split("\n\n")[0].splitlines()
    assert any("v_collapse" in ln or "healthy" in ln or "lr_too_high" in ln for ln in lines), lines
    return lines


def widest(lines: list[str]) -> int:
    return max(len(ln.rstrip()) for ln in lines)


def test_a_pipe_gets_110_columns_whatever_the_terminal(saved, monkeypatch):
    piped = table(saved, {}, monkeypatch)
    assert widest(piped) <= 110 and not any("┃" in ln for ln in piped)  # the boxed table needs 115
    assert table(saved, {"COLUMNS": "110"}, monkeypatch) == piped  # the same text as an explicit 110


def test_columns_is_followed_and_the_table_never_cuts_a_verdict_or_step(saved, monkeypatch):
    wide = table(saved, {"COLUMNS": "200"}, monkeypatch)
    assert any("┃ run" in ln for ln in wide) and widest(wide) > 110  # boxed, as wide as it needs
    narrow = table(saved, {"COLUMNS": "80"}, monkeypatch)
    assert widest(narrow) <= 80 and not any("┃" in ln for ln in narrow)  # compact: no column rules
    body = "\n".join(narrow)
    assert "…" in body  # run names elided in the middle to fit
    verdicts = [r["verdict"] for r in json.loads(saved.read_text())["runs"]]
    for word in [*verdicts, "blowup", "warning"]:
        assert word in body  # whole: never "inconcl…"
    assert narrow != wide


def test_a_sane_minimum(saved, monkeypatch):
    tiny = table(saved, {"COLUMNS": "20"}, monkeypatch)
    assert widest(tiny) <= console.TEXT_MIN_WIDTH and widest(tiny) > 20
    assert table(saved, {"COLUMNS": str(console.TEXT_MIN_WIDTH)}, monkeypatch) == tiny


def test_a_terminal_gives_its_own_width(monkeypatch):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 95, 0, 0))  # 40 rows, 95 columns
    tty = os.fdopen(slave, "w")
    try:
        monkeypatch.delenv("COLUMNS", raising=False)
        monkeypatch.setattr(sys, "stdout", tty)
        assert console.stdout_width() == 95
        monkeypatch.setenv("COLUMNS", "130")  # set by the user: it wins, as in rich and the shell tools
        assert console.stdout_width() == 130
        monkeypatch.setenv("COLUMNS", "not-a-number")
        assert console.stdout_width() == 95
    finally:
        monkeypatch.undo()
        tty.close()
        os.close(master)
    monkeypatch.delenv("COLUMNS", raising=False)
    assert console.stdout_width() == console.TEXT_PIPE_WIDTH  # pytest's stdout is not a terminal
