"""The CLI behaves like its peers (ruff, pytest): --version, -h, clean help, one-line usage errors,
--quiet, config files, JUnit that follows --fail-on, GitHub annotations and job summary, export to
stdout, short unique run names and verdict counts. Runs are real event files from torch's
SummaryWriter; most checks go through typer's CliRunner (in process: fast)."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import typer.main
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.render.common import display_names
from adamdiag.render.text import render_text
from adamdiag.results.report import Finding, Report, RunReport

runner = CliRunner()


def write_curve(logdir: Path, values: list[float], tag: str = "loss") -> Path:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(logdir))
    for s, v in enumerate(values):
        w.add_scalar(tag, v, s)
    w.close()
    return logdir


@pytest.fixture(scope="module")
def spiky(tmp_path_factory) -> Path:
    """A healthy run with one recovered loss spike: only a warning finding (AD002)."""
    vals = [1.0 / (1 + s) + 0.001 * ((s * 7919) % 13) for s in range(300)]
    vals[150] *= 6
    return write_curve(tmp_path_factory.mktemp("spiky") / "run", vals)


def test_version_and_short_help():
    from adamdiag import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"adamdiag {__version__}"
    assert runner.invoke(app, ["-h"]).exit_code == 0
    assert "Usage: adamdiag scan [OPTIONS] RUN..." in runner.invoke(app, ["scan", "-h"]).stdout


def test_help_is_clean_and_every_option_has_help():
    group = typer.main.get_command(app)
    names = ["", *group.commands]
    for name in names:
        res = runner.invoke(app, [name, "-h"] if name else ["-h"], env={"COLUMNS": "200"})
        assert res.exit_code == 0, (name, res.output)
        for bad in ("<list[", "<bool>", "{runs}", "{checkpoint"):
            assert bad not in res.stdout, (name, bad)
    ctx = typer.main.get_command(app).make_context("adamdiag", ["scan", "x"], resilient_parsing=True)
    for name, cmd in group.commands.items():
        for p in cmd.get_params(ctx):
            if p.param_type_name == "option" and not getattr(p, "hidden", False):
                assert p.help, f"{name} {p.opts} has no help"
    # closed choices are enums: a wrong value is a usage error, not a failure deep inside
    res = runner.invoke(app, ["replay", "x.pt", "--device", "tpu"])
    assert res.exit_code == 2 and "'tpu' is not one of 'auto', 'cpu', 'cuda'" in res.stderr


@pytest.mark.parametrize(
    "args, says",
    [
        (["scan"], "Missing argument 'RUN...'"),
        (["scan", "x", "--bogus"], "No such option: --bogus"),
        (["check", "x", "--fail-on", "bad"], "'bad' is not one of 'error', 'warning', 'info'"),
        (["bogus"], "No such command 'bogus'"),
    ],
)
def test_usage_errors_are_one_line(args, says):
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("adamdiag: error: ") and says in lines[0], res.stderr


def test_junit_follows_fail_on(spiky):
    for fail_on, code, failures in (("error", 0, "0"), ("warning", 1, "1"), ("info", 1, "1")):
        res = runner.invoke(app, ["check", str(spiky), "--fail-on", fail_on, "--format", "junit"])
        assert res.exit_code == code, res.output
        assert res.stdout.startswith('<?xml version="1.0" encoding="utf-8"?>')
        root = ET.fromstring(res.stdout)
        assert root.tag == "testsuites" and root.find("testsuite") is not None
        assert root.get("failures") == failures and root.find("testsuite").get("failures") == failures


def test_github_annotations_and_job_summary(spiky, tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    res = runner.invoke(
        app,
        ["check", str(spiky), "--format", "github", "--fail-on", "warning"],
        env={"GITHUB_STEP_SUMMARY": str(summary)},
    )
    assert res.exit_code == 1
    first = res.stdout.splitlines()[0]
    assert first.startswith(f"::warning file={spiky},title=adamdiag AD002 healthy at step 150::loss spike")
    text = summary.read_text()
    assert text.startswith("earlier step\n# adamdiag report") and "| AD002 | warning |" in text


def test_config_file_precedence_and_verbose(spiky, tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    (proj / "sub").mkdir(parents=True)
    (proj / "pyproject.toml").write_text(
        '[tool.adamdiag.scan]\nformat = "json"\n[tool.adamdiag.check]\nfail-on = "warning"\n'
    )
    monkeypatch.chdir(proj / "sub")  # found from below, as ruff and pytest do
    res = runner.invoke(app, ["scan", str(spiky), "-v"])
    assert res.exit_code == 0 and json.loads(res.stdout)["runs"][0]["verdict"] == "healthy"
    assert f"adamdiag: config: {proj / 'pyproject.toml'}" in res.stderr
    assert runner.invoke(app, ["scan", str(spiky), "-f", "markdown"]).stdout.startswith("# adamdiag report")  # CLI wins
    assert runner.invoke(app, ["check", str(spiky)]).exit_code == 1  # [check] fail-on = warning
    assert runner.invoke(app, ["check", str(spiky), "--fail-on", "error"]).exit_code == 0
    (proj / "sub" / "adamdiag.toml").write_text('[scan]\nformatt = "json"\n')  # nearer, and a typo
    res = runner.invoke(app, ["scan", str(spiky)])
    assert res.exit_code == 2 and "unknown option 'formatt' in [scan]" in res.stderr
    (proj / "sub" / "adamdiag.toml").write_text("[scan]\ntrust-checkpoint = true\n")
    res = runner.invoke(app, ["scan", str(spiky)])
    assert res.exit_code == 2 and "command line only" in res.stderr


def test_export_to_stdout_and_quiet(tmp_path):
    run = write_curve(tmp_path / "run", [1.0, 0.5, 0.25])
    (tmp_path / "run" / "tfevents.md").write_text("notes\n")
    res = runner.invoke(app, ["export", str(tmp_path), "-o", "-"])
    assert res.exit_code == 0
    assert res.stdout.splitlines()[0] == "run,tag,step,wall_time,value,segment,source_file"
    assert len(res.stdout.splitlines()) == 4 and "tfevents.md" in res.stderr
    res = runner.invoke(app, ["export", str(run), "-o", "-", "-q"])
    assert res.exit_code == 0 and res.stderr == ""


def test_run_names_stripped_elided_and_unique():
    base = "/data/sweeps/2026-12-05/transformer_large_"
    runs = [f"{base}lr{lr}_eps1e-8_warmup2000_seed{seed}" for lr in ("1e-3", "3e-4") for seed in range(3)]
    names, prefix = display_names(runs, width=24)
    assert prefix == "/data/sweeps/2026-12-05/"
    assert len(set(names)) == len(runs)
    assert all(n.endswith(f"seed{i % 3}") for i, n in enumerate(names))
    assert display_names(["a/x", "a/x"], width=5)[0] == ["x", "x"]  # the same run twice stays the same


def test_verdict_counts_and_repeated_findings_once():
    note = "no optimizer checkpoint found: assumed beta2=0.999, eps=1e-08"
    runs = [
        RunReport(
            run=f"sweep/run{i}", verdict="healthy" if i else "v_collapse", findings=[Finding("AD901", "info", note)]
        )
        for i in range(5)
    ]
    text = render_text(Report(runs=runs))
    assert text.count(note) == 1 and "AD901 info × 5" in text
    assert text.rstrip().splitlines()[-1] == "5 runs: 4 healthy, 1 v_collapse"
    assert "under sweep/" in text


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`adamdiag export RUN -o - | head -1`: the reader goes away; no 'internal error', no traceback,
    exit 141 (128 + SIGPIPE) as a shell pipe stage reports it."""
    import subprocess
    import sys

    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "run"))
    for step in range(20000):  # far more CSV than a pipe buffer holds
        w.add_scalar("train/loss", 1.0 / (step + 1), step)
    w.close()
    cmd = [sys.executable, "-c", "from adamdiag.cli.app import main; main()", "export", str(tmp_path / "run")]
    p = subprocess.Popen([*cmd, "-o", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    assert p.stdout.readline().startswith(b"run,tag,step")
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141
    assert "internal error" not in err and "Traceback" not in err, err


def test_no_checkpoint_note_names_the_checkpoints_folder_given(tmp_path):
    """With --checkpoints pointing at a folder without this run's checkpoints, the AD901 note says where it
    looked instead of telling the user to pass --checkpoints (found by the bad-input fuzz, session 10)."""
    import shutil

    run = tmp_path / "vcollapse"
    shutil.copytree(
        Path(__file__).resolve().parents[2] / "sample_logs" / "vcollapse",
        run,
        ignore=shutil.ignore_patterns("checkpoints"),
    )
    empty = tmp_path / "empty"
    empty.mkdir()

    def ad901(*extra: str) -> str:
        res = runner.invoke(app, ["scan", str(run), "-f", "json", *extra])
        assert res.exit_code == 0, res.output
        (r,) = json.loads(res.stdout)["runs"]
        (msg,) = [f["message"] for f in r["findings"] if f["message"].startswith("no optimizer checkpoint found")]
        return msg

    assert ad901().endswith("pass --checkpoints for exact values")
    given = ad901("--checkpoints", str(empty))
    assert f"none was read under --checkpoints {empty}" in given and "pass --checkpoints" not in given
