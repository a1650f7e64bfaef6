"""Verdict calibration on runs of the out-of-family probe that read wrong (confidently, or with a fix that is none).

tests/fixtures/calibration/ (tools/ood/make_sgdr_fixtures.py wrote them; truth.json: the lab labeller's
verdict on the live run, with its replays from the checkpoint before a blowup):

- b95_noise_floor: a healthy AdamW β2 0.95 full-batch fit at its noise floor, the loss swinging a decade from
  step to step. A 7.5x burst that came back at once, then a separate 10x point 98 steps on, read as a blowup
  (``lr_too_high``, high): the excursion never held the level its onset had to pass (ONSET_Z robust sigmas of
  this loss's own swings), which a blowup does.
- gru_warmup_climb: a warm-up to lr 3 logged every 10 steps; the loss climbs 2.7 → ~20 (8-9.8x held, under a
  blowup's 10x) and ends 5x above its start; the live loss blew up and lr/3 avoided it. ``healthy`` stays what
  the 10x rule says, but a run that ended worse than it started is no confident healthy: AD003, low confidence,
  ``lr_too_high`` beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.io.events import read_run
from adamdiag.pipeline.scan import scan_paths

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "calibration"
runner = CliRunner()


def truth(name: str) -> dict:
    return json.loads((FIXTURES / name / "truth.json").read_text())


def loss_of(name: str, tag: str) -> np.ndarray:
    s = read_run(FIXTURES / name).scalars
    return s[s["tag"] == tag].sort_values("step")["value"].to_numpy(np.float64)


def test_a_noise_floor_that_swings_a_decade_is_no_blowup():
    assert truth("b95_noise_floor")["live_blowup_step"] is None  # the labeller: healthy
    loss = loss_of("b95_noise_floor", "loss")
    late = loss[1500:]
    assert late.max() / np.median(late) >= 10  # what the fixture is: single points a decade over the level
    rep = scan_paths([FIXTURES / "b95_noise_floor"]).runs[0]
    assert (rep.verdict, rep.confidence) == ("healthy", "high"), rep.verdict
    assert rep.blowup_step is None
    assert not [f for f in rep.findings if f.id == "AD001"]


def test_a_run_that_ended_above_its_start_is_no_confident_healthy():
    t = truth("gru_warmup_climb")
    assert t["label"] == "lr_too_high" and t["variants"]["lr/3"] == "avoided"  # the live run blew up
    rep = scan_paths([FIXTURES / "gru_warmup_climb"]).runs[0]
    assert (rep.verdict, rep.confidence, rep.alternative) == ("healthy", "low", "lr_too_high")
    (climb,) = [f for f in rep.findings if f.id == "AD003"]
    assert climb.severity == "warning"
    loss = loss_of("gru_warmup_climb", "Loss/train")
    start, end = np.median(loss[:3]), np.median(loss[-max(3, len(loss) // 10) :])
    assert climb.evidence["ratio"] == end / start and 4 < climb.evidence["ratio"] < 10
    assert "lower lr" in rep.recommendation["message"]
    # a warning: `check` passes at its default gate and fails at --fail-on warning
    assert runner.invoke(app, ["check", str(FIXTURES / "gru_warmup_climb")]).exit_code == 0
    assert runner.invoke(app, ["check", str(FIXTURES / "gru_warmup_climb"), "--fail-on", "warning"]).exit_code == 1


def test_a_blowup_no_eps_or_lr_moves_is_not_called_fixed():
    """bow_new_vocab: a vocabulary shift at 3000 (tokens whose rows never had a gradient, labels that depend on
    them). The labeller's replays from 2800: every eps and lr change blows up at 3000. ``--verify`` sees the
    same and says so — no eps or lr from the checkpoint moves it — and the log's eps advice stays only as
    unconfirmed (before: a plain AD106, and "eps 1e-08 → 0.001" as if it were the fix)."""
    t = truth("bow_new_vocab")
    assert t["live_blowup_step"] == 3000 and set(t["variants"].values()) == {"blowup"}
    res = runner.invoke(
        app,
        [
            "scan",
            str(FIXTURES / "bow_new_vocab"),
            "--verify",
            "--entry",
            f"{ROOT / 'tools' / 'ood' / 'oodlab.py'}:adamdiag_replay",
            "--device",
            "cpu",
            "--format",
            "json",
        ],
    )
    assert res.exit_code == 0, res.output
    (run,) = json.loads(res.stdout)["runs"]
    assert run["blowup_step"] == 3000 and run["confidence"] == "low"
    ver = run["verification"]
    assert ver["confirms"] is None and ver["fidelity"]["reproduced"] is True
    assert {v["blowup_step"] for v in ver["variants"]} == {3000}
    (ad106,) = [f for f in run["findings"] if f["id"] == "AD106"]
    assert "the original's own step" in ad106["message"] and "something new in the data" in ad106["message"]
    rec = run["recommendation"]
    assert rec["verified"] is False and "not confirmed" in rec["message"]


def test_spike_cycles_at_a_constant_lr_read_as_a_v_collapse():
    """fullbatch_spike_cycles: a constant-lr full-batch fit that spikes and recovers until it does not. No quiet
    stretch lasts 0.2 of v's memory (each spike lifts v), so before rule spike_cycles it read lr_too_high
    (medium) and its first fix was lr/10, which the labeller saw only postpone the blowup; eps 1e-3 avoids it."""
    t = truth("fullbatch_spike_cycles")
    assert t["label"] == "v_collapse" and t["variants"]["eps1e-3"] == "avoided"
    assert t["variants"]["lr/10"] != "avoided"
    rep = scan_paths([FIXTURES / "fullbatch_spike_cycles"]).runs[0]
    assert (rep.verdict, rep.confidence, rep.alternative) == ("v_collapse", "medium", "lr_too_high")
    (ad101,) = [f for f in rep.findings if f.id == "AD101"]
    spikes = ad101.evidence["spikes"]
    assert len(spikes) >= 2 and ad101.evidence["lr_rose"] is False and ad101.evidence["quiet_share"] >= 0.5
    assert rep.warning_step == spikes[0] < rep.blowup_step
    assert rep.recommendation["action"] == "increase eps" and rep.recommendation["eps"] == 1e-3
