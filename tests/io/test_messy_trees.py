"""Messy real log trees (issue 16): hparams-only runs, stray '*tfevents*' files, overlapping
arguments, unreadable folders, symlinked runs and link loops, duplicate steps, and Keras/Estimator
train/validation/eval split directories. Every tree is written by real writers (torch's
SummaryWriter, tensorboardX); each case checks that the rest of the tree is still processed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from events_util import write_tbx, write_torch
from typer.testing import CliRunner

from adamdiag.analysis.frames import series
from adamdiag.io import events as E
from adamdiag.pipeline.scan import scan_paths

runner = CliRunner()


def write_hparams_only(logdir: Path) -> Path:
    """An event file with only the HParams plugin's summaries (what Keras' HParams callback and HF
    Trainer's ``logs/<ts>/`` leave): no scalar, no histogram."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    w = SummaryWriter(str(logdir))
    for s in hparams({"lr": 1e-3, "eps": 1e-8}, {"hparam/loss": 0.0}):
        w.file_writer.add_summary(s)
    w.close()
    return logdir


def write_curve(logdir: Path, tag: str, values: list[float]) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(logdir))
    for s, v in enumerate(values):
        w.add_scalar(tag, v, s)
    w.close()
    return logdir


def blowup_curve(n: int = 300, at: int = 200) -> list[float]:
    """A loss that settles and then rises 1000x: the shape scan calls a blowup on a training loss."""
    return [1.0 / (1 + s) if s < at else 1.0 / (1 + at) * 1000 for s in range(n)]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("messy")
    write_torch(root / "a", 40)
    write_tbx(root / "b", 40)
    write_hparams_only(root / "hp")
    (root / "docs").mkdir()
    (root / "docs" / "tfevents.md").write_text("# How we name our tfevents files\n")
    return root


def invoke(*args: str):
    return runner.invoke(__import__("adamdiag.cli", fromlist=["app"]).app, list(args))


def test_export_with_an_hparams_only_run(tree, tmp_path):
    out = tmp_path / "x.csv"
    res = invoke("export", str(tree), "-o", str(out))
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    assert set(df["run"]) == {str(tree / "a"), str(tree / "b")} and len(df) == 160
    pq = tmp_path / "x.parquet"
    assert invoke("export", str(tree), "-o", str(pq)).exit_code == 0
    assert len(pd.read_parquet(pq)) == 160


def test_stray_tfevents_file_is_skipped_with_a_warning(tree):
    res = invoke("tags", str(tree), "--format", "json")
    assert res.exit_code == 0, res.output
    assert "tfevents.md: not a TensorBoard event file" in res.stderr
    runs = {r["run"] for r in json.loads(res.stdout)["runs"]}
    assert runs == {str(tree / n) for n in ("a", "b", "hp")}
    # A run folder holding only the stray file is no run; given alone, that is the one-line error.
    res = invoke("tags", str(tree / "docs"))
    assert res.exit_code == 2 and "not a TensorBoard event file" in res.stderr
    # Outside every run it is a report-level warning; beside a run's event files, that run's AD904.
    rep = scan_paths([tree])
    assert {r.run for r in rep.runs} == {str(tree / n) for n in ("a", "b", "hp")}
    assert any("tfevents.md" in w for w in rep.warnings)


def test_stray_file_inside_a_run_is_ad904(tmp_path):
    run = write_curve(tmp_path / "run", "loss", [1.0 / (1 + s) for s in range(50)])
    (run / "tfevents.md").write_text("# notes\n")
    (r,) = scan_paths([run]).runs
    (f,) = [f for f in r.findings if f.id == "AD904"]
    assert f.severity == "info" and "tfevents.md: not a TensorBoard event file" in f.message
    assert r.verdict == "healthy" and not [f for f in r.findings if f.id == "AD902"]


