"""CLI conventions on runs written by torch's SummaryWriter: config keys by long name and bad config values
named by file and key; plot takes scan's tag options; an ASCII-only console still gets the report."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from adamdiag.cli import app

runner = CliRunner()


def write_curve(logdir: Path, tag: str, values: list[float]) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(logdir))
    for s, v in enumerate(values, start=1):
        w.add_scalar(tag, v, s)
    w.close()
    return logdir


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return write_curve(tmp_path_factory.mktemp("s11cli") / "run", "train/loss", [1.0 / s for s in range(1, 60)])


# --- F4, F5: config file ---------------------------------------------------------------------------
def test_config_takes_long_names_and_names_itself_for_a_bad_value(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "pyproject.toml"
    # `verify` (the long name of --verify, whose Python parameter is verify_) was refused as unknown
    cfg.write_text(
        '[tool.adamdiag.scan]\nverify = false\nverify-budget = 30\n[tool.adamdiag.check]\nfail_on = "error"\n'
    )
    res = runner.invoke(app, ["scan", str(run), "-f", "json"])
    assert res.exit_code == 0, res.output
    cfg.write_text('[tool.adamdiag.scan]\n"verify-" = true\n')  # the internal name is no option
    res = runner.invoke(app, ["scan", str(run)])
    assert res.exit_code == 2, res.output
    (line,) = res.stderr.splitlines()
    assert "unknown option 'verify-' in [scan]" in line and " verify, verify-budget" in line
    assert "verify-," not in line and "trust-checkpoint" not in line and "trust-entry" not in line
    # a bad value: the file and key, not "Invalid value for '--format'" as if typed
    cfg.write_text('[tool.adamdiag.scan]\nformat = "mardown"\n')
    for cmd in ("scan", "check"):  # check inherits [scan]
        res = runner.invoke(app, [cmd, str(run)])
        assert res.exit_code == 2
        assert res.stderr.splitlines() == [
            f"adamdiag: error: {cfg} [scan] format = 'mardown': 'mardown' is not one of 'text', 'json', "
            "'markdown', 'junit', 'github'."
        ], res.stderr
    res = runner.invoke(app, ["scan", str(run), "-f", "mardown"])  # typed: said as before
    assert res.exit_code == 2 and "Invalid value for '--format'" in res.stderr


# --- F9: plot takes scan's tag options --------------------------------------------------------------
def test_plot_takes_loss_tag_like_scan(tmp_path, monkeypatch):
    """A run whose only scalar is 'objective': scan needs --loss-tag, and plot had no such option."""
    run = write_curve(tmp_path / "run", "objective", [1.0 / s for s in range(1, 40)] + [1e3] * 10)
    res = runner.invoke(app, ["plot", str(run), "-o", str(tmp_path / "a.png")])
    assert res.exit_code == 2
    assert res.stderr.splitlines() == [
        f"adamdiag: error: nothing to plot: {run}: no loss scalar found; name it with --loss-tag"
    ]
    res = runner.invoke(
        app, ["plot", str(run), "-o", str(tmp_path / "a.png"), "--loss-tag", "objective", "--grad-clip", "1"]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a.png").stat().st_size > 0
    monkeypatch.chdir(tmp_path)  # [scan] loss-tag reaches plot too (it takes the [scan] options it has)
    (tmp_path / "adamdiag.toml").write_text('[scan]\nloss-tag = ["objective"]\n')
    res = runner.invoke(app, ["plot", str(run), "-o", str(tmp_path / "b.png")])
    assert res.exit_code == 0 and (tmp_path / "b.png").is_file(), res.output


# --- F15: an ASCII-only console ---------------------------------------------------------------------
def test_an_ascii_console_gets_the_report_with_stand_ins(run, tmp_path):
    """PYTHONIOENCODING=ascii (some CI and Windows consoles) ended scan in "internal error: UnicodeEncodeError"
    and the report was lost."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONIOENCODING": "ascii", "NO_COLOR": "1"}
    cmd = [sys.executable, "-c", "from adamdiag.cli import main; main()", "scan", str(run)]
    p = subprocess.run(cmd, capture_output=True, env=env, timeout=120, check=False)
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode("ascii")  # every byte ASCII
    assert "internal error" not in p.stderr.decode("ascii")
    assert f"{run.name}: healthy - confidence" in out  # "healthy — confidence"
    assert "+---" in out or "|" in out  # the table, box drawing as ASCII
