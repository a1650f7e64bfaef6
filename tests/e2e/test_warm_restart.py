"""Warm restarts (SGDR): v collapses while a cosine cycle's lr decays to ~0, and the restart raises lr at once.

tests/fixtures/sgdr/ holds two runs of the out-of-family probe (tools/ood/make_sgdr_fixtures.py wrote them;
truth.json: the live run's blowup step and the probe labeller's replays from the checkpoint before it).

- mlp_restart: the √v̂ at the last checkpoint (lr 2.5e-08) sized eps 1e-4, which the labeller found blowing
  up at the restart's lr like 1e-3 did; only 1e-2 avoided it. The sizing holds for the checkpoint's lr only,
  so under a ≥10x lr rise since the checkpoint the unsized 1e-2 is the floor.
- matfac_recovered: the restart's spike lies between two logged points and the logged loss recovers, after a
  deep v collapse. The live loss did blow up (labeller: eps 1e-3 avoided it), so "healthy, high" was
  confidently wrong: healthy stays the outcome the log shows, at medium, with v_collapse the alternative,
  and the eps fix is recommended.
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.pipeline.scan import scan_paths

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sgdr"
runner = CliRunner()


def truth(name: str) -> dict:
    return json.loads((FIXTURES / name / "truth.json").read_text())


def test_eps_under_a_warm_restart_is_at_least_the_unsized_default():
    run = FIXTURES / "mlp_restart"
    t = truth("mlp_restart")
    assert t["variants"]["eps1e-3"] == "blowup" and t["variants"]["eps1e-2"] == "avoided"  # what the fixture is
    rep = scan_paths([run]).runs[0]
    rec = rep.recommendation
    assert rep.verdict == "v_collapse" and rec["action"] == "increase eps"
    # the measured sizing (what the labeller saw blow up: at most 1e-3) is kept beside the floor
    assert rec["sized_eps"] <= 1e-3 and rec["eps"] == 1e-2, rec
    assert "the logged lr rose" in rec["message"] and "is the floor" in rec["message"]
    assert f"from the start checkpoint's {2.47e-08:.3g} (step {t['label_start_step']})" in rec["message"]
    # the verify command still compares the sized value with the floor
    assert "--eps 0.0001" in rec["verify"] and "--eps 0.01" in rec["verify"]
    # the JSON carries both (a run whose lr did not rise keeps its sizing and has no sized_eps: sh99 in
    # tests/e2e/test_scan_verify.py, eps 1e-3)
    res = runner.invoke(app, ["scan", str(run), "--format", "json"])
    data = json.loads(res.stdout)["runs"][0]["recommendation"]
    assert (data["eps"], data["sized_eps"]) == (rec["eps"], rec["sized_eps"])


def test_a_recovered_spike_after_a_deep_collapse_is_not_a_confident_healthy():
    t = truth("matfac_recovered")
    assert t["live_blowup_step"] is not None and t["variants"]["eps1e-3"] == "avoided"  # what the fixture is
    rep = scan_paths([FIXTURES / "matfac_recovered"]).runs[0]
    assert (rep.verdict, rep.confidence, rep.alternative) == ("healthy", "medium", "v_collapse")
    assert rep.blowup_step is None  # the logged loss recovered: no blowup is claimed
    assert any(
        f.id == "AD101" and f.severity == "warning" and "mechanism is in place" in f.message for f in rep.findings
    )
    rec = rep.recommendation
    assert rec["action"] == "increase eps" and rec["message"].startswith("the run recovered this time")
    assert 1e-8 < rec["eps"] <= 1e-3  # sized from the checkpoint before the spike (the labeller: 1e-3 avoided it)
    # check (CI) still passes a healthy run: a warning, not an error
    res = runner.invoke(app, ["check", str(FIXTURES / "matfac_recovered")])
    assert res.exit_code == 0, res.output