def test_a_dangling_event_link_is_named(tmp_path):
    """A link named like an event file whose target is gone is named as such — as the run's only file (the
    error says why nothing was found) and beside a real one (AD904) — not skipped without a word."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.out.tfevents.1.host").symlink_to(tmp_path / "gone" / "events.out.tfevents.1.host")
    res = invoke("scan", str(run))
    assert res.exit_code == 2 and "which does not exist" in res.stderr and "Traceback" not in res.output
    write_curve(run, "loss", [1.0 / (1 + s) for s in range(50)])
    (r,) = scan_paths([run]).runs
    (f,) = [f for f in r.findings if f.id == "AD904"]
    assert "a symbolic link to" in f.message and "which does not exist" in f.message and r.verdict == "healthy"


def test_hparams_only_run_among_others_is_inconclusive(tree):
    rep = scan_paths([tree])
    hp = next(r for r in rep.runs if r.run.endswith("hp"))
    assert hp.verdict == "inconclusive"
    assert {r.verdict for r in rep.runs if r is not hp} == {"healthy"}


def test_folder_and_its_own_file_are_read_once(tree):
    a = tree / "a"
    f = next(a.glob("events.out.tfevents.*"))
    found = E.discover([a, f])
    assert found.runs == [a]
    assert any("already read as part of" in p.message for p in found.problems)
    for cmd in ("tags", "scan", "check"):
        res = invoke(cmd, str(a), str(f))
        assert res.exit_code == 0, (cmd, res.output)
        assert "internal error" not in res.output
    # The parent and the run inside it: still one run.
    assert E.find_runs([tree / "a", tree]) == [tree / "a", tree / "b", tree / "hp"]


def test_symlinked_run_followed_and_loop_cut(tmp_path):
    real = write_torch(tmp_path / "store" / "run1", 10)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "run1").symlink_to(real, target_is_directory=True)
    (logs / "loop").symlink_to(logs, target_is_directory=True)  # logs/loop/loop/... forever
    found = E.discover([logs])
    assert found.runs == [logs / "run1"]
    assert any("already searched" in p.message for p in found.problems)
    (ev,) = E.read_runs([logs])
    assert len(ev.scalars) == 20


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv to drop root")
def test_unreadable_folder_is_reported(tmp_path):
    # Root reads everything, so the CLI runs as 'nobody' on a world-readable tree outside tmp_path.
    base = Path(tempfile.mkdtemp(prefix="adamdiag-perm-"))
    try:
        os.chmod(base, 0o755)
        write_torch(base / "ok", 10)
        write_torch(base / "locked", 10)
        for dirpath, _dirnames, filenames in os.walk(base):
            os.chmod(dirpath, 0o755)
            for f in filenames:
                os.chmod(os.path.join(dirpath, f), 0o644)
        os.chmod(base / "locked", 0o000)
        # discover() alone: the reader's search, without the CLI's start-up time.
        code = "import sys; from adamdiag.io.events import discover; d = discover([sys.argv[1]]); "
        code += "print([str(r) for r in d.runs]); print([p.message for p in d.problems])"
        cmd = [sys.executable, "-c", code, str(base)]
        if os.geteuid() == 0:
            drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            # A Python built with a shared libpython under a private home (pyenv's 3.12 in /root) cannot start
            # as another user at all: that is the machine, not the reader — skip rather than fail.
            probe = subprocess.run([*drop, sys.executable, "-c", "pass"], capture_output=True, text=True, timeout=60)
            if probe.returncode != 0:
                pytest.skip(f"this Python cannot run as another user: {probe.stderr.strip()[:120]}")
            cmd = [*drop, *cmd]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(base)})
        assert p.returncode == 0, p.stderr
        runs, problems = p.stdout.splitlines()
        assert runs == repr([str(base / "ok")])
        assert f"cannot read directory {base / 'locked'}: Permission denied; skipped" in problems
    finally:
        os.chmod(base / "locked", 0o755)
        shutil.rmtree(base)


def test_duplicate_steps_kept_and_reported(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path))
    for s in range(10):
        w.add_scalar("loss", float(s), s)
    w.add_scalar("loss", 99.0, 5)  # a second value for step 5 in the same file
    w.add_scalar("lr", 0.1, 0)
    w.close()
    (ev,) = E.read_runs([tmp_path])
    assert len(ev.scalars) == 12  # nothing dropped
    (msg,) = [x for x in ev.warnings if "more than once" in x]
    assert "'loss'" in msg and "step 5" in msg and "last value" in msg
    assert series(ev.scalars, "loss").loc[5] == 99.0  # the value scan/plot use, as the warning says
    res = invoke("export", str(tmp_path), "-o", str(tmp_path / "out.csv"))
    assert res.exit_code == 0 and len(pd.read_csv(tmp_path / "out.csv")) == 12


def test_keras_train_validation_is_one_run(tmp_path):
    logs = tmp_path / "logs"
    write_curve(logs / "train", "epoch_loss", [1.0 / (1 + s) for s in range(300)])
    write_curve(logs / "validation", "epoch_loss", blowup_curve())  # overfitting: the eval loss rises
    (ev,) = E.read_runs([tmp_path])
    assert ev.run == str(logs)
    assert sorted(ev.scalars["tag"].unique()) == ["train/epoch_loss", "validation/epoch_loss"]
    (r,) = scan_paths([tmp_path]).runs
    assert r.verdict == "healthy"  # the rising validation curve is not the training loss


def test_eval_only_curve_is_never_diagnosed(tmp_path):
    # Estimator layout: model_dir/ (training events) and model_dir/eval/; here only eval survived,
    # and a lone Keras validation folder given on its own.
    write_curve(tmp_path / "model_dir" / "eval", "loss", blowup_curve())
    val = write_curve(tmp_path / "keras" / "validation", "epoch_loss", blowup_curve())
    rep = scan_paths([tmp_path / "model_dir", val])
    assert [r.run for r in rep.runs] == [str(tmp_path / "model_dir" / "eval"), str(val)]
    for r in rep.runs:
        assert r.verdict == "inconclusive" and r.blowup_step is None
        assert [f.id for f in r.findings] == ["AD905"]
        assert r.findings[0].message.startswith("evaluation curve: not diagnosed")
    # With its training events beside it, model_dir is one run diagnosed on the training loss.
    write_curve(tmp_path / "model_dir", "loss", [1.0 / (1 + s) for s in range(300)])
    (r,) = scan_paths([tmp_path / "model_dir"]).runs
    assert r.run == str(tmp_path / "model_dir") and r.verdict == "healthy"


def test_a_run_named_like_a_split_is_still_diagnosed(tmp_path):
    # `test`/`val` are common run names, not a writer's split folders; a lone `train` is just a run
    for name in ("test", "val", "train"):
        write_curve(tmp_path / "exp" / name, "loss", blowup_curve())
    rep = scan_paths([tmp_path / "exp"])
    assert sorted(Path(r.run).name for r in rep.runs) == ["test", "train", "val"]
    assert all(r.blowup_step == 200 for r in rep.runs)


def test_same_warning_in_many_runs_is_one_line(tmp_path):
    # 25 runs (TensorBoard's own RecordWriter) each with a stray tfevents.md: one line, not 25
    from events_util import tf1_events, write_records

    for i in range(25):
        write_records(tmp_path / f"run{i:02d}" / "events.out.tfevents.1.host", tf1_events(3))
        (tmp_path / f"run{i:02d}" / "tfevents.md").write_text("notes\n")
    res = invoke("tags", str(tmp_path), "--format", "csv")
    assert res.exit_code == 0, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "tfevents.md: not a TensorBoard event file" in lines[0] and "(× 25 alike)" in lines[0]


def _writer_with_children(logdir: Path, writer: str) -> Path:
    """A run as torch's or tensorboardX's SummaryWriter leaves it when the script calls add_scalars and
    add_hparams: the writer's own file (grad norm) plus ``Loss_train/``, ``Loss_val/`` (tag ``Loss``
    each) and ``<time>/`` (the hparams plugin and its metric) below it."""
    if writer == "torch":
        from torch.utils.tensorboard import SummaryWriter
    else:
        from tensorboardX import SummaryWriter
    w = SummaryWriter(str(logdir))
    curve = blowup_curve()
    for s, v in enumerate(curve):
        w.add_scalars("Loss", {"train": v, "val": 1.1 * v}, s)
        w.add_scalar("grad_norm", 1.0 + 0.01 * (s % 7), s)
    w.add_hparams({"lr": 1e-3}, {"hparam/accuracy": 0.5})
    w.close()
    return logdir


@pytest.mark.parametrize("writer", ["torch", "tensorboardX"])
def test_add_scalars_and_add_hparams_folders_belong_to_the_writers_run(tmp_path, writer):
    """add_scalars writes each key into a folder of its own (TensorBoard lists them as runs); they are the
    writer's curves: one run, the keys as ``Loss/train`` / ``Loss/val``, the training curve diagnosed,
    the hparams folder no inconclusive run of its own. Replay's reader (read_run) sees the same tags."""
    run = _writer_with_children(tmp_path / "run", writer)
    made = sorted(str(p.parent.relative_to(run)) for p in run.rglob("events.out.tfevents.*") if p.parent != run)
    # what the writers made: torch Loss_train/, Loss_val/; tensorboardX Loss/train/, Loss/val/; and <time>/
    assert made[-2:] == (["Loss_train", "Loss_val"] if writer == "torch" else ["Loss/train", "Loss/val"])
    (r,) = scan_paths([run]).runs
    assert r.run == str(run) and r.loss_tag == "Loss/train"
    assert r.blowup_step == 200 and r.verdict != "inconclusive"
    tags = set(E.read_runs([run])[0].scalars["tag"].astype(str))
    assert tags == {"Loss/train", "Loss/val", "grad_norm", "hparam/accuracy"}
    assert set(E.read_run(run).scalars["tag"].astype(str)) == tags
    v = series(E.read_run(run).scalars, "Loss/train")
    assert len(v) == 300 and v.iloc[0] == pytest.approx(1.0)


