"""Runs logged to Weights & Biases, read from the ``run-<id>.wandb`` files wandb itself wrote
(tests/fixtures/wandb, made by tools/runlab/make_wandb_fixtures.py with wandb 0.31.0): each reads as the same run
logged to TensorBoard — the same tags, steps and values, the same verdict, blowup and warning step."""

from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from adamdiag.io.events import discover, read_run
from adamdiag.pipeline.scan import scan_paths

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "wandb"
SAMPLE_LOGS = Path(__file__).resolve().parents[2] / "sample_logs"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


def wandb_run(name: str) -> Path:
    """The (first) run folder of a fixture."""
    return sorted((FIXTURES / name / "wandb").glob("*run-*"), key=lambda p: p.name.removeprefix("offline-"))[0]


def series(events, tag: str) -> tuple[list[int], np.ndarray]:  # noqa: ANN001
    s = events.scalars[events.scalars["tag"] == tag].sort_values("step")
    return s["step"].tolist(), s["value"].to_numpy()


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Per sample run: its wandb copy (unpacked) and a TensorBoard copy of the same tags (SummaryWriter)."""
    from torch.utils.tensorboard import SummaryWriter

    out = tmp_path_factory.mktemp("wandb_samples")
    got = {}
    for src in sorted((FIXTURES / "samples").iterdir()):
        dst = out / "wandb" / src.name
        shutil.copytree(src, dst, symlinks=True)
        for gz in dst.rglob("*.wandb.gz"):
            with gzip.open(gz, "rb") as f_in, open(gz.with_suffix(""), "wb") as f_out:
                shutil.copyfileobj(f_in, f_out)
            gz.unlink()
        (run,) = discover([dst]).runs
        ev = read_run(SAMPLE_LOGS / src.name)
        w = SummaryWriter(str(out / "tb" / src.name))
        for tag, step, value in ev.scalars[["tag", "step", "value"]].itertuples(index=False):
            if tag in ("train/loss", "train/grad_norm", "train/lr"):
                w.add_scalar(tag, value, int(step))
        w.close()
        got[src.name] = (run, out / "tb" / src.name)
    return got


def test_sample_runs_read_their_logged_values(samples: dict[str, tuple[Path, Path]]) -> None:
    for name, (run, _) in samples.items():
        wb, tb = read_run(run), read_run(SAMPLE_LOGS / name)
        assert sorted(wb.scalars["tag"].unique()) == ["train/grad_norm", "train/loss", "train/lr"]
        for tag in ("train/loss", "train/grad_norm", "train/lr"):
            a, b = series(wb, tag), series(tb, tag)
            assert a[0] == b[0], (name, tag)
            np.testing.assert_array_equal(a[1], b[1])  # float32 from TensorBoard, logged as float64: exact
        assert wb.scalars["wall_time"].min() > 1.7e9  # each row's _timestamp, not the file's mtime


@pytest.mark.parametrize(
    ("name", "verdict"), [("vcollapse", "v_collapse"), ("lr_too_high", "lr_too_high"), ("stable_eps1e-3", "healthy")]
)
def test_sample_runs_diagnose_as_from_tensorboard(
    samples: dict[str, tuple[Path, Path]], name: str, verdict: str
) -> None:
    wb, tb = scan_paths(list(samples[name])).runs
    assert wb.verdict == tb.verdict == verdict
    assert (wb.confidence, wb.blowup_step, wb.warning_step) == (tb.confidence, tb.blowup_step, tb.warning_step)
    assert wb.recommendation == tb.recommendation
    assert any(f.id == "AD901" and "Weights & Biases" in f.message for f in wb.findings)


def test_lightning_wandb_logger_reads_on_the_trainer_step() -> None:
    """WandbLogger logs every 5 steps; wandb's own _step counts the calls (0..19) while the axis Lightning
    declares (define_metric "*" on trainer/global_step) is the trainer's step — what TensorBoardLogger uses."""
    wb = read_run(wandb_run("lightning"))
    tb = read_run(next((FIXTURES / "lightning" / "tb").glob("version_*")))
    for tag in ("train_loss", "epoch"):
        a, b = series(wb, tag), series(tb, tag)
        assert a[0] == b[0] and a[0][-1] == 99, tag
        np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
    assert "trainer/global_step" not in set(wb.scalars["tag"])  # the axis is no metric
    for step, row in EXPECTED["lightning"].items():
        if "train_loss" not in row:
            continue
        got = wb.scalars[(wb.scalars["step"] == int(step)) & (wb.scalars["tag"] == "train_loss")]["value"]
        assert math.isclose(float(got.iloc[0]), row["train_loss"], rel_tol=1e-6)
    a, b = scan_paths([wandb_run("lightning"), next((FIXTURES / "lightning" / "tb").glob("version_*"))]).runs
    assert a.verdict == b.verdict and a.blowup_step == b.blowup_step
    assert a.blowup_step is not None and 60 <= a.blowup_step <= 65  # targets moved at 60, logged every 5


