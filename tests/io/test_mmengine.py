"""OpenMMLab mmengine runs, as mmengine 0.10.7 itself wrote them (tests/fixtures/mmengine, made by
tools/runlab/make_mmengine_fixtures.py; adamdiag never imports mmengine): its LocalVisBackend log
(``vis_data/scalars.json``) read as the TensorboardVisBackend's event file of the same run, and its checkpoints —
whose message hub pickles mmengine's HistoryBuffer (with ``getattr(HistoryBuffer, "min")`` for its statistics
methods) — read without mmengine and without running anything from them."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adamdiag.cli import app

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "mmengine"
EXPECTED = json.loads((FIX / "expected.json").read_text())
WORK = FIX / "work_dir"
(VIS,) = WORK.glob("*/vis_data")
runner = CliRunner()


def scan_json(path: Path) -> dict:
    res = runner.invoke(app, ["scan", str(path), "--format", "json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def json_only(tmp_path: Path) -> Path:
    """The work_dir as a run with mmengine's default backend only (no event file)."""
    d = tmp_path / "work_dir"
    shutil.copytree(WORK, d)
    for f in d.glob("*/vis_data/events.out.tfevents.*"):
        f.unlink()
    return d


def test_scalars_json_holds_what_the_tensorboard_backend_wrote():
    from adamdiag.io.events import read_file
    from adamdiag.io.mmengine_log import read_scalars_json

    (events,) = VIS.glob("events.out.tfevents.*")
    tb = read_file(events)
    js = read_scalars_json(VIS / "scalars.json")

    def points(d):
        import numpy as np

        codes, steps, values = (np.concatenate(x) for x in (d.s_tag, d.s_step, d.s_value))
        return {(d.tags[c], int(s)): float(v) for c, s, v in zip(codes, steps, values)}

    a, b = points(tb), points(js)
    assert {"loss", "lr", "grad_norm"} <= {t for t, _ in b}
    # the training's lr, data_time, grad_norm, loss, time, epoch, iter at each iteration; the validation's mse and
    # timings at its epoch (step 1), which the TensorBoard backend writes unprefixed — its time onto the training's
    train = {k: v for k, v in b.items() if not k[0].startswith("validation/")}
    assert len(train) == 7 * 120 and sorted(train) == sorted(k for k in a if k != ("mse", 1))
    assert all(math.isclose(a[k], v, rel_tol=1e-6) for k, v in train.items() if k[1] != 1)  # float32 in the file
    assert sorted(k for k in b if k[0].startswith("validation/")) == [
        ("validation/data_time", 1),
        ("validation/mse", 1),
        ("validation/time", 1),
    ]
    assert math.isclose(a[("mse", 1)], b[("validation/mse", 1)], rel_tol=1e-6)
    # mmengine's window_size=1: each logged loss is the iteration's own
    losses = {int(k): v for k, v in EXPECTED["losses"].items()}
    assert all(math.isclose(b[("loss", s)], losses[s], rel_tol=1e-6) for s in losses)


def test_a_work_dir_with_the_default_backend_only_is_diagnosed_as_its_tensorboard_log(tmp_path):
    from adamdiag.io.events import is_eval_tag

    assert is_eval_tag("validation/mse")  # the validation's lines: an evaluation split, not diagnosed
    (tb,) = scan_json(WORK)["runs"]
    (js,) = scan_json(json_only(tmp_path))["runs"]
    assert js["run"].endswith("vis_data") and tb["run"].endswith("vis_data")
    keys = ("verdict", "confidence", "alternative", "blowup_step", "warning_step", "loss_tag", "grad_norm_tag")
    assert {k: js[k] for k in keys} == {k: tb[k] for k in keys}
    assert js["blowup_step"] == EXPECTED["blowup_iteration"] == 61
    assert "checkpoints" in js["sources"]  # iter_*.pth beside the timestamp folder, in work_dir
    assert any("mmengine's LocalVisBackend" in f["message"] for f in js["findings"])


@pytest.mark.parametrize("name", ["iter_40.pth", "iter_80.pth", "iter_120.pth"])
def test_checkpoints_with_mmengine_objects_read_inertly(name, capfd):
    """The message hub's HistoryBuffer objects become inert stand-ins (said once on stderr); the optimizer's
    state is the live one's."""
    res = runner.invoke(app, ["inspect", str(WORK / name), "--format", "json"])
    assert res.exit_code == 0, res.output
    (ck,) = json.loads(res.stdout)["checkpoints"]
    want = EXPECTED["checkpoints"][name]
    by = {t["name"]: t for t in ck["tensors"]}
    assert sorted(by) == sorted(want)
    for n, w in want.items():
        assert by[n]["step"] == w["step"] == ck["step"]
        assert math.isclose(by[n]["v_mean"], w["v_mean"], rel_tol=1e-6)
        assert math.isclose(by[n]["v_max"], w["v_max"], rel_tol=1e-6)
        assert (by[n]["eps"], by[n]["beta2"]) == (1e-6, 0.98)


def test_damaged_or_foreign_scalars_json(tmp_path):
    from adamdiag.io.events import find_runs
    from adamdiag.io.mmengine_log import is_scalars_json, read_scalars_json

    d = json_only(tmp_path)
    (f,) = d.glob("*/vis_data/scalars.json")
    text = f.read_text()
    f.write_text(text[: len(text) - 40])  # a write cut short: the last line (the validation's) is lost, said so
    data = read_scalars_json(f)
    assert any("truncated record at byte" in w and "still writing" in w for w in data.warnings)
    assert len(data.warnings) == 1
    assert not any(t.startswith("validation/") for t in data.tags) and max(int(s) for s in data.s_step[0]) == 120
    other = tmp_path / "other"
    other.mkdir()
    (other / "scalars.json").write_text('[{"step": 1}]\n')  # some other file of that name: not a run
    assert not is_scalars_json(other / "scalars.json")
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "scalars.json")  # never opened
    assert not is_scalars_json(fifo / "scalars.json")
    for where in (other, fifo):
        res = runner.invoke(app, ["scan", str(where)])
        assert res.exit_code == 2 and "mmengine scalars.json" in res.output
    assert find_runs([d])[0] == f.parent


def test_replay_finds_the_log_beside_mmengine_checkpoints(tmp_path):
    """``replay work_dir/iter_40.pth`` without --logdir: mmengine keeps its log in work_dir/<timestamp>/vis_data/ —
    found with event files or with its scalars.json alone; two runs there (a resumed training) is a one-line ask."""
    from adamdiag.errors import InputError
    from adamdiag.replay.runner import find_run_dir

    d = json_only(tmp_path)
    (vis,) = d.glob("*/vis_data")
    assert find_run_dir(d / "iter_40.pth", None) == vis.resolve()
    shutil.copytree(vis.parent, d / "20990101_000000")
    with pytest.raises(InputError, match="several mmengine runs"):
        find_run_dir(d / "iter_40.pth", None)


def test_tags_names_the_writer_of_a_scalars_json(tmp_path):
    """`tags` said "writer no scalars" for it (every framework reader's kind had to be listed in results.tags by hand;
    the reader now names its writer with the file)."""
    res = runner.invoke(app, ["tags", str(json_only(tmp_path)), "--format", "json"])
    assert res.exit_code == 0, res.output
    (run,) = json.loads(res.stdout)["runs"]
    assert [f["writer"] for f in run["files"]] == ["mmengine LocalVisBackend scalars.json"]
