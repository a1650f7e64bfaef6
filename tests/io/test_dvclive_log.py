"""DVCLive folders read as logs (adamdiag.io.dvclive_log), on folders dvclive 3.49.1 itself wrote
(tests/fixtures/dvclive, made by tools/runlab/make_dvclive_fixtures.py): a sample run logged again reads its exact
values, times and verdict, its params give eps; NaN/inf kept; bad input one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.io.events import discover, read_run
from adamdiag.pipeline.scan import scan_paths

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "dvclive"
SAMPLE_LOGS = Path(__file__).resolve().parents[2] / "sample_logs"


def series(events, tag: str) -> tuple[list[int], np.ndarray]:  # noqa: ANN001
    s = events.scalars[events.scalars["tag"] == tag].sort_values("step", kind="stable")
    return s["step"].tolist(), s["value"].to_numpy()


def test_a_sample_run_logged_through_dvclive() -> None:
    (run,) = discover([FIXTURES / "lr_too_high"]).runs
    assert run.name == "dvclive"
    dv, tb = read_run(run), read_run(SAMPLE_LOGS / "lr_too_high")
    for tag in ("train/loss", "train/grad_norm", "train/lr"):
        a, b = series(dv, tag), series(tb, tag)
        assert a[0] == b[0], tag
        np.testing.assert_array_equal(a[1], b[1])  # float32 from TensorBoard, written by repr: exact
    assert dv.scalars["wall_time"].min() > 1.7e9  # timestamp=True: each row's own time
    (rep,) = scan_paths([run]).runs
    assert (rep.verdict, rep.blowup_step) == ("lr_too_high", 77)
    msgs = " | ".join(f.message for f in rep.findings)
    assert "DVCLive's dvclive/plots/metrics" in msgs
    assert "beta2=0.999, eps=1e-08 from HF Trainer's arguments (DVCLive's params.yaml)" in msgs


def test_non_finite_values() -> None:
    ev = read_run(FIXTURES / "nonfinite" / "dvclive")
    steps, loss = series(ev, "train/loss")
    assert steps == list(range(40))  # next_step() counts from 0
    assert np.isnan(loss[29:34]).all() and np.isposinf(loss[34:]).all()
    (rep,) = scan_paths([FIXTURES / "nonfinite"]).runs
    assert rep.verdict == "nonfinite" and rep.blowup_step == 29


def test_damaged_tables(tmp_path: Path) -> None:
    """A row cut mid-write is skipped with a warning; a .tsv without a step column is named and skipped; a
    folder with nothing readable is one line."""
    shutil.copytree(FIXTURES / "nonfinite", tmp_path / "run")
    metrics = tmp_path / "run" / "dvclive" / "plots" / "metrics"
    with open(metrics / "train" / "loss.tsv", "a") as f:
        f.write("40\t0.2")  # cut mid-write: 0.2 of a longer number, were it read
    (metrics / "other.tsv").write_text("epoch\tacc\n0\t0.5\n")
    ev = read_run(tmp_path / "run" / "dvclive")
    assert any("loss.tsv: truncated record at byte" in w for w in ev.warnings)
    assert 40 not in set(ev.scalars[ev.scalars["tag"] == "train/loss"]["step"])
    with open(metrics / "train" / "loss.tsv", "a") as f:
        f.write("\nx\ty\n")
    assert any(
        "row(s) that are no '<step> <value>' row skipped" in w for w in read_run(tmp_path / "run" / "dvclive").warnings
    )
    assert any("other.tsv: no 'step' column" in w for w in ev.warnings)
    empty = tmp_path / "empty" / "dvclive"
    (empty / "plots" / "metrics").mkdir(parents=True)
    (empty / "metrics.json").write_text("{}")
    (empty / "plots" / "metrics" / "loss.tsv").write_text("step\tloss\n")  # the header, no row yet
    res = CliRunner().invoke(app, ["scan", str(tmp_path / "empty")])
    assert "Traceback" not in res.output and "no logged metric" in res.output


def test_a_plots_folder_without_dvclive_files_is_no_run(tmp_path: Path) -> None:
    """plots/metrics beside a metrics.json but holding no table (a project's own figures) is no DVCLive run."""
    (tmp_path / "plots" / "metrics").mkdir(parents=True)
    (tmp_path / "plots" / "metrics" / "roc.png").write_bytes(b"\x89PNG")
    (tmp_path / "metrics.json").write_text("{}")
    res = CliRunner().invoke(app, ["scan", str(tmp_path)])
    assert res.exit_code == 2 and "DVCLive folders" in res.output


def test_hf_trainers_dvclive_callback_reads_as_its_tensorboard_log() -> None:
    """report_to=["dvclive", "tensorboard"], a log every 4 steps and an evaluation every 10: DVCLive's step counts
    the Trainer's log calls (train, eval and summary alike); read at the Trainer's global step and under its
    TensorBoard names, the curves, verdict and blowup are the TensorBoard log's — and scanned together, one run."""
    dv = read_run(FIXTURES / "hf" / "dvclive")
    tb_dir = next((FIXTURES / "hf" / "out" / "runs").iterdir())
    tb = read_run(tb_dir)
    for tag in ("train/loss", "train/grad_norm", "train/learning_rate", "train/epoch"):
        a, b = series(dv, tag), series(tb, tag)
        assert a[0] == b[0], tag
        np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
    assert series(dv, "train/loss")[0][:3] == [4, 8, 12]
    assert series(dv, "eval/runtime")[0][:2] == [10, 20]  # the evaluations, at their own steps
    a, b = scan_paths([FIXTURES / "hf" / "dvclive", tb_dir]).runs
    assert (a.verdict, a.confidence, a.blowup_step) == (b.verdict, b.confidence, b.blowup_step)
    assert any("HF Trainer's DVCLiveCallback: at the Trainer's global step" in f.message for f in a.findings)
    together = scan_paths([FIXTURES / "hf"])
    assert len(together.runs) == 1 and any("the same loss log as" in w for w in together.warnings)


@pytest.mark.parametrize(
    ("was", "now"),
    [("logging_first_step: false", "logging_first_step: true"), ("logging_steps: 4", "logging_steps: 3")],
)
def test_hf_dvclive_steps_that_do_not_fit_stay_log_indices(tmp_path: Path, was: str, now: str) -> None:
    """params.yaml that does not match the run (a first-step log it lacks; logging every 3 steps, which the
    summary at max_steps 120 contradicts): the steps stay DVCLive's log indices, and an AD901 warning says so."""
    shutil.copytree(FIXTURES / "hf" / "dvclive", tmp_path / "dvclive")
    p = tmp_path / "dvclive" / "params.yaml"
    assert was in p.read_text()
    p.write_text(p.read_text().replace(was, now))
    (rep,) = scan_paths([tmp_path / "dvclive"]).runs
    assert any(f.id == "AD901" and f.severity == "warning" and "log indices" in f.message for f in rep.findings)


def test_hf_dvclive_with_a_logging_ratio_stays_log_indices(tmp_path: Path) -> None:
    """logging_steps 0.1 (HF: a tenth of the run) says no whole interval: log indices, a warning, no traceback."""
    shutil.copytree(FIXTURES / "hf" / "dvclive", tmp_path / "dvclive")
    p = tmp_path / "dvclive" / "params.yaml"
    p.write_text(p.read_text().replace("logging_steps: 4", "logging_steps: 0.1"))
    (rep,) = scan_paths([tmp_path / "dvclive"]).runs
    assert any(f.id == "AD901" and "log indices" in f.message for f in rep.findings)


def test_lightning_dvclive_logger_reads_as_its_tensorboard_log() -> None:
    """Lightning's DVCLiveLogger sets DVCLive's step to the trainer's global step: the same curve as its
    TensorBoardLogger (every 5 steps), verdict and blowup."""
    dv = read_run(FIXTURES / "lightning" / "dvclive")
    tb = read_run(FIXTURES / "lightning" / "tb" / "version_0")
    a, b = series(dv, "train/loss"), series(tb, "train/loss")
    assert a[0] == b[0] and a[0][:2] == [4, 9]
    np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
    x, y = scan_paths([FIXTURES / "lightning" / "dvclive", FIXTURES / "lightning" / "tb" / "version_0"]).runs
    assert (x.verdict, x.blowup_step) == (y.verdict, y.blowup_step)


@pytest.mark.parametrize(
    ("optim", "not_adam"),
    [
        ("adafactor", True),
        ("sgd", True),
        ("stable_adamw", True),
        ("apollo_adamw", True),
        ("adamw_torch_fused", False),
        ("galore_adamw", False),
    ],
)
def test_hf_optim_that_is_no_adam_makes_the_run_not_adam(tmp_path: Path, optim: str, not_adam: bool) -> None:
    """HF Trainer's logged ``optim`` (here through DVCLiveCallback's params.yaml): Adafactor or SGD has no Adam v to
    rebuild — the run is not Adam (AD903, inconclusive), as a checkpoint of another optimizer makes it. StableAdamW
    has Adam's v, but its update clipping bounds the step a collapsed v would blow up, as APOLLO's norm-growth limiter
    does; GaLore's AdamW is Adam's step on a projected gradient."""
    from adamdiag.pipeline.scan import scan_paths

    shutil.copytree(FIXTURES / "hf", tmp_path / "hf")
    shutil.rmtree(tmp_path / "hf" / "out")  # its TensorBoard copy: the DVCLive folder is the run
    params = tmp_path / "hf" / "dvclive" / "params.yaml"
    params.write_text(params.read_text().replace("optim: adamw_torch_fused", f"optim: {optim}"))
    (rep,) = scan_paths([tmp_path / "hf"]).runs
    ad903 = [f for f in rep.findings if f.id == "AD903"]
    assert bool(ad903) == not_adam
    if not_adam:
        assert rep.verdict == "inconclusive" and f"HF Trainer's optim '{optim}'" in ad903[0].message
        assert ("update clipping" in ad903[0].message) == (optim == "stable_adamw")
        assert ("norm-growth limiter" in ad903[0].message) == (optim == "apollo_adamw")