def test_a_subfolder_that_is_not_a_writer_child_stays_a_run(tmp_path):
    """Seeds below a folder that also logs: ``seed_1/`` holds the tag ``loss`` but is not named
    ``loss_<key>`` — a run of its own, as before; so is a child with two tags."""
    parent = write_curve(tmp_path / "sweep", "loss", [1.0 / (1 + s) for s in range(50)])
    write_curve(parent / "seed_1", "loss", [1.0 / (1 + s) for s in range(50)])
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(parent / "loss_two"))
    for s in range(50):
        w.add_scalar("loss", 1.0 / (1 + s), s)
        w.add_scalar("lr", 1e-3, s)
    w.close()
    runs = {r.run for r in scan_paths([parent]).runs}
    assert runs == {str(parent), str(parent / "seed_1"), str(parent / "loss_two")}


def test_a_step_repeated_with_the_same_value_is_no_warning(tmp_path):
    """Lightning logs ``epoch`` with every ``self.log`` call, so twice a step with on_step and on_epoch:
    the same value again loses nothing — kept, counted, and no input problem; a differing value still is."""
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path))
    for s in range(10):
        w.add_scalar("train_loss_step", 1.0 / (1 + s), s)
        w.add_scalar("epoch", float(s // 5), s)
        w.add_scalar("epoch", float(s // 5), s)
    w.add_scalar("train_loss_step", 7.0, 3)
    w.close()
    (ev,) = E.read_runs([tmp_path])
    assert (ev.scalars["tag"] == "epoch").sum() == 20
    (msg,) = [x for x in ev.warnings if "more than once" in x]
    assert "'train_loss_step'" in msg and "1 step(s)" in msg and "first at step 3" in msg


def test_a_writer_given_no_step_is_read_in_logging_order(tmp_path):
    """add_scalar without global_step logs every value at step 0 (TensorBoard stacks them at x = 0). The records
    are in the order they were written: the k-th point is read at step k, and an AD901 warning says the steps are
    counts of logged points and what to change (was: inconclusive, "no order to diagnose")."""
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "run"))
    for i in range(1, 120):
        w.add_scalar("train/loss", 1.0 / i if i < 100 else 50.0)
    w.close()
    res = invoke("scan", str(tmp_path / "run"), "--format", "json")
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["runs"]
    assert r["blowup_step"] == 100  # the 100th value logged
    (f,) = [f for f in r["findings"] if f["id"] == "AD901" and "global_step" in f["message"]]
    assert f["severity"] == "warning" and "logging order" in f["message"]
    # the gate can hold a run on it
    assert invoke("check", str(tmp_path / "run"), "--fail-on", "warning").exit_code == 1
    # no "logged more than once" noise for the stacked points
    (ev,) = E.read_runs([tmp_path / "run"])
    assert not [x for x in ev.warnings if "more than once" in x]
    assert ev.scalars["step"].tolist() == list(range(1, 120))


def test_two_values_at_one_step_stay_as_logged(tmp_path):
    """Fewer than three points at one step are not a writer without steps (a step logged twice): kept."""
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "run"))
    w.add_scalar("train/loss", 1.0, 5)
    w.add_scalar("train/loss", 2.0, 5)
    w.close()
    (ev,) = E.read_runs([tmp_path / "run"])
    assert ev.scalars["step"].tolist() == [5, 5] and ev.notes == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_or_device_given_or_found_is_named_never_opened(tmp_path):
    """A FIFO named like an event file would block a reader forever: it is named and never opened — given
    as the path (one line, exit 2; a character device too), or found in a folder (a warning, the rest of
    the tree read; alone, the 'no event files' error says why)."""
    fifo = tmp_path / "events.out.tfevents.1.host"
    os.mkfifo(fifo)
    res = invoke("scan", str(fifo))
    assert res.exit_code == 2 and "a FIFO, not an event file or a directory (not opened)" in res.output, res.output
    if os.path.exists("/dev/null"):
        res = invoke("check", "/dev/null")
        assert res.exit_code == 2 and "character device" in res.output, res.output
    res = invoke("scan", str(tmp_path))
    assert res.exit_code == 2 and "no TensorBoard event files" in res.output and "a FIFO" in res.output, res.output
    write_torch(tmp_path / "run", 60)
    res = invoke("scan", str(tmp_path), "--format", "json")
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["runs"]
    assert r["run"].endswith("run")
    assert "a FIFO, not an event file (not opened); skipped" in res.output  # the warning, on stderr
