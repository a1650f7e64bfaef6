"""The event reader against TensorBoard's own reader, on files written by the real writers: TF2
``tf.summary`` in every dtype, several file writers in one folder, TF1 ``FileWriter`` (merged summaries,
a restart's ``SessionLog.START``), Keras 3's TensorBoard callback (tests/fixtures/events_tf/, written by
tools/runlab/make_event_fixtures.py, which records the values each writer was handed), and torch's
SummaryWriter / tensorboardX written here (``new_style``, ``add_scalars``, ``add_histogram_raw``,
``add_hparams``, ``purge_step``, a restart without it, wall times going backwards, NaN/inf).

Per tag the (step, value) series must equal ``EventAccumulator``'s (size guidance 0: every event)
exactly — and the writer's recorded values where there are some. Deliberate differences from TensorBoard
(README, "Messy log trees"): ``add_scalars``/``add_hparams`` folders are read as tags of the writer's run,
and where a restart *without* a purge re-logs steps, TensorBoard shows both curves while the diagnosis
takes the later file's values (``series``; every row stays in the frame).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from adamdiag.analysis.frames import series
from adamdiag.analysis.tags import pick_grad_norm_tag, pick_loss_tag, pick_lr_tag
from adamdiag.cli import app
from adamdiag.io import events as E

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "events_tf"
EXPECTED = json.loads((FIX / "expected.json").read_text())


def _accumulate(
    logdir: Path,
) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, float, float, float]]]]:
    """TensorBoard's view of one folder (one TensorBoard run): scalars per tag as (step, value) in its
    order — ``simple_value`` and plugin-'scalars' tensors — and histograms as (step, min, max, count)."""
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util

    acc = ea.EventAccumulator(str(logdir), size_guidance={k: 0 for k in ea.DEFAULT_SIZE_GUIDANCE})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, float(e.value)) for e in acc.Scalars(t)] for t in tags["scalars"]}
    hists = {
        t: [(e.step, e.histogram_value.min, e.histogram_value.max, e.histogram_value.num) for e in acc.Histograms(t)]
        for t in tags["histograms"]
    }
    for t in tags["tensors"]:
        plugin = acc.SummaryMetadata(t).plugin_data.plugin_name
        arrays = [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(t)]
        if plugin == "scalars":
            scalars[t] = [(s, float(a.item())) for s, a in arrays]
        elif plugin == "histograms":
            hists[t] = [(s, float(a[0, 0]), float(a[-1, 1]), float(a[:, 2].sum())) for s, a in arrays]
    return scalars, hists


def _same(a: list, b: list) -> bool:
    """Equal row by row, NaN equal to NaN (exact: no tolerance)."""
    return len(a) == len(b) and all(
        len(x) == len(y) and all(p == q or (math.isnan(p) and math.isnan(q)) for p, q in zip(x, y))
        for x, y in zip(a, b)
    )


def _rows(run: E.RunEvents, tag: str) -> list[tuple[int, float]]:
    """Every row of ``tag`` in file order, as read (no dedup)."""
    raw = series(run.scalars, tag, raw=True)
    return list(zip(raw.index.tolist(), raw.tolist()))


def _ours_hist(run: E.RunEvents, tag: str) -> list[tuple[int, float, float, float]]:
    h = run.histograms[run.histograms["tag"] == tag]
    return list(zip(h["step"].tolist(), h["min"].tolist(), h["max"].tolist(), h["num"].tolist()))


def _assert_like_tensorboard(logdir: Path, run: E.RunEvents | None = None, prefix: str = "") -> E.RunEvents:
    """adamdiag's rows of every tag of ``logdir`` (a TensorBoard run) equal EventAccumulator's, in order."""
    run = run or E.read_run(logdir)
    scalars, hists = _accumulate(logdir)
    assert scalars or hists
    for tag, theirs in scalars.items():
        assert _same(_rows(run, prefix + tag), theirs), tag
    for tag, theirs in hists.items():
        assert _ours_hist(run, prefix + tag) == theirs, tag
    return run


def _trace_rows(trace: E.Trace | None, names: list[str]) -> list[tuple]:
    """A Trace as plain rows: (step, kind, scalar rows before, histogram rows before, tags) per event."""
    assert trace is not None
    tags: list[list[str]] = [[] for _ in trace.step]
    for ev, code in zip(trace.tag_ev.tolist(), trace.tag_code.tolist()):
        tags[ev].append(names[code])
    cols = (trace.step.tolist(), trace.kind.tolist(), trace.s_before.tolist(), trace.h_before.tolist())
    return [(*row, tuple(t)) for *row, t in zip(*cols, tags)]


def _assert_fast_equals_reference(logdir: Path, chunk: int = 256) -> None:
    """The vectorized reader, with chunks small enough to cut the files anywhere, equals the reference."""
    for f in E.run_files(logdir):
        ref = E.read_file(f, fast=False)
        fast_sink = E._Sink()
        E._read_fast(f, fast_sink, check_crc=True, chunk_bytes=chunk)
        fast_sink.flush()
        fast = E.read_file(f)
        assert fast.purges == ref.purges == [(p[0], p[1], p[2], bool(p[4])) for p in fast_sink.purges]
        # the out-of-order purge's trace: the same events, row positions and tags on every path
        chunked = fast_sink.trace()
        assert _trace_rows(fast.trace, fast.trace_tags) == _trace_rows(ref.trace, ref.trace_tags)
        assert _trace_rows(*chunked) == _trace_rows(ref.trace, ref.trace_tags)
        for a in (fast, ref):
            a.path = "r/f"  # (two runs of one file: the same path, so the frames compare whole)
        pd.testing.assert_frame_equal(E._assemble("r", [fast]).scalars, E._assemble("r", [ref]).scalars)


def _expected_series(d: dict[str, list]) -> list[tuple[int, float]]:
    return [(int(s), float(v)) for s, v in d]


# ------------------------------------------------------------------ TensorFlow / Keras (fixtures)


def test_tf2_scalars_every_dtype_and_histogram():
    logdir = FIX / "tf2_dtypes"
    run = _assert_like_tensorboard(logdir)
    exp = EXPECTED["tf2_dtypes"]
    for tag, pairs in exp["scalars"].items():
        # tf.summary.scalar casts to float32; tf.summary.write keeps float64/float16/int32/int64 as given
        assert _same(_rows(run, tag), _expected_series(pairs)), tag
    assert {"write/float64", "write/int64", "write/float16"} <= set(exp["scalars"])
    assert math.isnan(series(run.scalars, "train/loss")[7]) and series(run.scalars, "train/loss")[9] == -math.inf
    for tag, rows in exp["histograms"].items():
        # TF2 histograms keep buckets only: the edges are the data's min and max, the counts its size
        assert _ours_hist(run, tag) == [tuple(r) for r in rows]
    assert run.skipped == {} and run.notes == [] and run.warnings == []
    tags = [str(t) for t in run.scalars["tag"].unique()]
    assert (pick_loss_tag(tags), pick_grad_norm_tag(tags), pick_lr_tag(tags)) == (
        "train/loss",
        "train/grad_norm",
        "train/learning_rate",
    )
    _assert_fast_equals_reference(logdir)


def test_tf2_several_file_writers_in_one_folder():
    logdir = FIX / "tf2_multi"
    run = _assert_like_tensorboard(logdir)  # every row, as TensorBoard lists them (both writers' steps 20-29)
    exp = EXPECTED["tf2_multi"]
    assert len(run.files) == 3 and len(_rows(run, "loss")) == 50
    cut = exp["restart_step"]
    for tag in ("loss", "grad_norm"):
        # the diagnosis takes the later writer's values where it re-logged steps (a restart)
        first = [p for p in _expected_series(exp["files"]["first"][tag]) if p[0] < cut]
        want = first + _expected_series(exp["files"]["restart"][tag])
        s = series(run.scalars, tag)
        assert _same(list(zip(s.index.tolist(), s.tolist())), want), tag
    assert _same(_rows(run, "lr"), _expected_series(exp["files"]["lr"]["lr"]))


def test_tf1_file_writer_merged_summaries():
    logdir = FIX / "tf1"
    run = _assert_like_tensorboard(logdir)
    exp = EXPECTED["tf1"]
    for tag, pairs in exp["scalars"].items():
        assert _same(_rows(run, tag), _expected_series(pairs)), tag
    h = _ours_hist(run, "gradients/w")
    assert [(s, lo, hi, n) for s, lo, hi, n in h] == [tuple(r) for r in exp["histograms"]["gradients/w"]]
    _assert_fast_equals_reference(logdir)


def test_tf1_restart_session_log_start_purges_like_tensorboard():
    logdir = FIX / "tf1_restart"
    run = _assert_like_tensorboard(logdir)
    exp = EXPECTED["tf1_restart"]
    purge = exp["purge_step"]
    first, again = exp["files"]["first"], exp["files"]["restart"]
    want = [p for p in _expected_series(first["loss"]) if p[0] < purge] + _expected_series(again["loss"])
    assert _same(_rows(run, "loss"), want)
    # a tag only the first attempt logged loses its steps >= 40 too (TensorBoard purges every tag)
    assert [s for s, _ in _rows(run, "eval_only")] == [s for s, _ in first["eval_only"] if s < purge] == [5, 15, 25, 35]
    (note,) = run.notes
    assert "SessionLog START at step 40" in note and "22 scalar" in note
    _assert_fast_equals_reference(logdir)


def test_keras_tensorboard_callback_batch_epoch_and_histograms():
    logdir = FIX / "keras"
    exp = EXPECTED["keras"]
    run = E.read_run(logdir)
    for split in ("train", "validation"):
        _assert_like_tensorboard(logdir / split, run, prefix=f"{split}/")
    f32 = lambda x: float(np.float32(x))  # noqa: E731 - tf.summary.scalar stores float32
    # update_freq=2: batch summaries at even global batches (Keras counts them from 1)
    n_batches = exp["batches_per_epoch"] * len(exp["epoch_logs"])
    want = [(b, f32(exp["batch_logs"][b - 1]["loss"])) for b in range(1, n_batches + 1) if b % exp["update_freq"] == 0]
    assert _rows(run, "train/batch_loss") == want
    assert _rows(run, "train/epoch_loss") == [(e, f32(x["loss"])) for e, x in enumerate(exp["epoch_logs"])]
    assert _rows(run, "validation/epoch_loss") == [(e, f32(x["val_loss"])) for e, x in enumerate(exp["epoch_logs"])]
    for name in exp["weights"][0]:
        h = _ours_hist(run, f"train/{name}/histogram")
        assert [r[1:] for r in h] == [tuple(w[name]) for w in exp["weights"]], name
    tags = [str(t) for t in run.scalars["tag"].unique()]
    assert (pick_loss_tag(tags), pick_grad_norm_tag(tags), pick_lr_tag(tags)) == (
        "train/batch_loss",
        None,
        "train/epoch_learning_rate",
    )
    # weight histograms are no gradients: scan must not rebuild v from them (only tags with "grad")
    assert not any("grad" in str(t) for t in run.histograms["tag"].unique())


# --------------------------------------------------------------- torch / tensorboardX (written here)


def _val(s: int, j: int = 0) -> float:
    return 1.0 / (s + 3) + j + 1.0 / 3.0


def _name_files(logdir: Path, first: int) -> None:
    """Give the writers' files names in the order they were written (TensorBoard reads a folder by name;
    two SummaryWriters of one second differ only in a counter that does not sort as a number)."""
    for k, f in enumerate(sorted(logdir.glob("events.out.tfevents.*"), key=lambda p: E.read_file(p).first_wall_time)):
        f.rename(logdir / f"events.out.tfevents.{first + k}.host")


def test_torch_writer_new_style_add_scalars_histograms_hparams(tmp_path):
    import torch
    from torch.utils.tensorboard import SummaryWriter

    logdir = tmp_path / "run"
    w = SummaryWriter(str(logdir))
    g = torch.Generator().manual_seed(0)
    for s in range(12):
        w.add_scalar("train/loss", _val(s), s, new_style=True)  # a float32 tensor, plugin 'scalars'
        w.add_scalar("train/grad_norm", _val(s, 1), s, new_style=True, double_precision=True)  # float64
        w.add_scalar("train/lr", 1e-3, s)
        w.add_scalars("Loss", {"train": _val(s), "val": _val(s, 2)}, s)
        if s % 4 == 0:
            t = torch.randn(300, generator=g) * 0.1 ** (s / 4)
            w.add_histogram("grads/w", t, s)
            counts, edges = np.histogram(t.numpy(), bins=8)
            w.add_histogram_raw(
                "grads/raw", float(t.min()), float(t.max()), 300, float(t.sum()), float((t.double() ** 2).sum()),
                edges[1:].tolist(), counts.tolist(), global_step=s,
            )  # fmt: skip
    w.add_hparams({"lr": 1e-3}, {"hp/final_loss": 0.5})
    w.close()
    run = _assert_like_tensorboard(logdir)
    assert _rows(run, "train/loss") == [(s, float(np.float32(_val(s)))) for s in range(12)]
    assert _rows(run, "train/grad_norm") == [(s, _val(s, 1)) for s in range(12)]  # double_precision: exact
    assert _ours_hist(run, "grads/raw")[1][3] == 300
    # add_scalars' folders and add_hparams' are the writer's run: their tags carry the key
    for child in sorted(p for p in logdir.iterdir() if p.is_dir()):
        scalars, _ = _accumulate(child)
        for tag, theirs in scalars.items():
            ours = f"{tag}/{child.name.split('_', 1)[1]}" if child.name.startswith("Loss_") else tag
            assert _same(_rows(run, ours), theirs), (child.name, tag)
    tags = [str(t) for t in run.scalars["tag"].unique()]
    assert sorted(tags) == ["Loss/train", "Loss/val", "hp/final_loss", "train/grad_norm", "train/loss", "train/lr"]
    assert (pick_loss_tag(tags), pick_grad_norm_tag(tags), pick_lr_tag(tags)) == (
        "train/loss",
        "train/grad_norm",
        "train/lr",
    )


def test_tensorboardx_double_add_scalars_histogram(tmp_path):
    import tensorboardX

    logdir = tmp_path / "tbx"
    w = tensorboardX.SummaryWriter(str(logdir))
    for s in range(12):
        w.add_scalar("train/loss", np.float64(_val(s)), s)  # a numpy double: a float32 simple_value
        w.add_scalar("train/grad_norm", _val(s, 1), s)
        w.add_scalars("lr", {"g0": 1e-3, "g1": 2e-3}, s)
        if s % 4 == 0:
            w.add_histogram("grads/w", np.random.default_rng(s).standard_normal(200), s)
    w.close()
    run = _assert_like_tensorboard(logdir)
    assert _rows(run, "train/loss") == [(s, float(np.float32(_val(s)))) for s in range(12)]
    for key in ("g0", "g1"):  # tensorboardX 2.x: lr/<key>/ folders, each a file whose only tag is 'lr'
        (theirs,) = _accumulate(logdir / "lr" / key)[0].values()
        assert _same(_rows(run, f"lr/{key}"), theirs)
    tags = [str(t) for t in run.scalars["tag"].unique()]
    assert pick_lr_tag(tags) == "lr/g0"  # the first group's lr (was none: 'lr/g0' matched no lr rule)


def test_torch_purge_step_drops_what_tensorboard_drops(tmp_path):
    import torch
    from torch.utils.tensorboard import SummaryWriter

    logdir = tmp_path / "run"
    g = torch.Generator().manual_seed(1)
    w = SummaryWriter(str(logdir / "train"))
    for s in range(30):
        w.add_scalar("loss", _val(s), s)
        if s % 10 == 5:
            w.add_scalar("eval_only", _val(s, 3), s)
        if s % 10 == 0:
            w.add_histogram("grads/w", torch.randn(50, generator=g), s)
    w.close()
    _name_files(logdir / "train", 1)
    w = SummaryWriter(str(logdir / "train"), purge_step=20)  # resumed from a checkpoint at step 20
    for s in range(20, 40):
        w.add_scalar("loss", _val(s) + 7, s)
    w.close()
    _name_files(logdir / "train", 1)
    v = SummaryWriter(str(logdir / "validation"))  # another folder: not purged (TensorBoard: another run)
    for s in (10, 25):
        v.add_scalar("loss", _val(s, 5), s)
    v.close()
    run = E.read_run(logdir)
    _assert_like_tensorboard(logdir / "train", run, prefix="train/")
    _assert_like_tensorboard(logdir / "validation", run, prefix="validation/")
    assert [s for s, _ in _rows(run, "train/loss")] == list(range(40))
    assert _rows(run, "train/loss")[25] == (25, float(np.float32(_val(25) + 7)))
    assert [s for s, _ in _rows(run, "train/eval_only")] == [5, 15]
    assert _ours_hist(run, "train/grads/w")[-1][0] == 10
    assert [s for s, _ in _rows(run, "validation/loss")] == [10, 25]
    (note,) = run.notes
    assert "step 20" in note and "11 scalar and 1 histogram" in note
    _assert_fast_equals_reference(logdir / "train", chunk=200)
    res = CliRunner().invoke(app, ["tags", str(logdir)])
    assert res.exit_code == 0 and "  note: " in res.stdout and "train/events.out.tfevents.2.host" in res.stdout
    res = CliRunner().invoke(app, ["tags", str(logdir), "--format", "json"])
    assert json.loads(res.stdout)["runs"][0]["notes"] == [note]


def test_torch_restart_without_purge_keeps_rows_diagnosis_takes_later(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    logdir = tmp_path / "run"
    for k, steps in enumerate((range(30), range(20, 40))):
        w = SummaryWriter(str(logdir))
        for s in steps:
            w.add_scalar("loss", _val(s) + 7 * k, s)
        w.close()
        _name_files(logdir, 1)
    run = _assert_like_tensorboard(logdir)  # TensorBoard lists both attempts' steps 20-29
    assert len(_rows(run, "loss")) == 50 and run.notes == []
    s = series(run.scalars, "loss")
    assert s.index.tolist() == list(range(40)) and s[25] == float(np.float32(_val(25) + 7))


def test_wall_time_backwards_steps_out_of_order_nan_inf(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    logdir = tmp_path / "run"
    w = SummaryWriter(str(logdir))
    special = {5: math.nan, 6: math.inf, 7: -math.inf}
    steps = [*range(12), 8, 9, 20, 15]
    for i, s in enumerate(steps):
        w.add_scalar("loss", special.get(s, _val(s)), s, walltime=1.7e9 - i)  # the clock going backwards
    w.close()
    run = _assert_like_tensorboard(logdir)  # file order kept, NaN and ±inf as written
    assert [st for st, _ in _rows(run, "loss")] == steps
    s = series(run.scalars, "loss")
    assert s.index.tolist() == [*range(12), 15, 20] and math.isnan(s[5]) and s[6] == math.inf and s[7] == -math.inf
    assert run.warnings == []  # steps 8 and 9 logged twice with the same values: nothing lost, no warning


def test_session_start_inside_one_file(tmp_path):
    """A START in the middle of a file (TF1's Supervisor resumed into the same writer): the rows before it
    are fast-path rows and reference-decoded ones (a histogram), both purged at their own positions."""
    from events_util import tf1_events, write_records
    from tensorboard.compat.proto import event_pb2, summary_pb2

    start = event_pb2.Event(wall_time=2e9, step=20, session_log=event_pb2.SessionLog(status=1))
    histo = summary_pb2.Summary.Value(tag="grads/w", histo=summary_pb2.HistogramProto(min=-1, max=1, num=4))
    hist = [event_pb2.Event(wall_time=1e9 + s, step=s, summary=summary_pb2.Summary(value=[histo])) for s in (10, 25)]
    again = tf1_events(40, ("loss",))[20:]
    for ev in again:
        ev.summary.value[0].simple_value += 7
    logdir = tmp_path / "run"
    write_records(logdir / "events.out.tfevents.1.host", [*tf1_events(30, ("loss", "lr")), *hist, start, *again])
    run = _assert_like_tensorboard(logdir)
    assert [s for s, _ in _rows(run, "loss")] == list(range(40)) and _rows(run, "lr")[-1][0] == 19
    assert [r[0] for r in _ours_hist(run, "grads/w")] == [10]
    assert "20 scalar and 1 histogram" in run.notes[0]
    for chunk in (100, 1000, 1 << 20):
        _assert_fast_equals_reference(logdir, chunk=chunk)


def test_restart_without_purge_histograms_lose_undone_steps_like_scalars(tmp_path):
    """The v rebuilt from gradient histograms follows the run as it went, like the scalars: a restart from
    step 20 that died at 30 undoes the first attempt's histograms at 40 and 50 (they were kept before)."""
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from adamdiag.analysis.evidence import histogram_trajectories

    logdir = tmp_path / "run"
    g = torch.Generator().manual_seed(2)
    for k, steps in enumerate((range(0, 60, 10), range(20, 40, 10))):
        w = SummaryWriter(str(logdir))
        for s in steps:
            for j in range(8):  # every step of the interval: enough points for a trajectory
                w.add_histogram("grads/w", torch.randn(64, generator=g) * (1 + k), s + j)
        w.close()
        _name_files(logdir, 1)
    run = E.read_run(logdir)
    (traj,) = histogram_trajectories(run.histograms, [], 0.999, 1e-8)
    assert traj.steps.tolist() == [s + j for s in (0, 10, 20, 30) for j in range(8)]


# ------------------------------------- the event format before SessionLog restarts (fixtures/events_v1)

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "events_v1"


def _legacy_value(tag: str, step: int, attempt: int) -> float:
    """The value tools/runlab/make_event_fixtures.py logged (float32-exact; per tag and attempt)."""
    return float(np.float32(1.0 / (step + 3) + 0.001 * attempt + sum(map(ord, tag)) % 7))


def _logged(tag: str, *stretches: tuple[range, int]) -> list[tuple[int, float]]:
    return [(s, _legacy_value(tag, s, attempt)) for steps, attempt in stretches for s in steps]


# Per folder: the rows TensorBoard keeps (independently of EventAccumulator: from what the generator wrote),
# and what the notes must say. EventAccumulator is checked live on top of these.
LEGACY_CASES = {
    # version 1, in-file restart at 40 (no START): loss/lr/histograms of the first attempt at >= 40 go,
    # eval_only (not logged again) stays; the START at 65 only sets the most recent step: 65..69 twice
    "v1_in_file": (
        {
            "loss": _logged("loss", (range(40), 0), (range(40, 80), 1), (range(65, 70), 2)),
            "lr": _logged("lr", (range(40), 0), (range(40, 80), 1)),
            "eval_only": _logged("eval_only", (range(5, 60, 10), 0)),
        },
        [0, 10, 20, 30, 40, 50, 60, 70],
        ["steps go back (from 59 to 40)", "'brain.Event:1'", "40 scalar and 2 histogram"],
    ),
    # no file_version at all: the second file's loss from 40 purges the first file's loss >= 40, lr stays
    "noversion_two_files": (
        {"loss": _logged("loss", (range(40), 0), (range(40, 80), 1)), "lr": _logged("lr", (range(60), 0))},
        [],
        ["(no file_version)", "20 scalar value(s)"],
    ),
    # version 1 in both files: the second file's file_version event (step 0) resets the most recent step
    "v1_two_files": (
        {"loss": _logged("loss", (range(60), 0), (range(40, 80), 1)), "lr": _logged("lr", (range(60), 0))},
        [],
        [],
    ),
    # version 1, then a file without one: the rule and the most recent step carry over (histograms too)
    "v1_then_noversion": (
        {"loss": _logged("loss", (range(40), 0), (range(40, 80), 1)), "lr": _logged("lr", (range(60), 0))},
        [0, 10, 20, 30, 40, 45, 55, 65, 75],
        ["20 scalar and 1 histogram"],
    ),
    # version 2, then a file without one: version 2 stays in force (steps going back purge nothing), the
    # START at 50 in the second file purges every tag
    "v2_then_noversion": (
        {
            "loss": _logged("loss", (range(50), 0), (range(40, 50), 1), (range(50, 70), 2)),
            "lr": _logged("lr", (range(50), 0)),
        },
        [],
        ["SessionLog START at step 50", "20 scalar value(s)"],
    ),
    # version 2, then 1: only the version-1 file's own restart (79 -> 60) purges, its own rows
    "v2_then_v1": (
        {
            "loss": _logged("loss", (range(60), 0), (range(40, 60), 1), (range(60, 70), 2)),
            "lr": _logged("lr", (range(60), 0), (range(40, 80), 1)),
        },
        [],
        ["steps go back (from 79 to 60)", "20 scalar value(s)"],
    ),
    # version 1 with an in-file restart of lr at 50, then version 2: its START at 30 purges both files' tags at
    # >= 30; its loss going back from 49 to 45 purges nothing (version 2 in force)
    "v1_then_v2": (
        {
            "loss": _logged("loss", (range(30), 0), (range(30, 50), 2), (range(45, 50), 3)),
            "lr": _logged("lr", (range(30), 0)),
        },
        [],
        ["steps go back (from 59 to 50)", "10 scalar value(s)", "SessionLog START at step 30", "55 scalar value(s)"],
    ),
}


def test_legacy_fixtures_cover_every_folder():
    assert sorted([*LEGACY_CASES, "noversion_tensor"]) == sorted(p.name for p in LEGACY.iterdir())


@pytest.mark.parametrize("name", sorted(LEGACY_CASES))
def test_version_1_and_no_version_files_purge_like_tensorboard(name):
    """Files with file_version 'brain.Event:1' or none: EventAccumulator purges per tag where steps go back
    (and SessionLog START only where a version >= 2 is in force, across the files of a folder): every row
    equals its view, and the rows the generator logged minus those the restart undid."""
    logdir = LEGACY / name
    scalars, hist_steps, note_parts = LEGACY_CASES[name]
    run = _assert_like_tensorboard(logdir)
    assert sorted(str(t) for t in run.scalars["tag"].unique()) == sorted(scalars)
    for tag, rows in scalars.items():
        assert _rows(run, tag) == rows, tag
    assert [r[0] for r in _ours_hist(run, "grads/w")] == hist_steps
    assert all(any(part in n for n in run.notes) for part in note_parts), run.notes
    assert len(run.notes) == len([p for p in note_parts if "scalar" in p])
    for chunk in (100, 200, 1 << 20):  # chunk cuts inside records, before and after the purging events
        _assert_fast_equals_reference(logdir, chunk=chunk)


def test_version_1_tensor_scalars_are_purged_like_simple_values():
    """TF2-style scalars (plugin 'scalars' tensors) in a file without file_version: adamdiag purges them as the
    same values logged as simple_value (one scalar frame; TensorBoard's current readers hold every summary as
    a tensor and purge it), where the legacy EventAccumulator leaves its tensors out of every purge."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    twin = E.read_run(LEGACY / "noversion_two_files")
    run = E.read_run(LEGACY / "noversion_tensor")
    for tag in ("loss", "lr"):
        assert _rows(run, tag) == _rows(twin, tag), tag
    assert len(run.notes) == 1 and "20 scalar value(s)" in run.notes[0]
    acc = ea.EventAccumulator(str(LEGACY / "noversion_tensor"), size_guidance={k: 0 for k in ea.DEFAULT_SIZE_GUIDANCE})
    acc.Reload()
    assert len(acc.Tensors("loss")) == 100 == len(_rows(run, "loss")) + 20  # the documented difference
    _assert_fast_equals_reference(LEGACY / "noversion_tensor", chunk=150)


def _legacy_events(version: str | None, header_after: int = 0) -> list:
    """loss 0..29, a restart at 20 without SessionLog (20..29 again), a SessionLog START at 25 and 25..29
    again; the file_version event (if any) after ``header_after`` summaries."""
    from tensorboard.compat.proto import event_pb2, summary_pb2

    def summ(s: int, a: int):
        v = summary_pb2.Summary.Value(tag="loss", simple_value=_legacy_value("loss", s, a))
        return event_pb2.Event(wall_time=1.5e9 + s + 100 * a, step=s, summary=summary_pb2.Summary(value=[v]))

    evs = [summ(s, 0) for s in range(30)] + [summ(s, 1) for s in range(20, 30)]
    evs.append(event_pb2.Event(wall_time=1.6e9, step=25, session_log=event_pb2.SessionLog(status=1)))
    evs += [summ(s, 2) for s in range(25, 30)]
    if version is not None:
        evs.insert(header_after, event_pb2.Event(wall_time=1.4e9, file_version=version))
    return evs


@pytest.mark.parametrize(
    "version,header_after",
    [
        ("brain.Event:0", 0),  # 0.0: no version to EventAccumulator
        ("brain.Event:1.5", 0),
        ("not a version", 0),  # unparsable: -1, the out-of-order rule
        ("brain.Event:3", 0),  # >= 2: the SessionLog rule
        ("brain.Event:2", 35),  # the version event late in the file: the out-of-order rule until it
        ("brain.Event:1", 35),
        (None, 0),
    ],
)
def test_file_version_strings_and_a_late_version_event_like_tensorboard(tmp_path, version, header_after):
    from tensorboard.summary.writer.record_writer import RecordWriter

    logdir = tmp_path / "run"
    logdir.mkdir()
    with open(logdir / "events.out.tfevents.1.host", "wb") as f:
        rw = RecordWriter(f)
        for ev in _legacy_events(version, header_after):
            rw.write(ev.SerializeToString())
    run = _assert_like_tensorboard(logdir)
    by_session_log = version is not None and E.restarts_by_session_log(version)
    steps = [s for s, _ in _rows(run, "loss")]
    if by_session_log and header_after == 0:  # START at 25 purges; steps going back do not
        assert steps == [*range(25), *range(20, 25), *range(25, 30)] and "SessionLog START" in run.notes[0]
    elif by_session_log:  # the restart at 20 came before the version-2 event: purged; then the START purges
        assert steps == [*range(20), *range(20, 25), *range(25, 30)] and len(run.notes) == 2
    else:  # purged at 20 (steps going back); the START only sets the most recent step: 25..29 twice
        assert steps == [*range(20), *range(20, 30), *range(25, 30)] and "steps go back" in run.notes[0]
    for chunk in (90, 256):
        _assert_fast_equals_reference(logdir, chunk=chunk)


def test_empty_record_sets_the_most_recent_step_like_tensorboard(tmp_path):
    """A zero-length record is an empty Event to EventAccumulator (no summary, step 0): under the out-of-order
    rule it sets the most recent step to 0, so the restart after it purges nothing."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    logdir = tmp_path / "run"
    logdir.mkdir()
    with open(logdir / "events.out.tfevents.1.host", "wb") as f:
        rw = RecordWriter(f)
        for k, ev in enumerate(_legacy_events(None)):
            if k == 30:  # before the restart at step 20
                rw.write(b"")
            rw.write(ev.SerializeToString())
    run = _assert_like_tensorboard(logdir)
    assert len(_rows(run, "loss")) == 45 and run.notes == [] and "empty record" in run.warnings[0]
    _assert_fast_equals_reference(logdir, chunk=120)


def test_checkpoint_events_set_the_most_recent_step_like_tensorboard(tmp_path):
    """No file_version; a SessionLog CHECKPOINT after every step's loss (TF1's Supervisor): each sets the most
    recent step to its own. The restart at 20 logs loss (below 29: the first attempt's loss >= 20 goes), then
    its checkpoint lowers the most recent step to 20, so its lr at 20 purges nothing — both attempts' lr stay.
    (Many non-summary events: the one-pass running maximum.)"""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    def ev(s: int, tag: str, attempt: int, **kw):
        if not kw:
            v = summary_pb2.Summary.Value(tag=tag, simple_value=_legacy_value(tag, s, attempt))
            kw = {"summary": summary_pb2.Summary(value=[v])}
        return event_pb2.Event(wall_time=1.5e9 + s + 100 * attempt, step=s, **kw)

    logdir = tmp_path / "run"
    logdir.mkdir()
    with open(logdir / "events.out.tfevents.1.host", "wb") as f:
        rw = RecordWriter(f)
        for attempt, steps in enumerate((range(30), range(20, 30))):
            for s in steps:
                for e in (ev(s, "loss", attempt), ev(s, "", 0, session_log=event_pb2.SessionLog(status=3))):
                    rw.write(e.SerializeToString())
                rw.write(ev(s, "lr", attempt).SerializeToString())
    run = _assert_like_tensorboard(logdir)
    assert _rows(run, "loss") == _logged("loss", (range(20), 0), (range(20, 30), 1))
    assert _rows(run, "lr") == _logged("lr", (range(30), 0), (range(20, 30), 1))
    assert "10 scalar value(s)" in run.notes[0]
    _assert_fast_equals_reference(logdir, chunk=200)


def test_legacy_purge_is_reported_by_scan_and_tags():
    """scan reports the purge as it reports a SessionLog START's (an AD901 note); tags lists it."""
    logdir = LEGACY / "v1_in_file"
    res = CliRunner().invoke(app, ["scan", str(logdir), "--format", "json"])
    assert res.exit_code == 0, res.output
    (rep,) = json.loads(res.stdout)["runs"]
    (f,) = [f for f in rep["findings"] if "steps go back" in f["message"]]
    assert f["id"] == "AD901" and f["severity"] == "info" and "40 scalar and 2 histogram" in f["message"]
    res = CliRunner().invoke(app, ["tags", str(logdir)])
    assert res.exit_code == 0 and "  note: " in res.stdout and "steps go back (from 59 to 40)" in res.stdout
