"""A run folder whose name is not valid UTF-8 (a byte 0xff: Latin-1 names from an old NFS share, a
mangled archive). Python keeps such bytes as lone surrogates, which no UTF-8 writer accepts: scan used to
stop with an internal error in pandas, and torch could not open a checkpoint there. Now every output is
written (the odd byte as ``\\xff``), checkpoints load, and the printed ``verify:`` line names the file in
bash's ``$'…'`` quoting, so it works when pasted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.dom.minidom
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adamdiag.cli import app

SAMPLE = Path(__file__).resolve().parents[2] / "sample_logs" / "vcollapse"
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="non-UTF-8 file names: a Linux file system")


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("odd")
    run = Path(os.fsdecode(os.fsencode(str(root)) + b"/run_\xff"))
    (run / "checkpoints").mkdir(parents=True)
    for ev in SAMPLE.glob("events.out.tfevents.*"):
        shutil.copy(ev, run / ev.name)
    for step in (500, 600):  # the last two before the blowup at 662
        shutil.copy(SAMPLE / "checkpoints" / f"step_{step:06d}.pt", run / "checkpoints")
    return run


def test_every_scan_format_is_written(odd_run: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["scan", str(odd_run), "--format", "json"])
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["runs"]
    assert r["run"].endswith("run_\\xff") and r["verdict"] == "v_collapse" and "checkpoints" in r["sources"]
    verify = r["recommendation"]["verify"]
    assert verify.startswith("adamdiag replay $'") and "run_\\xff/checkpoints/step_000600.pt'" in verify
    # pasted into bash, the quoted path is the file's own bytes
    quoted = verify.split(" ")[2]
    out = subprocess.run(["bash", "-c", f"printf %s {quoted}"], capture_output=True, check=True).stdout
    assert out == os.fsencode(odd_run / "checkpoints" / "step_000600.pt")
    res = runner.invoke(app, ["scan", str(odd_run), "--format", "junit"])
    assert res.exit_code == 0, res.output
    xml.dom.minidom.parseString(res.stdout)
    for fmt in ("text", "markdown", "github"):
        res = runner.invoke(app, ["scan", str(odd_run), "--format", fmt])
        assert res.exit_code == 0 and "run_\\xff" in res.stdout, (fmt, res.output)


def test_html_report_inspect_and_export(odd_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(odd_run), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    assert "run_\\xff" in (tmp_path / "r.html").read_text(encoding="utf-8")
    res = runner.invoke(app, ["inspect", str(odd_run / "checkpoints" / "step_000600.pt"), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["checkpoints"][0]["step"] == 600
    res = runner.invoke(app, ["export", str(odd_run), "-o", str(tmp_path / "x.csv")])
    assert res.exit_code == 0, res.output