def test_hf_trainer_reports_to_wandb_as_to_tensorboard() -> None:
    """HF's WandbCallback: tags as its TensorBoard callback names them, train/global_step as the axis, and its
    TrainingArguments in wandb's config: beta2/eps and the clipping norm read there."""
    run = wandb_run("hf")
    wb, tb = read_run(run), read_run(next((FIXTURES / "hf" / "out" / "runs").iterdir()))
    for tag in ("train/loss", "train/grad_norm", "train/learning_rate"):
        a, b = series(wb, tag), series(tb, tag)
        assert a[0] == b[0], tag
        np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
    for step, row in EXPECTED["hf"].items():
        if "loss" in row:
            v = wb.scalars[(wb.scalars["step"] == int(step)) & (wb.scalars["tag"] == "train/loss")]["value"]
            assert float(v.iloc[0]) == row["loss"]  # wandb keeps the float64 the Trainer logged
    a, b = scan_paths([run, next((FIXTURES / "hf" / "out" / "runs").iterdir())]).runs
    assert (a.verdict, a.confidence, a.blowup_step) == (b.verdict, b.confidence, b.blowup_step)
    msgs = " | ".join(f.message for f in a.findings)
    assert "beta2=0.98, eps=1e-06 from HF Trainer's arguments (the wandb config of" in msgs
    assert "gradient clipping at 1 (max_grad_norm in the wandb config of" in msgs


def test_a_resumed_run_is_one_run() -> None:
    """One id started twice (resume="allow"): two folders, read as one run from the first, steps 0..119."""
    root = FIXTURES / "resumed"
    found = discover([root])
    assert found.runs == [wandb_run("resumed")] and not found.problems
    ev = read_run(found.runs[0])
    steps, values = series(ev, "loss")
    assert steps == list(range(120))
    np.testing.assert_array_equal(values, [EXPECTED["resumed"][str(s)]["loss"] for s in steps])
    assert ev.scalars["source_file"].nunique() == 2


def test_non_finite_and_non_numeric_values() -> None:
    ev = read_run(wandb_run("nonfinite"))
    steps, loss = series(ev, "train/loss")
    assert steps == list(range(1, 41))
    assert np.isnan(loss[29:34]).all() and np.isposinf(loss[34:]).all() and np.isfinite(loss[:29]).all()
    assert series(ev, "nested.a")[1].tolist() == [1.5] * 40  # a logged dict, dotted as wandb's UI shows it
    assert "text" not in set(ev.scalars["tag"])
    (rep,) = scan_paths([wandb_run("nonfinite")]).runs
    assert rep.verdict == "nonfinite" and rep.blowup_step == 30


def test_one_training_in_tensorboard_and_wandb_is_diagnosed_once() -> None:
    """HF's report_to with both: scanned from the folder that holds both logs, one run (the event files'), a note
    naming the wandb run; a different training beside it stays a run of its own."""
    rep = scan_paths([FIXTURES / "hf", FIXTURES / "lightning"])
    runs = sorted(Path(r.run).relative_to(FIXTURES).parts[0:2] for r in rep.runs)
    assert runs == [("hf", "out"), ("lightning", "tb")]
    assert sum("the same loss log as" in w for w in rep.warnings) == 2
    named = scan_paths([wandb_run("hf"), FIXTURES / "hf" / "out"])  # a run named itself is always diagnosed
    assert len(named.runs) == 2


