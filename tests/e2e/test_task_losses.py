"""A multi-task total can hide one head's blowup (issue 14: the regression heads of the original report
spiked 100-1000x while the cross-entropy term dominated the logged total). Per-task tags beside the total
(loss_*, *_loss, *_mse) are watched too: a head that blows up is named (a warning when auto-picked, an
error when named with --loss-tag)."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from adamdiag.cli import app


def _write(path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    rng = np.random.default_rng(0)
    w = SummaryWriter(str(path))
    for step in range(1, 601):
        ce = 1.0 + 0.01 * rng.standard_normal()
        mse = 1e-5 * (1 + 0.05 * rng.standard_normal()) * (1.0 if step < 400 else 1e3)
        w.add_scalar("train/loss", ce + mse, step)
        w.add_scalar("train/loss_prob", ce, step)
        w.add_scalar("train/sincos_mse", mse, step)
    w.close()


def _run(path, *args) -> dict:
    res = CliRunner().invoke(app, ["scan", str(path), "--format", "json", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)["runs"][0]


def test_a_hidden_head_blowup_is_named(tmp_path):
    _write(tmp_path)
    r = _run(tmp_path)
    assert r["blowup_step"] is None and "train/sincos_mse" in r["loss_tags"]
    (f,) = [f for f in r["findings"] if f["id"] == "AD001"]
    assert f["severity"] == "warning" and "'train/sincos_mse'" in f["message"] and f["step"] == 400
    named = _run(tmp_path, "--loss-tag", "train/loss", "--loss-tag", "train/sincos_mse")
    (f,) = [f for f in named["findings"] if f["id"] == "AD001"]
    assert f["severity"] == "error" and named["loss_tags"] == ["train/loss", "train/sincos_mse"]


def test_report_takes_the_same_tag_options_as_scan(tmp_path):
    """`report -o x.json` with --loss-tag diagnoses (and draws) the named tag, as scan does."""
    _write(tmp_path / "run")
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["report", str(tmp_path / "run"), "-o", str(out), "--loss-tag", "train/sincos_mse"])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())["runs"][0]
    assert r["loss_tag"] == "train/sincos_mse" and r["blowup_step"] == 400
    assert r["series"]["loss"]["tag"] == "train/sincos_mse"


def test_report_curves_use_the_assumed_hyperparameters(tmp_path):
    """A run whose checkpoints keep no eps: `report --assume-eps` draws √v̂ against the assumed eps, as
    the diagnosis used it (without it the eps line is unknown, not a silent default)."""
    import torch
    from realruns import train_tiny

    train_tiny(tmp_path / "run")
    for p in (tmp_path / "run").rglob("*.pt"):
        sd = torch.load(p, weights_only=True)
        for g in (sd["optimizer"] if "optimizer" in sd else sd)["param_groups"]:
            g.pop("eps")
        torch.save(sd, p)
    for extra, want in ((["--assume-eps", "1e-6"], 1e-6), ([], None)):
        out = tmp_path / f"r{len(extra)}.json"
        res = CliRunner().invoke(app, ["report", str(tmp_path / "run"), "-o", str(out), *extra])
        assert res.exit_code == 0, res.output
        band = json.loads(out.read_text())["runs"][0]["series"]["sqrt_vhat"]
        assert band["eps"] == want and band["step"] == [100, 200, 300, 400]


def test_a_head_blowup_makes_a_healthy_total_no_sure_bill(tmp_path):
    """With a gradient norm logged (mechanism data) a healthy total is `healthy` high; a head that blew up beside it
    lowers that to medium — on the matrix 3 of the 10 runs read healthy-high with a task blowup were blowups of the
    total (and 0 of the 130 without one)."""
    from torch.utils.tensorboard import SummaryWriter

    for name, head_factor in (("blown_head", 1e3), ("flat_head", 1.0)):
        rng = np.random.default_rng(0)
        w = SummaryWriter(str(tmp_path / name))
        for step in range(1, 601):
            ce = 1.0 + 0.01 * rng.standard_normal()
            mse = 1e-5 * (1 + 0.05 * rng.standard_normal()) * (1.0 if step < 400 else head_factor)
            w.add_scalar("train/loss", ce + mse, step)
            w.add_scalar("train/loss_prob", ce, step)
            w.add_scalar("train/sincos_mse", mse, step)
            w.add_scalar("train/grad_norm", 0.5 * (1 + 0.05 * rng.standard_normal()), step)
        w.close()
    blown, flat = _run(tmp_path / "blown_head"), _run(tmp_path / "flat_head")
    assert (flat["verdict"], flat["confidence"]) == ("healthy", "high")
    assert (blown["verdict"], blown["confidence"]) == ("healthy", "medium")
    assert any(f["id"] == "AD001" and f["severity"] == "warning" for f in blown["findings"])
