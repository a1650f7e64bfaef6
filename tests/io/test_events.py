"""Event reader: parity with tbparse/EventAccumulator on files from every real writer, full
resolution, restarts, histograms, the fast path against the reference, and the tags/export CLI."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from events_util import (
    tf1_events,
    tf2_events,
    tf2_histogram_event,
    value_of,
    write_records,
    write_tbx,
    write_torch,
)

from adamdiag.analysis.frames import series
from adamdiag.errors import InputError
from adamdiag.io import events as E
from adamdiag.io import tfrecord as T


def _tbparse_scalars(logdir: Path, kind: str = "scalars") -> pd.DataFrame:
    from tbparse import SummaryReader

    df = getattr(SummaryReader(str(logdir)), kind)
    df = df.assign(value=df["value"].map(float))
    return df[["tag", "step", "value"]].sort_values(["tag", "step"], kind="stable").reset_index(drop=True)


def _ours(run: E.RunEvents) -> pd.DataFrame:
    df = run.scalars[["tag", "step", "value"]].astype({"tag": str})
    return df.sort_values(["tag", "step"], kind="stable").reset_index(drop=True)


def _assert_fast_equals_reference(path: Path) -> None:
    """The vectorized reader gives exactly the reference reader's result for every file."""
    for f in E.run_files(path):
        fast = E._assemble("r", [E.read_file(f)])
        ref = E._assemble("r", [E.read_file(f, fast=False)])
        pd.testing.assert_frame_equal(fast.scalars, ref.scalars)
        pd.testing.assert_frame_equal(fast.histograms, ref.histograms)
        assert fast.warnings == ref.warnings and fast.skipped == ref.skipped and fast.file_info == ref.file_info
        buf = bytearray(f.read_bytes())
        walk = T.walk_records(buf, len(buf))
        seq = T.walk_records(buf, len(buf), seq_only=True)
        scan = T.read_records_ref(bytes(buf))
        assert walk.offsets.tolist() == seq.offsets.tolist() == scan.offsets
        assert walk.lengths.tolist() == scan.lengths
        assert T.verify_crcs(buf, walk.offsets, walk.lengths)


# ---------------------------------------------------------------------------------- writers


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory) -> Path:
    return write_torch(tmp_path_factory.mktemp("torch") / "run", 300, hist_every=50, extras=True)


def test_torch_writer_parity_with_tbparse(torch_run):
    run = E.read_run(torch_run)
    ours, theirs = _ours(run), _tbparse_scalars(torch_run)
    pd.testing.assert_frame_equal(ours, theirs, check_dtype=False, check_categorical=False)
    assert len(run.scalars) == 600 and run.warnings == []
    assert run.skipped == {"images": 1, "text": 1}
    assert run.scalars.dtypes["step"] == np.int64 and run.scalars.dtypes["value"] == np.float64
    assert list(run.scalars.columns) == E.SCALAR_COLUMNS
    _assert_fast_equals_reference(torch_run)


def test_tensorboardx_parity_with_tbparse(tmp_path):
    logdir = write_tbx(tmp_path / "tbx", 200, tags=("train/loss", "train/acc", "lr"))
    run = E.read_run(logdir)
    pd.testing.assert_frame_equal(_ours(run), _tbparse_scalars(logdir), check_dtype=False, check_categorical=False)
    assert len(run.scalars) == 600
    _assert_fast_equals_reference(logdir)


@pytest.mark.parametrize("merged", [False, True])
def test_tf1_simple_value_parity(tmp_path, merged):
    logdir = tmp_path / "tf1"
    write_records(logdir / "events.out.tfevents.1.host", tf1_events(150, ("a", "b", "c"), merged=merged))
    run = E.read_run(logdir)
    pd.testing.assert_frame_equal(_ours(run), _tbparse_scalars(logdir), check_dtype=False, check_categorical=False)
    assert len(run.scalars) == 450
    _assert_fast_equals_reference(logdir)


@pytest.mark.parametrize("double", [False, True])
@pytest.mark.parametrize("content", [False, True])
def test_tf2_tensor_scalars_parity(tmp_path, double, content):
    logdir = tmp_path / "tf2"
    write_records(logdir / "events.out.tfevents.1.host.v2", tf2_events(120, double=double, content=content))
    run = E.read_run(logdir)
    # tbparse files TF2 scalars under .tensors (EventAccumulator keeps them as tensors).
    pd.testing.assert_frame_equal(
        _ours(run), _tbparse_scalars(logdir, "tensors"), check_dtype=False, check_categorical=False
    )
    assert len(run.scalars) == 240 and run.skipped == {}
    assert run.file_info[0]["kinds"] == ["tensor"]
    _assert_fast_equals_reference(logdir)