def test_keras_wandb_metrics_logger_reads_as_kerass_tensorboard_log() -> None:
    """wandb's Keras callback WandbMetricsLogger (batch/loss on a 0-based batch/batch_step, epoch/loss) beside
    Keras' own TensorBoard callback in one fit (tools/runlab/make_wandb_keras_fixture.py): read as Keras' names
    and axis — batch_loss at the optimizer iteration, epoch_loss at the epoch — so the running mean is rebuilt per
    batch (AD603) and the verdict and blowup step are the TensorBoard log's."""
    run = wandb_run("keras")
    wb, tb = read_run(run), read_run(FIXTURES / "keras" / "tb" / "train")
    for tag in ("batch_loss", "epoch_loss"):
        a, b = series(wb, tag), series(tb, tag)
        assert a[0] == b[0], tag
        np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
    assert series(wb, "batch_loss")[0] == list(range(1, 97))
    (a,) = scan_paths([run]).runs
    (b,) = scan_paths([FIXTURES / "keras" / "tb" / "train"]).runs
    assert (a.verdict, a.confidence, a.blowup_step) == (b.verdict, b.confidence, b.blowup_step)
    assert any(f.id == "AD603" for f in a.findings) and any(f.id == "AD603" for f in b.findings)


def test_keras_wandb_metrics_logger_every_few_batches_says_its_steps_are_approximate() -> None:
    """log_freq=5: WandbMetricsLogger adds 5 to batch_step per logged batch, whatever the epoch's length (32
    batches here): the steps drift past the iterations, and the reader says so."""
    ev = read_run(wandb_run("keras_freq5"))
    assert max(series(ev, "batch_loss")[0]) > 96  # 3 epochs of 32 batches: 96 iterations
    assert any("log_freq > 1" in n and "approximate" in n for n in ev.notes)


def test_a_step_counter_in_the_rows_is_the_axis() -> None:
    """wandb.log({"train/loss": l, "global_step": s}) without step= and an eval row every 20 steps: wandb's _step
    counts calls (from 0) and ends 13 ahead; the rows' global_step is the axis, and the blowup is at the trained
    step 250 (on _step it read 261)."""
    ev = read_run(wandb_run("drift"))
    steps, loss = series(ev, "train/loss")
    assert steps == list(range(1, 301))
    np.testing.assert_array_equal(loss, [EXPECTED["drift"][str(s)]["train/loss"] for s in steps])
    assert series(ev, "val/loss")[0] == list(range(20, 301, 20))
    assert any("'global_step' each wandb.log row carries" in n and "13 ahead" in n for n in ev.notes)
    (rep,) = scan_paths([wandb_run("drift")]).runs
    assert rep.blowup_step == 250


def test_replay_finds_the_wandb_run_beside_its_checkpoints(tmp_path: Path) -> None:
    """``replay <dir>/checkpoints/step_N.pt`` without --logdir: a training that logged only to wandb has its run in
    <dir>/wandb/; one run there is the log, several are a one-line error naming them."""
    from adamdiag.errors import InputError
    from adamdiag.replay.runner import find_run_dir

    (tmp_path / "checkpoints").mkdir()
    ck = tmp_path / "checkpoints" / "step_000600.pt"
    shutil.copy(SAMPLE_LOGS / "vcollapse" / "checkpoints" / "step_000600.pt", ck)
    for name in ("vcollapse", "lr_too_high"):
        for src in (FIXTURES / "samples" / name / "wandb").glob("offline-run-*"):
            dst = tmp_path / "wandb" / src.name
            shutil.copytree(src, dst)
            for gz in dst.glob("*.gz"):
                with gzip.open(gz, "rb") as f_in, open(gz.with_suffix(""), "wb") as f_out:
                    shutil.copyfileobj(f_in, f_out)
                gz.unlink()
        if name == "vcollapse":
            (only,) = (tmp_path / "wandb").iterdir()
            assert find_run_dir(ck, None) == only
    with pytest.raises(InputError, match="several trackers' runs beside .*pass --logdir"):
        find_run_dir(ck, None)
    assert find_run_dir(ck, only) == only
