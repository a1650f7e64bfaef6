"""`report` draws its figures fast and says so on a terminal (review F15, item 1).

Measured before the change (sample_logs, 4 runs, 12 figures): ~60% of the HTML render was matplotlib
parsing its mathtext log tick labels ($\\mathdefault{10^{-3}}$) and a third of the rest a second,
disabled draw that savefig makes when ``tight_layout`` leaves a layout engine on the figure; minor log
ticks (unlabelled marks on wide axes) were half of the layout. The labels are now plain text (10⁻³), the
layout is computed once, and wide log axes have no minor ticks. The progress bar is on stderr, only on
a terminal, never with -q or CI=true."""

from __future__ import annotations

import json
import os
import pty
import select
import sys
from pathlib import Path

import pytest
from realruns import train_tiny
from typer.testing import CliRunner

from adamdiag import console
from adamdiag.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def saved_report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fast")
    train_tiny(root / "a", steps=100, ckpt_every=50)
    train_tiny(root / "b", steps=100, ckpt_every=50, lr=0.3)
    out = root / "report.json"
    res = runner.invoke(app, ["report", str(root), "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out


def _trimmed(saved: Path, *, runs: int = 2, keep_all: int = 0):
    """The saved report's first ``runs`` runs, the first ``keep_all`` with every curve, the others with
    the loss only (one figure each: matplotlib takes ~0.2 s a figure, more on a loaded machine)."""
    from adamdiag.results.report import Report

    rep = Report.from_dict(json.loads(saved.read_text()))
    out = []
    for i, r in enumerate(rep.runs[:runs]):
        series = r.series if i < keep_all else {"loss": r.series["loss"]}
        out.append(type(r)(**{**r.__dict__, "series": series}))
    return Report(**{**rep.__dict__, "runs": out})


def _figure_with(values: list[float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from adamdiag.render.plot import log_y, tight

    fig, ax = plt.subplots()
    ax.plot(range(len(values)), values)
    log_y(ax)
    tight(fig)
    fig.canvas.draw()
    return fig, ax


def test_log_tick_labels_are_plain_text_with_the_ticks_matplotlib_labels():
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    from adamdiag.render.plot import _plain_tick

    assert _plain_tick(r"$\mathdefault{10^{-3}}$") == "10⁻³"
    assert _plain_tick(r"$\mathdefault{2\times10^{-3}}$") == "2×10⁻³"
    assert _plain_tick(r"$\mathdefault{10^{12}}$") == "10¹²"
    assert _plain_tick(r"$\mathdefault{1}$") == "1" and _plain_tick("") == ""

    fig, ax = _figure_with([1e-8, 1e-3, 1e3])  # eleven decades: labelled decades, no minor ticks
    major = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert len(major) >= 4 and all("$" not in s for s in major) and {"10⁻⁸", "10⁰"} & set(major), major
    assert isinstance(ax.yaxis.get_minor_locator(), NullLocator)
    assert fig.get_layout_engine() is None  # laid out once: savefig does not lay it out (and draw) again
    plt.close(fig)

    fig, ax = _figure_with([1.5, 2.0, 4.0])  # under a decade: matplotlib labels the minor ticks, so do we
    minor = [t.get_text() for t in ax.get_yticklabels(minor=True) if t.get_text()]
    assert "2×10⁰" in minor and "3×10⁰" in minor and not isinstance(ax.yaxis.get_minor_locator(), NullLocator)
    plt.close(fig)


def test_html_figures_have_plain_labels_and_progress_per_run(saved_report):
    from adamdiag.render.html import render_html

    rep = _trimmed(saved_report, keep_all=1)
    calls: list[tuple[int, int]] = []
    page = render_html(rep, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]
    assert page.count("<svg") >= 4 and "10⁻" in page and "mathdefault" not in page


def _read_all(fd: int) -> str:
    out = b""
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out.decode("utf-8", "replace")


def test_progress_only_on_a_terminal_and_never_with_q_or_ci(saved_report, monkeypatch):
    from adamdiag.cli.report import _render_html

    rep = _trimmed(saved_report, runs=1)  # one run, one figure: the bar is what is tested here
    master, slave = pty.openpty()
    tty = os.fdopen(slave, "w", encoding="utf-8", buffering=1)
    try:
        monkeypatch.setattr(sys, "stderr", tty)
        monkeypatch.setattr(console, "QUIET", False)
        monkeypatch.delenv("CI", raising=False)
        assert console.progress_shown()
        page = _render_html(rep)
        drawn = _read_all(master)
        assert "drawing figures" in drawn and "<svg" in page
        for env, quiet in (({"CI": "true"}, False), ({}, True)):
            for k, v in env.items():
                monkeypatch.setenv(k, v)
            monkeypatch.setattr(console, "QUIET", quiet)
            assert not console.progress_shown()
            _render_html(rep)
            assert "drawing figures" not in _read_all(master)
            monkeypatch.delenv("CI", raising=False)
        monkeypatch.setenv("CI", "1")
        assert not console.progress_shown()
        monkeypatch.setenv("CI", "false")  # set, but saying no
        monkeypatch.setattr(console, "QUIET", False)
        assert console.progress_shown()
    finally:
        monkeypatch.undo()
        tty.close()
        os.close(master)


def test_report_command_keeps_stdout_empty_and_q_silent(saved_report, tmp_path):
    saved = tmp_path / "one.json"
    saved.write_text(json.dumps(_trimmed(saved_report, runs=1).to_dict()))
    out = tmp_path / "r.html"
    res = runner.invoke(app, ["show", str(saved), "-f", "html", "-o", str(out), "-q"])
    assert res.exit_code == 0 and res.stdout == "" and res.stderr == ""
    assert out.read_text().count("<figure") == 1