def test_tensor_without_known_plugin_is_skipped_not_guessed(tmp_path):
    # Metadata arrives only with the *second* value of 'late': the first one cannot be known to be
    # a scalar (TensorBoard drops it too), later ones are.
    evs = tf2_events(3, double=False, content=True, tags=("late",))
    evs[0].summary.value[0].ClearField("metadata")
    evs[1].summary.value[0].metadata.plugin_data.plugin_name = "scalars"
    logdir = tmp_path / "r"
    write_records(logdir / "events.out.tfevents.1.h", evs)
    run = E.read_run(logdir)
    assert run.scalars["step"].tolist() == [1, 2]
    assert run.skipped == {"tensor": 1}
    _assert_fast_equals_reference(logdir)


def test_mixed_writers_and_plugins_fast_equals_reference(tmp_path):
    """One file with everything interleaved: simple values, TF2 tensors with/without metadata,
    histograms (both kinds), text, step 0 and negative steps, long tags and a multi-value summary."""
    from tensorboard.compat.proto import event_pb2, summary_pb2

    evs = []
    long_tag = "model/" + "layer_" * 30 + "weight"
    for s in range(-2, 400):
        evs.append(
            event_pb2.Event(
                wall_time=1e9 + s,
                step=s,
                summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="loss", simple_value=s * 0.25)]),
            )
        )
        evs.append(
            event_pb2.Event(
                step=s, summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=long_tag, simple_value=-s)])
            )
        )
        evs += tf2_events(1, double=s % 2 == 0, content=s % 3 == 0, tags=(f"t{s % 3}",))[:1]
        evs[-1].step = s
        if s % 50 == 0:
            evs.append(tf2_histogram_event(s, np.array([[-1.0, 0.0, 3], [0.0, 2.0, 5]])))
            v = summary_pb2.Summary.Value(tag="txt")
            v.metadata.plugin_data.plugin_name = "text"
            v.tensor.dtype = 7
            v.tensor.string_val.append(b"hi")
            evs.append(event_pb2.Event(step=s, summary=summary_pb2.Summary(value=[v])))
            evs += tf1_events(1, ("m1", "m2"), merged=True)
    logdir = tmp_path / "mixed"
    write_records(logdir / "events.out.tfevents.1.h", evs)
    run = E.read_run(logdir)
    assert set(run.scalars["tag"].astype(str)) >= {"loss", long_tag, "t0", "t1", "t2", "m1", "m2"}
    assert run.skipped["text"] == 8
    assert len(run.histograms) == 8 and run.histograms["approx"].all()
    assert (run.scalars.loc[run.scalars["tag"] == "loss", "step"].to_numpy() == np.arange(-2, 400)).all()
    _assert_fast_equals_reference(logdir)


# ----------------------------------------------------------------------------- resolution


def _spike_check(tmp_path: Path, steps: int, spike_at: int) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    logdir = tmp_path / "spike"
    w = SummaryWriter(log_dir=str(logdir))
    for s in range(steps):
        w.add_scalar("loss", 1e3 if s == spike_at else 1.0, s)
    w.close()
    run = E.read_run(logdir)
    loss = series(run.scalars, "loss")
    assert len(loss) == steps and loss.index.is_monotonic_increasing
    assert loss.idxmax() == spike_at and loss.max() == 1e3
    ea = EventAccumulator(str(logdir))  # TensorBoard's default: a 10,000-point reservoir sample
    ea.Reload()
    assert len(ea.Scalars("loss")) < len(run.scalars)


def test_one_step_spike_survives_20k(tmp_path):
    _spike_check(tmp_path, 20_000, 12_345)


@pytest.mark.slow
def test_one_step_spike_survives_100k(tmp_path):
    _spike_check(tmp_path, 100_000, 77_777)


# ------------------------------------------------------------------------------ histograms


def test_histogram_sum_squares_is_mean_g2(tmp_path):
    import torch
    from torch.utils.tensorboard import SummaryWriter

    g = torch.Generator().manual_seed(3)
    grads = {s: torch.randn(4096, generator=g) * 10.0 ** (-s) for s in range(5)}
    logdir = tmp_path / "h"
    w = SummaryWriter(log_dir=str(logdir))
    for s, t in grads.items():
        w.add_histogram("grad/layer1.weight", t, s)
    w.close()
    h = E.read_run(logdir).histograms
    assert list(h.columns) == E.HISTOGRAM_COLUMNS and len(h) == 5 and not h["approx"].any()
    for s, t in grads.items():
        row = h[h["step"] == s].iloc[0]
        want = float((t.double() ** 2).mean())
        assert row["sum_squares"] / row["num"] == pytest.approx(want, rel=1e-6)
        assert row["num"] == 4096 and row["min"] == pytest.approx(float(t.min()))


