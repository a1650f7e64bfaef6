"""`scan` and `check` end to end on real runs: verdicts, exit codes, the JSON contract, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from realruns import train_tiny
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.results.report import SCHEMA, VERDICTS

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_logs"
runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("runs")
    return {
        "healthy": train_tiny(base / "healthy"),
        "bad_batch": train_tiny(base / "bad_batch", bad_batch_at=250),
        "nonfinite": train_tiny(base / "nonfinite", nan_at=300),
        "eps_too_large": train_tiny(base / "eps_too_large", eps=10.0, lr=1e-3),
        # Only the loss was logged and it rose and stayed up from step 250 (every batch's labels scaled from
        # then on): no way to tell the cause. (One corrupted batch in such a log is told by the loss alone:
        # tests/e2e/test_one_point_spike.py.)
        "inconclusive": train_tiny(base / "inconclusive", label_shift_from=250, log_grad_norm=False, ckpt_every=None),
    }


def scan_json(*args: str) -> dict:
    res = runner.invoke(app, ["scan", *args, "--format", "json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout, parse_constant=_no_nan)


def _no_nan(name: str):
    raise AssertionError(f"JSON contains the literal {name}")


def verdict_of(path: Path) -> dict:
    (run,) = scan_json(str(path))["runs"]
    return run


@pytest.mark.parametrize("name", ["healthy", "bad_batch", "nonfinite", "eps_too_large", "inconclusive"])
def test_verdict_on_real_tiny_runs(runs, name):
    run = verdict_of(runs[name])
    assert run["verdict"] == name, run


def test_bad_batch_points_at_the_batch(runs):
    run = verdict_of(runs["bad_batch"])
    assert run["blowup_step"] == 250
    assert any(f["id"] == "AD301" and f["step"] == 250 for f in run["findings"])


def test_nonfinite_step(runs):
    run = verdict_of(runs["nonfinite"])
    assert run["blowup_step"] == 300
    assert any(f["id"] == "AD401" for f in run["findings"])


@pytest.mark.skipif(not (SAMPLES / "vcollapse").exists(), reason="sample_logs not generated")
def test_sample_logs_verdicts():
    data = scan_json(str(SAMPLES))
    by_name = {Path(r["run"]).name: r for r in data["runs"]}
    a = by_name["vcollapse"]
    assert a["verdict"] == "v_collapse"
    assert a["warning_step"] is not None and a["blowup_step"] is not None
    assert a["warning_step"] < a["blowup_step"]
    truth = json.loads((SAMPLES / "vcollapse" / "truth.json").read_text())
    # The blowup step agrees with the live-optimizer ground truth within a few steps.
    assert abs(a["blowup_step"] - truth["summary"]["blowup_step"]) <= 10
    assert by_name["stable_eps1e-3"]["verdict"] == "healthy"
    assert by_name["lr_too_high"]["verdict"] == "lr_too_high"
    rec = a["recommendation"]
    assert rec and rec["eps"] > 1e-8 and "adamdiag replay" in (rec.get("verify") or "")
    # the TF1 run (issue 14): diagnosed with its own Saver checkpoints, read without TensorFlow
    tf1 = by_name["tf1_vcollapse"]
    assert tf1["verdict"] == "v_collapse" and tf1["blowup_step"] == 209
    assert "checkpoints" in tf1["sources"] and any(f["id"] == "AD105" for f in tf1["findings"])
    assert "model.ckpt-200" in (tf1["recommendation"].get("verify") or "")


def test_json_contract(runs):
    data = scan_json(str(runs["bad_batch"]), str(runs["healthy"]))
    assert data["schema"] == SCHEMA
    assert len(data["runs"]) == 2
    for r in data["runs"]:
        assert set(r) >= {"run", "verdict", "blowup_step", "warning_step", "findings", "recommendation"}
        assert r["verdict"] in VERDICTS
        for f in r["findings"]:
            assert set(f) >= {"id", "severity", "step", "tensor", "message", "evidence"}
            assert f["severity"] in ("error", "warning", "info")
            assert f["id"].startswith("AD")


def test_markdown_and_junit(runs):
    res = runner.invoke(app, ["scan", str(runs["bad_batch"]), "--format", "markdown"])
    assert res.exit_code == 0 and "| run | verdict |" in res.stdout and "bad_batch" in res.stdout
    res = runner.invoke(app, ["scan", str(runs["bad_batch"]), "--format", "junit"])
    assert res.exit_code == 0 and "<testsuite" in res.stdout and "<failure" in res.stdout


def test_text_output(runs):
    res = runner.invoke(app, ["scan", str(runs["bad_batch"])])
    assert res.exit_code == 0
    assert "bad_batch" in res.stdout and "AD301" in res.stdout


def test_check_exit_codes(runs):
    assert runner.invoke(app, ["check", str(runs["healthy"])]).exit_code == 0
    assert runner.invoke(app, ["check", str(runs["nonfinite"])]).exit_code == 1
    assert runner.invoke(app, ["check", str(runs["bad_batch"]), "--format", "json"]).exit_code == 1
    # A warning-level finding passes the default gate but fails --fail-on info.
    assert runner.invoke(app, ["check", str(runs["healthy"]), "--fail-on", "info"]).exit_code in (0, 1)


def _one_line_error(res) -> str:
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert err.startswith("adamdiag: error:"), err
    assert "Traceback" not in res.output
    return err


def test_missing_path():
    err = _one_line_error(runner.invoke(app, ["scan", "/nonexistent/run"]))
    assert "no such file or directory" in err


@pytest.mark.parametrize(
    "args",
    [
        ["scan", "gs://bucket/logs"],
        ["check", "s3://bucket/run"],
        ["inspect", "gs://bucket/ck.pt"],
        ["replay", "gs://bucket/ck.pt"],
        ["scan", "sample_logs", "--checkpoints", "hdfs://nn/ckpts"],
    ],
)
def test_remote_locations_are_named(args):
    """A bucket URL is no local path: one line that says so and how to get the files, for every command."""
    err = _one_line_error(runner.invoke(app, args))
    assert "a remote location; adamdiag reads local files only" in err and "://" in err, err


def test_dir_without_event_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    err = _one_line_error(runner.invoke(app, ["check", str(tmp_path)]))
    assert "no TensorBoard event files" in err


def test_empty_event_file_is_an_undiagnosable_run_not_an_input_error(tmp_path):
    """The file was read; it holds nothing to diagnose: scan reports the run as inconclusive with its
    reason and exits 0; the gate fails on it (exit 1), unless --allow-inconclusive."""
    (tmp_path / "events.out.tfevents.1.host").write_bytes(b"")
    res = runner.invoke(app, ["scan", str(tmp_path), "--format", "json"])
    assert res.exit_code == 0, res.output
    (run,) = json.loads(res.stdout)["runs"]
    assert run["verdict"] == "inconclusive" and {f["id"] for f in run["findings"]} >= {"AD901", "AD902"}
    assert runner.invoke(app, ["check", str(tmp_path)]).exit_code == 1
    assert runner.invoke(app, ["check", str(tmp_path), "--allow-inconclusive"]).exit_code == 0


def test_garbage_event_file(tmp_path):
    (tmp_path / "events.out.tfevents.1.host").write_bytes(b"this is not a tfrecord file at all" * 10)
    err = _one_line_error(runner.invoke(app, ["scan", str(tmp_path)]))
    assert "events.out.tfevents.1.host" in err


def test_truncated_last_record_is_a_run_in_progress(runs, tmp_path):
    src = next(runs["healthy"].glob("events.out.tfevents.*"))
    dst = tmp_path / "run"
    dst.mkdir()
    data = src.read_bytes()
    (dst / src.name).write_bytes(data[: len(data) - 7])
    before = src.read_bytes()
    run = verdict_of(dst)
    assert src.read_bytes() == before  # inputs are never modified
    assert run["verdict"] == "healthy"
    # a record cut short at the end of the newest file: a run still being written, not damage
    (f,) = [f for f in run["findings"] if f["id"] == "AD902"]
    assert f["severity"] == "info" and "in progress" in f["message"] and f["evidence"]["in_progress"]
    assert any("truncated" in w for w in run["warnings"])


def test_non_adam_checkpoint_is_ad903_and_claims_no_adam_facts(runs, tmp_path):
    import torch

    dst = tmp_path / "run"
    shutil.copytree(runs["healthy"], dst)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(3, 2)).sum().backward()
    opt.step()
    for p in (dst / "checkpoints").glob("*.pt"):
        p.unlink()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 10}, dst / "checkpoints" / "s.pt")
    run = verdict_of(dst)
    ad903 = [f for f in run["findings"] if f["id"] == "AD903"]
    assert ad903 and "SGD" in ad903[0]["message"], run["findings"]
    # Nothing Adam-specific is claimed from a run whose optimizer is SGD.
    assert not {f["id"] for f in run["findings"]} & {"AD101", "AD102", "AD103", "AD105", "AD501"}
    assert "checkpoints" not in run["sources"] and run["confidence"] == "low"


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys, adamdiag.cli\n"
        "heavy = [m for m in ('torch', 'matplotlib', 'pandas') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0 and "scan" in res.stdout and "replay" in res.stdout


def test_plot_writes_png_per_run(runs, tmp_path):
    out = tmp_path / "plots"
    res = runner.invoke(app, ["plot", str(runs["bad_batch"]), str(runs["healthy"]), "-o", str(out)])
    assert res.exit_code == 0, res.output
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["bad_batch.png", "healthy.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_one_unreadable_run_does_not_hide_the_others(runs, tmp_path):
    good = tmp_path / "logs" / "good"
    shutil.copytree(runs["healthy"], good)
    bad = tmp_path / "logs" / "bad"
    bad.mkdir()
    (bad / "events.out.tfevents.1.host").write_bytes(b"not an event file" * 20)
    data = scan_json(str(tmp_path / "logs"))
    by_name = {Path(r["run"]).name: r for r in data["runs"]}
    assert by_name["good"]["verdict"] == "healthy"
    assert by_name["bad"]["verdict"] == "inconclusive"
    assert any(f["id"] == "AD902" for f in by_name["bad"]["findings"])


def test_with_series_puts_the_curves_in_the_json_and_show_renders_them(tmp_path):
    res = runner.invoke(app, ["scan", str(SAMPLES / "vcollapse"), "--with-series", "--format", "json"])
    assert res.exit_code == 0, res.output
    (run,) = json.loads(res.stdout)["runs"]
    assert {"loss", "grad_norm", "r"} <= set(run["series"])
    saved = tmp_path / "r.json"
    saved.write_text(res.stdout)
    html = runner.invoke(app, ["show", str(saved), "--format", "html"])
    assert html.exit_code == 0 and "<svg" in html.stdout
