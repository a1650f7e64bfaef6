"""fastai runs, as fastai 2.8.12 itself wrote them (tests/fixtures/fastai, made by tools/runlab/make_fastai_fixtures.py;
adamdiag never imports fastai): ``learn.save`` keeps fastai's own optimizer state (``grad_avg``/``sqr_avg``, its
hyperparameters in a fastcore ``L``), and its TensorBoardCallback logs the *smoothed* loss and every
hyperparameter. The run has one bad batch, at iteration 24."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from adamdiag.cli import app

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "fastai"
EXPECTED = json.loads((FIX / "expected.json").read_text())
runner = CliRunner()


def test_learn_save_optimizer_state_is_read_as_the_live_optimizer_held_it():
    res = runner.invoke(app, ["inspect", str(FIX / "models" / "model.pth"), "--format", "json"])
    assert res.exit_code == 0, res.output
    (ck,) = json.loads(res.stdout)["checkpoints"]
    assert ck["optimizer"] == "AdamW" and ck["step"] == 48
    assert any("fastai optimizer state" in w for w in ck["warnings"])
    by = {t["name"]: t for t in ck["tensors"]}
    assert sorted(by) == sorted(EXPECTED["params"])  # names from the model's state_dict, in order
    (h,) = EXPECTED["hypers"]
    for name, want in EXPECTED["params"].items():
        t = by[name]
        assert t["step"] == want["step"]
        assert math.isclose(t["v_mean"], want["v_mean"], rel_tol=1e-6)
        assert math.isclose(t["v_max"], want["v_max"], rel_tol=1e-6)
        assert (t["beta2"], t["eps"], t["lr"], t["weight_decay"]) == (h["sqr_mom"], h["eps"], h["lr"], h["wd"])
        assert t["beta2_source"] == t["eps_source"] == "file"


def test_the_smoothed_train_loss_is_inverted_into_each_batch_loss():
    from adamdiag.analysis.evidence import series_arrays
    from adamdiag.analysis.fastai_logs import is_smoothed_loss_tag, unsmooth
    from adamdiag.io.events import read_run

    s = read_run(FIX / "runs").scalars
    assert is_smoothed_loss_tag("train_loss", set(s.tag))
    steps, logged = series_arrays(s, "train_loss")
    smooth = np.array([EXPECTED["smooth_loss"][str(int(t))] for t in steps])
    assert np.allclose(logged, smooth, rtol=1e-6)  # what fastai logged is its smooth_loss
    u = unsmooth(steps, logged)
    true = np.array([EXPECTED["loss"][str(int(t))] for t in steps])
    # exact up to float32's rounding of the logged mean, amplified 1/(1-β) = 50x: the bound it states
    assert u.rebuilt and np.all(np.abs(u.values - true) <= u.bound)
    assert np.allclose(u.values[:23], true[:23], rtol=1e-5)  # before the spike the mean is small: ~exact
    assert int(steps[np.argmax(u.values)]) == EXPECTED["bad_iteration"] == 24
    assert logged.max() / np.median(logged) < 100 < u.values.max() / np.median(u.values)  # diluted, then not


def test_scan_finds_the_bad_batch_that_the_smoothing_hid(tmp_path):
    """With and without the checkpoint: a one-batch spike at iteration 24 (was, read raw: an inconclusive
    'blowup' peaking at 488, 1/19 of the batch's own loss); without checkpoints β2/eps are fastai's logged
    ones, not torch's defaults."""
    from adamdiag.analysis.fastai_logs import logged_adam_hyperparameters
    from adamdiag.io.events import read_run

    bare = tmp_path / "fastai"
    shutil.copytree(FIX, bare)
    shutil.rmtree(bare / "models")
    for where in (FIX, bare):
        res = runner.invoke(app, ["scan", str(where), "--format", "json"])
        assert res.exit_code == 0, res.output
        (run,) = json.loads(res.stdout)["runs"]
        assert run["verdict"] == "bad_batch"
        assert any(f["id"] == "AD605" and f["evidence"]["reconstructed"] for f in run["findings"])
        assert any(f["id"] == "AD301" and f["step"] == 24 for f in run["findings"])
    hyper, source = logged_adam_hyperparameters(read_run(bare / "runs").scalars)
    assert hyper == {"beta2": 0.99, "eps": 1e-5} and "sqr_mom_0" in source


def test_unsmooth_keeps_what_it_cannot_invert():
    from adamdiag.analysis.fastai_logs import is_smoothed_loss_tag, unsmooth

    assert not is_smoothed_loss_tag("train_loss", ["train_loss", "lr"])  # a plain train_loss: left alone
    late = unsmooth([5, 6, 7], [1.0, 1.0, 1.0])
    assert not late.rebuilt and "from the first" in late.reason
    gaps = unsmooth([1, 2, 4], [1.0, 1.0, 1.0])
    assert not gaps.rebuilt
    noisy = unsmooth([1, 2, 3], [1.0, 3.0, 0.1])  # falls faster than an EMA of losses >= 0 can
    assert not noisy.rebuilt and "negative" in noisy.reason
    nan = unsmooth([1, 2, 3, 4], [1.0, 1.0, float("nan"), float("nan")])
    assert nan.rebuilt and np.isnan(nan.values[2:]).all()


def test_fastai_states_of_several_groups_or_other_optimizers(tmp_path):
    from adamdiag.errors import InputError
    from adamdiag.io.checkpoints import fastai

    st = {"grad_avg": 0, "sqr_avg": 0, "step": 3}
    two = {"state": [st, st], "hypers": [{"lr": 1e-3, "mom": 0.9, "sqr_mom": 0.99, "eps": 1e-5, "wd": 0.01}] * 2}
    two["hypers"] = [two["hypers"][0], {**two["hypers"][0], "lr": 1e-2}]  # discriminative learning rates
    warnings: list[str] = []
    g = fastai.to_torch_state(two, "opt", warnings)["param_groups"][0]
    assert math.isnan(g["lr"]) and g["betas"] == (0.9, 0.99) and g["eps"] == 1e-5
    assert "differ in lr" in warnings[0]
    radam = {"state": [st], "hypers": [{**two["hypers"][0], "beta": 0.0}]}
    with pytest.raises(InputError, match="only fastai's Adam"):
        fastai.to_torch_state(radam, "opt", [])
    assert not fastai.is_fastai_state({"state": {}, "param_groups": []})
