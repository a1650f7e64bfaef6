"""Sacred FileStorageObserver runs written by Sacred 0.8.7 itself (tests/fixtures/sacred,
tools/runlab/make_sacred_fixtures.py): ``log_scalar`` values read back at their steps, the vcollapse sample logged
through Sacred diagnosed as from its TensorBoard log, NaN kept, a metric logged without a step on Sacred's count."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from adamdiag.errors import InputError
from adamdiag.io.events import discover, read_run
from adamdiag.io.sacred_log import is_sacred_metrics, read_sacred_metrics
from adamdiag.pipeline.scan import scan_paths

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sacred"
SAMPLE = Path(__file__).resolve().parents[2] / "sample_logs" / "vcollapse"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sacred") / "runs"
    shutil.copytree(FIXTURES / "runs", out)
    for gz in out.rglob("*.json.gz"):
        with gzip.open(gz, "rb") as f_in, open(gz.with_suffix(""), "wb") as f_out:
            shutil.copyfileobj(f_in, f_out)
        gz.unlink()
    return out


def series(events, tag: str) -> tuple[list[int], np.ndarray]:  # noqa: ANN001
    s = events.scalars[events.scalars["tag"] == tag].sort_values("step")
    return s["step"].tolist(), s["value"].to_numpy()


def test_the_sample_logged_through_sacred_reads_and_diagnoses_as_its_tensorboard_log(runs: Path) -> None:
    assert discover([runs]).runs == [runs / "1", runs / "2"]  # _sources/ is no run
    sac, tb = read_run(runs / "1"), read_run(SAMPLE)
    for ours, theirs in (("loss", "train/loss"), ("grad_norm", "train/grad_norm"), ("lr", "train/lr")):
        a, b = series(sac, ours), series(tb, theirs)
        assert a[0] == b[0] == list(range(1, 2001))
        np.testing.assert_array_equal(a[1], b[1])  # float32 from TensorBoard, logged as float64: exact
    assert sac.scalars["wall_time"].min() > 1.7e9  # each value's own timestamp
    (a,), (b,) = scan_paths([runs / "1"]).runs, scan_paths([SAMPLE]).runs
    assert (a.verdict, a.blowup_step, a.warning_step) == (b.verdict, b.blowup_step, b.warning_step)
    assert a.verdict == "v_collapse"


def test_nan_and_a_metric_without_steps(runs: Path) -> None:
    ev = read_run(runs / "2")
    steps, loss = series(ev, "loss")
    assert steps == list(range(1, 31)) and np.isnan(loss[19:]).all() and np.isfinite(loss[:19]).all()
    assert series(ev, "episode_return")[0] == list(range(30))  # Sacred's own count, from 0
    (rep,) = scan_paths([runs / "2"]).runs
    assert rep.verdict == "nonfinite" and rep.blowup_step == 20


def test_damaged_and_foreign_files(tmp_path: Path, runs: Path) -> None:
    d = tmp_path / "r"
    shutil.copytree(runs / "2", d)
    text = (d / "metrics.json").read_text()
    (d / "metrics.json").write_text(text[: len(text) // 2])  # a flush cut short
    with pytest.raises(InputError, match="not valid JSON"):
        read_sacred_metrics(d / "metrics.json")
    doc = json.loads(text)
    doc["loss"]["values"] = doc["loss"]["values"][:-1]  # steps and values of different lengths
    (d / "metrics.json").write_text(json.dumps(doc, indent=2))
    data = read_sacred_metrics(d / "metrics.json")
    assert any("metric 'loss' has no steps and values of one length" in w for w in data.warnings)
    assert data.tags == ["episode_return"]
    (d / "run.json").unlink()  # a metrics.json without Sacred's files beside it is no Sacred run
    assert not is_sacred_metrics(d / "metrics.json")
    fifo = tmp_path / "f"
    fifo.mkdir()
    for sib in ("run.json", "config.json"):
        (fifo / sib).write_text("{}")
    os.mkfifo(fifo / "metrics.json")
    assert not is_sacred_metrics(fifo / "metrics.json")  # never opened
