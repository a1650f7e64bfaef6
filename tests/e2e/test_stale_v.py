"""The stale-v class on a real run from the lab (issue 12 items 1-2): full batch, β2 0.9999, lr 0.03. The
loss falls fast; by the blowup (~step 140) v̂ is still the mean of the first, large gradients — a
quiet stretch over most of v̂'s (bias-corrected) memory, though far shorter than 1/(1-β2) and shallow.
Counterfactual replays of this design (bench/accuracy.py, this seed): eps 1e-2 avoids the
blowup, lr/3 and lr/10 only postpone it. scan must not call it lr_too_high with "v is healthy": it is
v_collapse with lr_too_high as the alternative, and the printed replay tries both fixes."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from adamdiag.cli import app


def test_early_shallow_collapse_is_a_stale_v(tmp_path):
    import multitask
    import runlab

    cfg = runlab.RunConfig(
        name="sh9999",
        family=multitask.FAMILY,
        size="tiny",
        seed=30,
        lr=0.03,
        eps=1e-8,
        ckpt_every=100,
        steps=400,  # blows up at 140; the lab's detector confirms it within 100 steps
        betas=(0.9, 0.9999),
        data={"prob_weight": 0.0, "n_examples": 32},
    )
    truth = runlab.train(cfg, tmp_path / "run")
    blowup = truth["summary"]["blowup_step"]
    assert blowup is not None and blowup < 300
    res = CliRunner().invoke(app, ["scan", str(tmp_path / "run"), "--format", "json"])
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["runs"]
    assert r["verdict"] == "v_collapse" and r["alternative"] == "lr_too_high" and r["confidence"] == "medium"
    msg = " ".join(f["message"] for f in r["findings"]) + r["recommendation"]["message"]
    assert "healthy" not in msg and "O(1)" not in msg and "stale v" in msg
    assert "--eps" in r["recommendation"]["verify"] and "--lr" in r["recommendation"]["verify"]