def test_tf2_histogram_tensor(tmp_path):
    buckets = np.array([[-2.0, -1.0, 4], [-1.0, 1.0, 10], [1.0, 3.0, 6]])
    logdir = tmp_path / "h2"
    write_records(logdir / "events.out.tfevents.1.h.v2", [tf2_histogram_event(7, buckets)])
    h = E.read_run(logdir).histograms
    row = h.iloc[0]
    centres, counts = (buckets[:, 0] + buckets[:, 1]) / 2, buckets[:, 2]
    assert row["step"] == 7 and row["num"] == 20 and row["min"] == -2 and row["max"] == 3
    assert row["sum_squares"] == pytest.approx((counts * centres**2).sum()) and row["approx"]


# --------------------------------------------------------------------------------- restarts


def _f32(x: float) -> float:
    return float(np.float32(x))


def _two_segments(tmp_path: Path, first: tuple[int, int], second: tuple[int, int]) -> Path:
    logdir = tmp_path / "restart"
    write_torch(logdir, first[1] - first[0], tags=("loss",), start=first[0])
    time.sleep(1.1)  # torch names files by the second: keep the two files apart
    write_torch(logdir, second[1] - second[0], tags=("loss",), start=second[0], offset=100.0)
    assert len(E.run_files(logdir)) == 2
    return logdir


def test_restart_overlap_later_segment_wins(tmp_path):
    logdir = _two_segments(tmp_path, (0, 100), (50, 150))
    run = E.read_run(logdir)
    assert len(run.scalars) == 200 and sorted(run.scalars["segment"].unique()) == [0, 1]
    assert run.scalars.groupby("segment")["source_file"].nunique().tolist() == [1, 1]
    raw = series(run.scalars, "loss", raw=True)
    assert len(raw) == 200 and raw.index.duplicated().sum() == 50
    s = series(run.scalars, "loss")
    assert s.index.tolist() == list(range(150))
    assert s[10] == value_of(10, 0) and s[60] == _f32(value_of(60, 0) + 100) and s[149] == _f32(value_of(149, 0) + 100)


def test_restart_from_earlier_step_drops_orphans(tmp_path):
    # The first attempt got to step 99, the restart resumed from step 50 and died at 79:
    # the run really went 0..49 (first) then 50..79 (second); 80..99 of the first were undone.
    logdir = _two_segments(tmp_path, (0, 100), (50, 80))
    s = series(E.read_run(logdir).scalars, "loss")
    assert s.index.tolist() == list(range(80)) and s[79] == _f32(value_of(79, 0) + 100)


def test_segments_ordered_by_first_wall_time_not_name(tmp_path):
    logdir = _two_segments(tmp_path, (0, 10), (10, 20))
    older, newer = E.run_files(logdir)
    # Swap the names: the file with the later name now holds the earlier events.
    tmp = older.with_name("tmp")
    older.rename(tmp)
    newer.rename(older)
    tmp.rename(newer)
    run = E.read_run(logdir)
    assert Path(run.files[0]).name == newer.name
    first = run.scalars[run.scalars["segment"] == 0]
    assert first["step"].max() == 9 and str(first["source_file"].iloc[0]) == str(newer)


# ------------------------------------------------------------------------------ discovery


def test_find_runs_recursive_and_errors(tmp_path, torch_run):
    root = tmp_path / "logs"
    shutil.copytree(torch_run, root / "a" / "run1")
    shutil.copytree(torch_run, root / "b" / "deep" / "run2")
    (root / "empty").mkdir()
    runs = E.find_runs([root])
    assert [r.relative_to(root).as_posix() for r in runs] == ["a/run1", "b/deep/run2"]
    one = E.run_files(runs[0])[0]
    assert E.find_runs([one]) == [one]
    with pytest.raises(InputError, match="no such file"):
        E.find_runs([tmp_path / "missing"])
    with pytest.raises(
        InputError,
        match=r"no TensorBoard event files \(events.out.tfevents.\*\) nor Hugging Face trainer_state.json, Lightning "
        r"metrics.csv, wandb run files \(run-\*.wandb\), MLflow runs \(mlruns/, mlflow.db\), DVCLive folders, "
        r"mmengine scalars.json, Detectron2 or Sacred metrics.json, torchtune logs \(log_\*.txt\) or mmcv json logs "
        r"\(\*.log.json\) under",
    ):
        E.find_runs([root / "empty"])


