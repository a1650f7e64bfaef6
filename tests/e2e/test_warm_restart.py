"""Warm restarts (SGDR): v collapses while a cosine cycle's lr decays to ~0, and the restart raises lr at once.

tests/fixtures/sgdr/ holds two runs of the out-of-family probe (tools/ood/make_sgdr_fixtures.py wrote them;
truth.json: the live run's blowup step and the probe labeller's replays from the checkpoint before it).

- mlp_restart: the √v̂ at the last checkpoint (lr 2.5e-08) sized eps 1e-4, which the labeller found blowing
  up at the restart's lr like 1e-3 did; only 1e-2 avoided it. The sizing holds for the checkpoint's lr only,
  so under a ≥10x lr rise since the checkpoint the unsized 1e-2 is the floor.
  `scan --verify` replays it (tools/ood/oodlab.py's entry): 1e-4 and 1e-3 blow up, 1e-2 avoids the blowup.
  Without the lr scalar the restart is not seen and eps is sized 1e-4: the replay then moves the
  recommendation to 1e-2 (a sized value that only blows up later is no fix).
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

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "sgdr"
# the lab's own replay entry: the design in lab_spec.json, the live run's batches, loss and lr schedule
ENTRY = f"{ROOT / 'tools' / 'ood' / 'oodlab.py'}:adamdiag_replay"
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


def _scan_verify(run: Path) -> dict:
    res = runner.invoke(app, ["scan", str(run), "--verify", "--entry", ENTRY, "--device", "cpu", "--format", "json"])
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["runs"]
    return r


def test_verify_replays_the_restart_and_names_the_eps_that_only_blow_up_later():
    r = _scan_verify(FIXTURES / "mlp_restart")
    ver, rec = r["verification"], r["recommendation"]
    assert ver["fidelity"]["reproduced"] and ver["confirms"] is True and ver["best"] == "eps=0.01", ver
    by = {v["name"]: v["outcome"] for v in ver["variants"]}
    assert by["eps=0.0001"] == by["eps=0.001"] == "blowup" and by["eps=0.01"] == "avoided"
    assert rec["eps"] == 1e-2 and rec["sized_eps"] <= 1e-3  # the floor, confirmed; the sizing kept
    (ad701,) = [f for f in r["findings"] if f["id"] == "AD701"]
    assert "eps=0.0001 blows up at step" in ad701["message"] and "eps=0.001 blows up at step" in ad701["message"]


def test_verify_moves_a_sized_eps_that_only_blows_up_later(tmp_path):
    # The same run logged without its lr: no restart is seen, eps is sized at the checkpoint (1e-4), and the
    # replay shows that value blowing up — the recommendation moves to the smallest eps that avoided it.
    import shutil

    from torch.utils.tensorboard import SummaryWriter

    from adamdiag.io.events import read_run

    src, dst = FIXTURES / "mlp_restart", tmp_path / "mlp_restart_nolr"
    shutil.copytree(src / "out", dst / "out")
    shutil.copy(src / "lab_spec.json", dst / "lab_spec.json")
    scalars = read_run(src).scalars
    w = SummaryWriter(str(dst))
    for tag, rows in scalars.groupby("tag", observed=True):
        if "lr" in str(tag) or "learning_rate" in str(tag):
            continue
        for step, value in zip(rows["step"], rows["value"]):
            w.add_scalar(str(tag), float(value), int(step))
    w.close()
    r = _scan_verify(dst)
    rec = r["recommendation"]
    assert r["verdict"] == "v_collapse" and r["verification"]["best"] == "eps=0.01"
    assert rec["eps"] == 1e-2 and rec["sized_eps"] == 1e-4, rec
    assert rec["message"].startswith("eps 1e-08 → 0.01: verified by replay from step 1000: it avoids the blowup")
    assert "eps=0.0001 blows up at step" in rec["message"] and "the sizing from √v̂ chose 0.0001" in rec["message"]
