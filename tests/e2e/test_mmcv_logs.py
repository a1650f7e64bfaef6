"""OpenMMLab's mmcv 1.x work_dirs (mmdetection 2.x and its siblings), written by mmcv 1.7.2's own runners and hooks
(tests/fixtures/mmcv, tools/runlab/make_mmcv_fixtures.py): the TextLoggerHook json log on the global iteration — as
the TensorboardLoggerHook beside it puts the same values — each value the interval's mean of the raw losses, rounded to
5 decimals; the config of its meta line gives β2/eps and the clipping; a logged SGD makes the run not Adam."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from adamdiag.io.events import discover, read_run
from adamdiag.io.mmcv_log import is_mmcv_log, read_mmcv_log
from adamdiag.pipeline.scan import scan_paths

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mmcv"
WORK_DIR = FIXTURES / "work_dir"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


def series(events, tag: str) -> tuple[list[int], np.ndarray]:  # noqa: ANN001
    s = events.scalars[events.scalars["tag"] == tag].sort_values("step")
    return s["step"].tolist(), s["value"].to_numpy()


def json_only(tmp_path: Path, *, text_log: bool = True, checkpoints: bool = False) -> Path:
    """The work_dir as most mmdet 2.x users have it: the json log (TensorBoard is opt-in), the text log beside it."""
    d = tmp_path / "work_dir"
    d.mkdir()
    for f in WORK_DIR.iterdir():
        keep = f.name.endswith(".log.json") or (text_log and f.name.endswith(".log"))
        if keep or (checkpoints and f.suffix == ".pth"):
            shutil.copy(f, d)
    return d


def test_the_json_log_is_on_the_global_iteration_as_the_tensorboard_hook(tmp_path: Path) -> None:
    js = read_run(json_only(tmp_path))
    (tb_dir,) = {p.parent for p in (WORK_DIR / "tf_logs").rglob("events.out.tfevents.*")}
    tb = read_run(tb_dir)
    for ours, theirs in (("loss", "train/loss"), ("grad_norm", "train/grad_norm"), ("lr", "learning_rate")):
        a, b = series(js, ours), series(tb, theirs)
        train = [s % 40 != 1 for s in b[0]]  # the TB hook logs lr at validations too (at iter + 1)
        assert a[0] == [s for s, t in zip(b[0], train) if t] == list(range(10, 241, 10)), ours
        np.testing.assert_allclose(a[1], b[1][train], rtol=1e-5, atol=1e-5)  # json rounded to 5 decimals, TB float32
    steps, _ = series(js, "validation/val_loss")
    assert steps == [40 * e for e in range(1, 7)]  # a validation at the end of its epoch (the TB hook: iter + 1)


def test_each_value_is_its_intervals_mean_rounded_to_5_decimals(tmp_path: Path) -> None:
    raw = np.asarray(EXPECTED["raw"])
    steps, logged = series(read_run(json_only(tmp_path)), "loss")
    want = [round(float(raw[s - 10 : s].mean()), 5) for s in steps]
    np.testing.assert_allclose(logged, want, rtol=1e-12, atol=1e-12)


def test_without_the_text_log_the_epoch_length_is_inferred_and_said(tmp_path: Path) -> None:
    d = json_only(tmp_path, text_log=False)
    (f,) = d.glob("*.log.json")
    data = read_mmcv_log(f)
    assert any("taken as 40, the largest iter logged" in n for n in data.warning_notes)
    assert series(read_run(d), "loss")[0] == list(range(10, 241, 10))  # 40 is a multiple of the interval: exact


def test_iteration_based_runner(tmp_path: Path) -> None:
    d = FIXTURES / "work_dir_iter"
    steps, logged = series(read_run(d), "loss")
    assert steps == list(range(10, 61, 10))
    raw = np.asarray(EXPECTED["iter_based_raw"])
    np.testing.assert_allclose(logged, [round(float(raw[s - 10 : s].mean()), 5) for s in steps], atol=1e-12)
    shutil.copy(next(d.glob("*.log.json")), tmp_path)  # no text log: iter does not restart at epoch 2, so global
    assert series(read_run(tmp_path), "loss")[0] == steps


def test_scan_reads_the_config_and_agrees_with_the_tensorboard_hook(tmp_path: Path) -> None:
    (tb_dir,) = {p.parent for p in (WORK_DIR / "tf_logs").rglob("events.out.tfevents.*")}
    (tb,) = scan_paths([tb_dir]).runs
    (js,) = scan_paths([json_only(tmp_path)]).runs
    assert (js.verdict, js.blowup_step) == (tb.verdict, tb.blowup_step) == ("lr_too_high", 100)
    assert EXPECTED["raw_onset"] <= js.blowup_step <= EXPECTED["raw_onset"] + 20
    msgs = [f.message for f in js.findings]
    assert any("beta2=0.999, eps=1e-08 from mmcv's config" in m for m in msgs), msgs
    assert any(m.startswith("gradient clipping at 100 (optimizer_config's grad_clip") for m in msgs), msgs


def test_the_work_dir_with_its_checkpoints(tmp_path: Path) -> None:
    """Discovery: a work_dir with tf_logs/ is read from its events (one run); the json log alone is a run and its
    epoch_N.pth beside it are its checkpoints (optimizer step = global iteration)."""
    assert discover([WORK_DIR]).runs == [p.parent for p in (WORK_DIR / "tf_logs").rglob("events.out.tfevents.*")]
    d = json_only(tmp_path, checkpoints=True)
    assert discover([d]).runs == [d]
    (rep,) = scan_paths([d]).runs
    assert "checkpoints" in rep.sources and rep.blowup_step == 100


def test_a_logged_sgd_is_not_adam(tmp_path: Path) -> None:
    d = json_only(tmp_path)
    (f,) = d.glob("*.log.json")
    lines = f.read_text().splitlines()
    meta = json.loads(lines[0])
    meta["config"] = meta["config"].replace("type='Adam'", "type='SGD'").replace(", betas=(0.9, 0.999), eps=1e-08", "")
    f.write_text("\n".join([json.dumps(meta), *lines[1:]]) + "\n")
    (rep,) = scan_paths([d]).runs
    assert rep.verdict == "inconclusive" and any(
        x.id == "AD903" and "mmcv's config optimizer 'SGD'" in x.message for x in rep.findings
    )


@pytest.mark.parametrize(
    "text", ['{"a": 1}\n', "[1, 2]\n", "not json\n", '{"mode": "train", "epoch": "x", "iter": 1}\n']
)
def test_other_json_logs_are_no_runs(tmp_path: Path, text: str) -> None:
    (tmp_path / "x.log.json").write_text(text)
    assert not is_mmcv_log(tmp_path / "x.log.json")
