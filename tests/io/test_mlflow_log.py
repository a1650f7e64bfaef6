"""MLflow's local stores read as logs (adamdiag.io.mlflow_log), on stores MLflow 3.17.2 itself wrote
(tests/fixtures/mlflow, made by tools/runlab/make_mlflow_fixtures.py): the file store of a Lightning MLFlowLogger
run and the SQLite store of an HF Trainer run read as their TensorBoard logs (values, verdict, blowup; the HF
arguments from the params), sample runs logged again read exactly, NaN/±inf kept, deleted runs left out; bad input
is one line, inputs are never modified."""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.io.events import discover, read_run
from adamdiag.io.mlflow_log import parse_metric_line, split_run_path, sqlite_runs
from adamdiag.pipeline.scan import scan_paths

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mlflow"
SAMPLE_LOGS = Path(__file__).resolve().parents[2] / "sample_logs"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


def series(events, tag: str) -> tuple[list[int], np.ndarray]:  # noqa: ANN001
    s = events.scalars[events.scalars["tag"] == tag].sort_values("step", kind="stable")
    return s["step"].tolist(), s["value"].to_numpy()


def file_store_runs() -> dict[str, Path]:
    """The file store's runs that discovery finds, by run name."""
    found = discover([FIXTURES / "filestore" / "mlruns"])
    out = {}
    for r in found.runs:
        name = next(line for line in (r / "meta.yaml").read_text().splitlines() if line.startswith("run_name:"))
        out[name.split(":", 1)[1].strip()] = r
    return out


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SQLite store, unpacked (MLflow wrote it; gzip only stores it)."""
    out = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    with gzip.open(FIXTURES / "sqlite" / "mlflow.db.gz", "rb") as f_in, open(out, "wb") as f_out:
        shutil.copyfileobj(f_in, f_out)
    return out


def db_runs(db: Path) -> dict[str, Path]:
    return {r.name.rsplit("-", 1)[0]: r for r in sqlite_runs(db)}


def test_file_store_lightning_run_reads_as_its_tensorboard_log() -> None:
    runs = file_store_runs()
    assert set(runs) == {"shift60", "nonfinite"}  # the deleted run is left out
    ml = read_run(runs["shift60"])
    tb = read_run(FIXTURES / "filestore" / "tb" / "version_0")
    for tag in ("train/loss", "epoch"):
        a, b = series(ml, tag), series(tb, tag)
        assert a[0] == b[0] and a[0][-1] == 99, tag
        np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
    assert ml.scalars["wall_time"].min() > 1.7e9 and ml.scalars["wall_time"].nunique() > 1  # the timestamps
    a, b = scan_paths([runs["shift60"], FIXTURES / "filestore" / "tb" / "version_0"]).runs
    assert (a.verdict, a.confidence, a.blowup_step) == (b.verdict, b.confidence, b.blowup_step)
    assert 60 <= a.blowup_step <= 65
    assert any(f.id == "AD901" and "MLflow run 'shift60'" in f.message for f in a.findings)


@pytest.mark.parametrize("store", ["filestore", "sqlite"])
def test_non_finite_values(store: str, db: Path) -> None:
    run = file_store_runs()["nonfinite"] if store == "filestore" else db_runs(db)["nonfinite"]
    steps, loss = series(read_run(run), "train/loss")
    want = EXPECTED[f"{store}/nonfinite"]
    assert steps == [int(s) for s in sorted(want, key=int)]
    expect = [float(want[str(s)]["train/loss"]) for s in steps]  # "nan", "inf", "-inf" as logged
    np.testing.assert_array_equal(loss, expect)
    assert np.isneginf(loss[-1]) and np.isposinf(loss[34])
    (rep,) = scan_paths([run]).runs
    assert rep.verdict == "nonfinite" and rep.blowup_step == 30


def test_deleted_runs_are_noted_not_read(db: Path) -> None:
    found = discover([FIXTURES / "filestore"])
    assert any("marked deleted" in p.message and p.kind == "note" for p in found.problems)
    assert "deleted" not in db_runs(db)


def test_sqlite_sample_runs_are_their_logged_values(db: Path) -> None:
    """sample_logs' lr_too_high and vcollapse logged again with mlflow.log_metrics: every value exact (float32 from
    TensorBoard, a float64 in the database), each row's own timestamp; the sample verdicts."""
    runs = db_runs(db)
    for name, verdict, blowup in (("lr_too_high", "lr_too_high", 77), ("vcollapse", "v_collapse", 662)):
        ml, tb = read_run(runs[name]), read_run(SAMPLE_LOGS / name)
        for tag in ("train/loss", "train/grad_norm", "train/lr"):
            a, b = series(ml, tag), series(tb, tag)
            assert a[0] == b[0], (name, tag)
            np.testing.assert_array_equal(a[1], b[1])
        (rep,) = scan_paths([runs[name]]).runs
        assert (rep.verdict, rep.blowup_step) == (verdict, blowup)