def test_read_runs_parallel_equals_sequential(tmp_path, torch_run, monkeypatch):
    for i in range(3):
        shutil.copytree(torch_run, tmp_path / f"r{i}")
    seq = E.read_runs([tmp_path], workers=1)
    monkeypatch.setattr(E, "PARALLEL_MIN_BYTES", 0)
    seen = []
    par = E.read_runs([tmp_path], workers=2, progress=lambda done, total: seen.append((done, total)))
    assert [r.run for r in seq] == [r.run for r in par] == [str(tmp_path / f"r{i}") for i in range(3)]
    for a, b in zip(seq, par):
        pd.testing.assert_frame_equal(a.scalars, b.scalars)
        pd.testing.assert_frame_equal(a.histograms, b.histograms)
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1] > 0


def test_framing_writer_matches_tensorboard_record_writer():
    import io

    from tensorboard.summary.writer.record_writer import RecordWriter

    out = io.BytesIO()
    rw = RecordWriter(out)
    payloads = [b"", b"x", bytes(range(256)) * 5]
    for p in payloads:
        rw.write(p)
    assert out.getvalue() == b"".join(T.frame(p) for p in payloads)


def test_speculative_walk_handles_irregular_lengths(tmp_path):
    """Lengths that repeat, then break the pattern at random: the walk equals the plain loop."""
    rng = np.random.default_rng(0)
    lengths = np.concatenate(
        [np.tile([30, 31, 45], 400), rng.integers(0, 90, 500), np.full(3000, 17), rng.integers(0, 5, 300)]
    )
    data = b"".join(T.frame(bytes([7]) * int(n)) for n in lengths)
    buf = bytearray(data)
    walk = T.walk_records(buf, len(buf))
    assert walk.lengths.tolist() == lengths.tolist() and walk.stop == len(buf)
    assert T.verify_crcs(buf, walk.offsets, walk.lengths)


# ------------------------------------------------------------------------------------- CLI


def _cli(*args):
    from typer.testing import CliRunner

    from adamdiag.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_tags_text_json_csv(torch_run):
    r = _cli("tags", torch_run)
    assert r.exit_code == 0, r.output
    assert "loss" in r.stdout and "grad/w" in r.stdout and "histogram" in r.stdout and "0..299" in r.stdout
    r = _cli("tags", torch_run, "--format", "json")
    doc = json.loads(r.stdout)
    assert doc["schema"] == "adamdiag.tags/1"
    tags = {(t["tag"], t["kind"]): t for t in doc["runs"][0]["tags"]}
    assert tags[("loss", "scalar")]["count"] == 300 and tags[("grad/w", "histogram")]["count"] == 6
    assert doc["runs"][0]["skipped"] == {"images": 1, "text": 1}
    assert doc["runs"][0]["files"][0]["writer"] == "simple_value+histo"
    r = _cli("tags", torch_run, "-f", "csv")
    rows = r.stdout.strip().splitlines()
    assert rows[0] == "run,tag,kind,count,step_min,step_max,segments" and len(rows) == 4


def test_cli_export_parquet_and_csv(tmp_path, torch_run):
    out = tmp_path / "new" / "dir" / "scalars.parquet"
    r = _cli("export", torch_run, "-o", out)
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(out)
    assert list(df.columns) == E.SCALAR_COLUMNS and len(df) == 600
    r = _cli("export", torch_run, "-o", tmp_path / "h.csv", "--histograms")
    assert r.exit_code == 0, r.output
    h = pd.read_csv(tmp_path / "h.csv")
    assert len(h) == 6 and {"sum_squares", "num"} <= set(h.columns)


def test_cli_export_refuses_to_overwrite_input_and_bad_suffix(tmp_path, torch_run):
    run = tmp_path / "run"
    shutil.copytree(torch_run, run)
    event_file = E.run_files(run)[0]
    before = event_file.read_bytes()
    target = event_file.with_name(event_file.name + ".csv")
    event_file.rename(target)  # an event file that happens to end in .csv
    r = _cli("export", run, "-o", target)
    assert r.exit_code == 2 and "refusing to overwrite input" in r.stderr
    assert target.read_bytes() == before
    r = _cli("export", run, "-o", tmp_path / "out.xlsx")
    assert r.exit_code == 2 and "use .parquet or .csv" in r.stderr


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_cli_input_errors_exit_2_one_line(tmp_path, case):
    target = tmp_path / "nothing"
    if case == "empty":
        target.mkdir()
    for cmd in (("tags", target), ("export", target, "-o", tmp_path / "x.csv")):
        r = _cli(*cmd)
        assert r.exit_code == 2
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
        assert ("no such file" if case == "missing" else "no TensorBoard event files") in r.stderr


def test_reader_never_modifies_inputs(torch_run):
    files = E.run_files(torch_run)
    before = {f: (f.read_bytes(), os.stat(f).st_mtime_ns) for f in files}
    E.read_run(torch_run)
    E.read_runs([torch_run])
    assert {f: (f.read_bytes(), os.stat(f).st_mtime_ns) for f in files} == before
