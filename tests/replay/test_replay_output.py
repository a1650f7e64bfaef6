"""The replay renderers as a pipe or a CI log sees them, on the tiny real run (test_replay_fixture.py):
text piped through a real pipe keeps every sentence on one line (soft wrap, no hard wrap at ~120
columns), `--format github` is one escaped workflow command, and every renderer formats an empty
result and one whose numbers are NaN/Inf (a real replay with an lr that diverges)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from rich.cells import cell_len
from test_replay_fixture import BLOWUP_STEP, tiny_run
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.render.replay import render
from adamdiag.replay.result import Fidelity, ReplayResult

FORMATS = ("text", "markdown", "json", "junit", "github")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory)


def odd_checkpoint(run: Path) -> Path:
    """The step-90 checkpoint under a long folder name with ',' and ':' in it (inside the run, so the
    run's adamdiag.toml still names the entry): the header line is ~250 characters long."""
    deep = run / ("sweep,lr:0.01 " + "x" * 150)
    deep.mkdir(exist_ok=True)
    ck = deep / "step_000090.pt"
    if not ck.exists():
        shutil.copy(run / "checkpoints" / "step_000090.pt", ck)
    return ck


def test_piped_text_is_soft_wrapped(run):
    ck = odd_checkpoint(run)
    cmd = [sys.executable, "-m", "adamdiag.cli", "replay", str(ck), "--logdir", str(run), "--eps", "1e-1"]
    cmd += ["--steps", "40", "--device", "cpu"]  # short: the original does not reach its blowup
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    (head,) = [x for x in lines if x.startswith("replay of ")]
    # one line, whole: the path, then the rest of the sentence up to its closing parenthesis
    assert str(ck) in head and "original with torch.optim.Adam, alternates" in head and head.endswith(")")
    (verdict,) = [x for x in lines if x.startswith("verdict: ")]
    assert (
        verdict == "verdict: the original settings do not blow up in the replayed steps: nothing to fix here (exit 0)"
    )
    assert any(x.startswith("fidelity ok: ") and len(x) > 80 for x in lines)
    assert "\x1b[" not in out.stdout  # no colour codes in a pipe
    table = [x for x in lines if x.startswith(("│", "┃", "┏", "└", "┡", "┗", "╭", "╰"))]
    # only the table is laid out: at its own width where the pipe's 80 columns are too few — no cell folded
    # onto a second line (a folded number reads as two): a top, a header, a rule, the two rows, a bottom
    assert len(table) == 6 and len({cell_len(x) for x in table}) == 1 and cell_len(table[0]) > 80, table


def test_github_is_one_escaped_annotation(run):
    ck = odd_checkpoint(run)
    res = CliRunner().invoke(
        app,
        ["replay", str(ck), "--logdir", str(run), "--lr", "0.02", "--device", "cpu", "--format", "github"],
    )
    assert res.exit_code == 1, res.output  # no variant avoids the blowup: an error annotation
    (line,) = res.stdout.splitlines()
    prop = str(ck).replace(":", "%3A").replace(",", "%2C")
    assert line.startswith(f"::error file={prop},title=adamdiag replay::")
    message = line.split("::", 2)[2]
    assert message.startswith("every variant blows up like the original") and str(BLOWUP_STEP) in message
    assert "\n" not in message and "%0A" not in message


@pytest.fixture(scope="module")
def diverged(run) -> dict:
    """A real replay whose variant lr 1e30 overflows float32: its losses and max loss are inf/NaN."""
    res = CliRunner().invoke(
        app,
        ["replay", str(run / "checkpoints" / "step_000090.pt"), "--lr", "1e30", "--steps", "40", "--device", "cpu"]
        + ["--format", "json"],
    )
    assert res.exit_code in (0, 1), res.output
    return json.loads(res.stdout)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_replay_renderer_on_empty_and_nonfinite_results(diverged, fmt):
    empty = ReplayResult(
        checkpoint="ck.pt",
        start_step=0,
        steps=0,
        fidelity=Fidelity(max_rel_dev=math.nan, reproduced=False),
        variants=[],
    )
    assert render(empty, fmt).strip()
    bad = ReplayResult.from_dict(diverged)
    v = bad.variants[1]
    assert v.name == "lr=1e+30" and not math.isfinite(v.max_loss) and any(not math.isfinite(x) for x in v.losses)
    out = render(bad, fmt)
    assert "lr=1e+30" in out or fmt == "github"
    if fmt == "json":
        assert json.loads(out, parse_constant=lambda c: pytest.fail(f"literal {c}")) == diverged
    if fmt == "junit":
        ET.fromstring(out)
    if fmt in ("text", "markdown"):
        assert "inf" in out or "nan" in out