def test_sqlite_hf_trainer_run_reads_as_its_tensorboard_log(db: Path) -> None:
    """HF's MLflowCallback logs the Trainer's logs under their own names (loss, grad_norm) and its
    TrainingArguments as params (strings): β2, eps and the clipping norm are read there, and the verdict is
    the TensorBoard log's (without the clipping norm it was not: the params' '1.0' was once not read as a number)."""
    run = db_runs(db)["hf-shift80"]
    ml, tb = read_run(run), read_run(next((FIXTURES / "sqlite" / "hf" / "runs").iterdir()))
    for mine, theirs in (("loss", "train/loss"), ("grad_norm", "train/grad_norm")):
        a, b = series(ml, mine), series(tb, theirs)
        assert a[0] == b[0], mine
        np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
    a, b = scan_paths([run, next((FIXTURES / "sqlite" / "hf" / "runs").iterdir())]).runs
    assert (a.verdict, a.confidence, a.blowup_step, a.warning_step) == (
        b.verdict,
        b.confidence,
        b.blowup_step,
        b.warning_step,
    )
    msgs = " | ".join(f.message for f in a.findings)
    assert "beta2=0.98, eps=1e-06 from HF Trainer's arguments (the MLflow run's params)" in msgs
    assert "gradient clipping at 1 (max_grad_norm in the MLflow run's params" in msgs


def test_a_database_its_folder_and_one_of_its_runs_can_be_named(db: Path) -> None:
    names = {r.name.rsplit("-", 1)[0] for r in discover([db.parent]).runs}
    assert names == {"lr_too_high", "vcollapse", "nonfinite", "hf-shift80"}
    assert discover([db]).runs == sqlite_runs(db)
    one = db_runs(db)["vcollapse"]
    assert split_run_path(one) == (db, one.name[-8:]) and discover([one]).runs == [one]
    res = CliRunner().invoke(app, ["scan", str(one)])
    assert res.exit_code == 0 and "v_collapse" in res.output


def test_a_run_id_not_in_the_database_is_one_line(db: Path) -> None:
    res = CliRunner().invoke(app, ["scan", str(db / "samples" / "nope-0123abcd")])
    assert res.exit_code == 2 and "no single MLflow run whose id starts with 0123abcd" in res.output
    assert "Traceback" not in res.output


def test_a_database_is_never_written(db: Path) -> None:
    before = (db.read_bytes(), db.stat().st_mtime_ns, sorted(os.listdir(db.parent)))
    scan_paths([db.parent])
    assert (db.read_bytes(), db.stat().st_mtime_ns, sorted(os.listdir(db.parent))) == before


def test_a_damaged_database_is_one_line_and_sinks_no_other_run(tmp_path: Path) -> None:
    bad = tmp_path / "bad" / "mlflow.db"
    bad.parent.mkdir()
    bad.write_bytes(b"SQLite format 3\x00" + os.urandom(3000))
    res = CliRunner().invoke(app, ["scan", str(bad.parent)])
    assert res.exit_code == 2 and "not a readable MLflow database" in res.output and "Traceback" not in res.output
    shutil.copytree(FIXTURES / "filestore" / "mlruns", tmp_path / "good" / "mlruns")
    reports = scan_paths([tmp_path]).runs
    assert {r.verdict for r in reports} >= {"nonfinite"}
    res = CliRunner().invoke(app, ["scan", str(tmp_path)])
    assert res.exit_code == 0 and "not a readable MLflow database" in res.output


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo")
def test_a_fifo_named_mlflow_db_is_never_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "mlflow.db")
    res = CliRunner().invoke(app, ["scan", str(tmp_path)])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_a_metric_file_cut_short(tmp_path: Path) -> None:
    run = file_store_runs()["nonfinite"]
    dst = tmp_path / "mlruns" / run.parent.name / run.name
    shutil.copytree(run, dst)
    (dst.parent / "meta.yaml").write_text((run.parent / "meta.yaml").read_text())
    f = dst / "metrics" / "train" / "loss"
    whole = f.read_bytes()
    f.write_bytes(whole + b"1796635204300 0.123456 4")  # a line cut mid-write: its step 41 read as 4, were it read
    (rep,) = scan_paths([tmp_path]).runs
    assert rep.verdict == "nonfinite"
    said = rep.warnings + [x.message for x in rep.findings] + [str(x.evidence) for x in rep.findings]
    assert any(f"{f}: truncated record at byte {len(whole)}" in w for w in said), said
    ev = read_run(dst)
    assert 0.123456 not in set(ev.scalars[ev.scalars["tag"] == "train/loss"]["value"])
    f.write_bytes(b"not a line\n" + whole)
    assert any("no '<timestamp> <value> <step>' line skipped" in w for w in read_run(dst).warnings)


def test_metric_lines() -> None:
    assert parse_metric_line("1 2.5 7") == (0.001, 2.5, 7)
    assert parse_metric_line("1 2.5") == (0.001, 2.5, 0)  # MLflow < 1.0 wrote no step
    assert math.isinf(parse_metric_line("1 -inf 3")[1])
    assert parse_metric_line("1 x 3") is None and parse_metric_line("") is None


def test_replay_compares_against_a_database_run(db: Path) -> None:
    """``replay --logdir <db run>``: the run scan named is the log the replay's fidelity check reads."""
    from adamdiag.replay.runner import _run_events, find_run_dir

    run = db_runs(db)["lr_too_high"]
    ck = SAMPLE_LOGS / "lr_too_high" / "checkpoints" / "step_000050.pt"
    assert find_run_dir(ck, run) == run
    ev = _run_events(run)
    assert series(ev, "train/loss")[0] == list(range(1, 601))


@pytest.mark.parametrize("version", ["2.22.0", "2.9.2"])
def test_stores_of_older_mlflow_versions(tmp_path: Path, version: str) -> None:
    """Held out (developed on 3.17.2): both stores as MLflow 2.22.0 and 2.9.2 wrote them
    (tools/runlab/make_mlflow_older_fixture.py): the same run read from each, the params typed back."""
    shutil.copytree(FIXTURES / "older" / version, tmp_path / version)
    with (
        gzip.open(tmp_path / version / "mlflow.db.gz", "rb") as f_in,
        open(tmp_path / version / "mlflow.db", "wb") as f,
    ):
        shutil.copyfileobj(f_in, f)
    (tmp_path / version / "mlflow.db.gz").unlink()
    runs = discover([tmp_path]).runs
    assert len(runs) == 2
    for run in runs:
        steps, loss = series(read_run(run), "train/loss")
        assert steps == list(range(0, 3000, 10)) and np.isnan(loss[250]) and np.isnan(loss).sum() == 1
    for rep in scan_paths([tmp_path]).runs:
        assert rep.blowup_step == 2000
        msgs = " | ".join(f.message for f in rep.findings)
        assert (
            "beta2=0.95, eps=1e-06" in msgs
            and "gradient clipping at 1 (max_grad_norm in the MLflow run's params" in msgs
        )


def test_an_hf_run_in_mlflow_and_tensorboard_is_diagnosed_once(db: Path, tmp_path: Path) -> None:
    """The HF Trainer logged to both (loss vs train/loss, the same series): scanned together from one folder, the
    event files' run is diagnosed and the database's is a note; the database's other runs stay."""
    shutil.copytree(FIXTURES / "sqlite" / "hf", tmp_path / "hf")
    shutil.copy(db, tmp_path / "mlflow.db")
    rep = scan_paths([tmp_path])
    names = sorted(Path(r.run).name.rsplit("-", 1)[0] for r in rep.runs)
    assert len(rep.runs) == 4 and "hf-shift80" not in names
    assert any("hf-shift80" in w and "the same loss log as" in w for w in rep.warnings)


def test_damaged_pages_sink_only_the_runs_they_hold(db: Path, tmp_path: Path) -> None:
    """Pages in the middle of the database overwritten: the run whose metrics they held is one AD902 line
    (SQLite: "malformed"), the others are diagnosed; no traceback."""
    raw = bytearray(db.read_bytes())
    at = len(raw) // 2 // 4096 * 4096
    raw[at : at + 8 * 4096] = b"\xa5" * (8 * 4096)
    (tmp_path / "mlflow.db").write_bytes(bytes(raw))
    res = CliRunner().invoke(app, ["scan", str(tmp_path)])
    assert res.exit_code == 0 and "Traceback" not in res.output
    assert "cannot read the MLflow database" in res.output
    rep = scan_paths([tmp_path])
    assert any(r.verdict != "inconclusive" for r in rep.runs)


def test_metrics_logged_without_a_step_are_read_in_logging_order(tmp_path: Path) -> None:
    """log_metric(key, value) without step=: MLflow stores step 0 for all 200 points, several within one
    millisecond. Read in the table's insertion order (the k-th point at step k, an AD901 warning saying so): the
    logged sequence exactly, the jump at the 150th point."""
    with gzip.open(FIXTURES / "nostep" / "mlflow.db.gz", "rb") as f_in:
        (tmp_path / "mlflow.db").write_bytes(f_in.read())
    (run,) = sqlite_runs(tmp_path / "mlflow.db")
    steps, loss = series(read_run(run), "loss")
    assert loss.tolist() == EXPECTED["nostep"]
    (rep,) = scan_paths([run]).runs
    assert rep.blowup_step == 150
    assert any(f.id == "AD901" and f.severity == "warning" and "logging order" in f.message for f in rep.findings)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo")
def test_a_fifo_among_a_runs_params_is_never_opened(tmp_path: Path) -> None:
    """params/ is read like metrics/ (framework_logs.metric_files): a FIFO there is passed over, not opened."""
    run = file_store_runs()["shift60"]
    dst = tmp_path / "mlruns" / run.parent.name / run.name
    shutil.copytree(run, dst)
    os.mkfifo(dst / "params" / "fifo")
    (rep,) = scan_paths([dst]).runs
    assert rep.blowup_step is not None
