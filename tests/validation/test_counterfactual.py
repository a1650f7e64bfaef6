"""issue #12 item 6: the counterfactual labeller (tools/runlab/counterfactual.py) and its scoring.

The labeller trains eps/lr variants of a blown-up run past its blowup and labels the run by what fixed it.
One small real β2-0.99 run checks it end to end (a few seconds); the rest checks the rules on made-up
outcomes and the incremental blowup detection against the lab's one-shot rule.
"""

from __future__ import annotations

import json
from pathlib import Path

import accuracy
import counterfactual as cf
import numpy as np
import pytest
import runlab
from runlab import RunConfig

RUNLAB = Path(runlab.__file__).resolve().parent


@pytest.mark.parametrize(
    "outcomes,label",
    [
        ({"eps1e-3": "avoided", "eps1e-2": "avoided", "lr/3": "blowup", "lr/10": "avoided"}, "v_collapse"),
        ({"eps1e-3": "blowup", "eps1e-2": "avoided", "lr/3": "at_risk", "lr/10": "at_risk"}, "v_collapse"),
        ({"eps1e-3": "blowup", "eps1e-2": "blowup", "lr/3": "avoided", "lr/10": "avoided"}, "lr_too_high"),
        ({"eps1e-3": "at_risk", "eps1e-2": "blowup", "lr/3": "blowup", "lr/10": "avoided"}, "lr_too_high"),
        # both kinds of change avoid it: the experiment cannot say which cause it was
        ({"eps1e-3": "avoided", "eps1e-2": "avoided", "lr/3": "avoided", "lr/10": "avoided"}, "ambiguous"),
        # nothing avoids it
        ({"eps1e-3": "blowup", "eps1e-2": "at_risk", "lr/3": "blowup", "lr/10": "at_risk"}, "ambiguous"),
    ],
)
def test_label_rule(outcomes, label):
    assert cf.decide_label(outcomes) == label


def test_horizon_and_window_follow_beta2():
    # blowup + one memory of v, and at least twice the checkpoint→blowup gap past the start
    assert cf.horizon_end(blowup=462, start=400, beta2=0.99) == 562
    assert cf.horizon_end(blowup=462, start=400, beta2=0.999) == 1462
    assert cf.horizon_end(blowup=390, start=200, beta2=0.99) == 580
    assert cf.train_end(blowup=462, start=440, beta2=0.98) == 462 + 50 + runlab.BLOWUP_HORIZON
    assert cf.at_risk_window(0.99) == 50 and cf.at_risk_window(0.999) == 200 and cf.at_risk_window(0.9) == 50
    assert cf.start_step(RunConfig(ckpt_every=100), 462) == (400, False)
    assert cf.start_step(RunConfig(ckpt_every=100), 401) == (400, False)
    assert cf.start_step(RunConfig(ckpt_every=100), 400) == (300, False)  # the checkpoint *before* the blowup
    assert cf.start_step(RunConfig(ckpt_every=0), 462) == (400, True)


def test_at_risk_rule():
    n = 50
    quiet, falling = np.full(n, 1e-4), np.geomspace(1e-4, 5e-5, n)
    assert cf.judge_at_risk(quiet, falling, eps=1e-8)[0]
    assert not cf.judge_at_risk(np.full(n, 0.5), falling, eps=1e-8)[0]  # g² ~ v̂: v is not stale
    assert not cf.judge_at_risk(quiet, falling, eps=1e-3)[0]  # eps bounds the step already
    assert not cf.judge_at_risk(quiet, falling[::-1], eps=1e-8)[0]  # √v̂ re-growing, not falling


@pytest.mark.parametrize("seed", range(4))
def test_incremental_blowup_detection_equals_the_one_shot_rule(seed):
    rng = np.random.default_rng(seed)
    n = 900
    loss = np.exp(-np.arange(n) / 150) * np.exp(0.05 * rng.standard_normal(n))
    k = int(rng.integers(200, 800))
    loss[k:] *= np.geomspace(1, 10 ** rng.uniform(0.5, 3), n - k)  # a rise of 3x-1000x from step k+1
    want = runlab.detect_blowup(loss)
    got, checked = None, 0
    for t in range(cf.CHECK_EVERY, n + 1, cf.CHECK_EVERY):
        got, checked = cf._confirmed(list(loss[:t]), checked)
        if got is not None:
            break
    if got is None:
        got = runlab.detect_blowup(loss, start=max(checked - 1, 0))
    assert got == want


def test_labeller_never_uses_adamdiag():
    src = (RUNLAB / "counterfactual.py").read_text()
    assert "import adamdiag" not in src and "from adamdiag" not in src


def test_labeller_on_a_small_real_run(labelled_cf_run):
    # Full batch, β2 0.99, lr 3e-3: converges to ~1e-7 and blows up at step 462 (seed 0); a few seconds.
    run, truth, block = labelled_cf_run
    blowup = truth["summary"]["blowup_step"]
    assert blowup is not None and 400 < blowup <= 500
    assert json.loads((run / "truth.json").read_text())["counterfactual"] == block
    assert truth["summary"]["cause"] == json.loads((run / "truth.json").read_text())["summary"]["cause"]
    # fidelity: the re-trained start state is the checkpoint, and the unchanged run blows up where it did
    assert block["start_step"] == 400 and block["start_matches_checkpoint"] is True
    assert block["reproduces_live_blowup"] and block["original"]["blowup_step"] == blowup
    assert block["horizon_end_step"] == blowup + 100  # one memory of v at β2 0.99
    assert block["trained_to_step"] == block["horizon_end_step"] + runlab.BLOWUP_HORIZON  # + the rule's look-ahead
    v = block["variants"]
    assert set(v) == set(cf.VARIANTS)
    assert v["eps1e-3"]["outcome"] == "avoided" and v["eps1e-2"]["outcome"] == "avoided"
    assert v["lr/3"]["outcome"] in ("blowup", "at_risk")
    assert block["label"] == "v_collapse"
    for name in ("eps1e-3", "eps1e-2"):  # a variant that avoided it ran the whole horizon
        assert v[name]["trained_to"] == block["trained_to_step"] and v[name]["blowup_step"] is None


def test_recommendation_maps_onto_the_trained_variant():
    cfdoc = {
        "start_step": 100,
        "variants": {k: {"outcome": o} for k, o in zip(cf.VARIANTS, ("avoided", "avoided", "blowup", "at_risk"))},
    }
    cfg = {"lr": 0.3, "lr_schedule": "linear_warmup", "warmup_steps": 200}
    assert accuracy._recommended_fix({"eps": 1e-3}, cfdoc, cfg) == {
        "rec_variant": "eps1e-3",
        "rec_exact": True,
        "rec_outcome": "avoided",
    }
    assert accuracy._recommended_fix({"eps": 1e-4}, cfdoc, cfg)["rec_exact"] is False
    assert accuracy._recommended_fix({"eps": 1e-1}, cfdoc, cfg)["rec_variant"] == "eps1e-2"
    # lr at the start step of a warm-up schedule is 0.15: a third of that is lr/3
    assert accuracy._recommended_fix({"lr": 0.05}, cfdoc, cfg)["rec_variant"] == "lr/3"
    assert accuracy._recommended_fix({"lr": 0.015}, cfdoc, cfg)["rec_outcome"] == "at_risk"
    assert accuracy._recommended_fix(None, cfdoc, cfg)["rec_variant"] is None
    assert accuracy._recommended_fix({"action": "inspect the batch"}, cfdoc, cfg)["rec_variant"] is None


def test_counterfactual_scoring():
    def case(name, label, verdict, rec_outcome="avoided", conf="high", group=0, cause="v_collapse"):
        return {
            "name": name,
            "cf_label": label,
            "verdict": verdict,
            "true_cause": cause,
            "rec_outcome": rec_outcome,
            "rec_variant": "eps1e-3",
            "rec_exact": True,
            "confidence": conf,
            "alternative": None,
            "cf_outcomes": {},
            "blowup_visible_in_log": True,
            "seed_group": group,
        }

    rs = [
        case("a", "v_collapse", "v_collapse"),
        case("b", "v_collapse", "lr_too_high", rec_outcome="at_risk", conf="medium"),
        case("c", "lr_too_high", "lr_too_high", cause="lr_too_high"),
        case("d", "ambiguous", "v_collapse"),
        case("e", None, "healthy", cause="healthy"),
        case("f", None, "v_collapse", cause="healthy"),
    ]
    s = accuracy.score_counterfactual(rs)
    assert s["labelled_visible_in_log"] == {"n": 3, "correct": 2, "accuracy": 2 / 3}
    assert [a["name"] for a in s["ambiguous"]] == ["d"]  # out of the percentages
    assert s["false_alarms_healthy"] == {"n": 2, "names": ["f"]}
    assert s["by_confidence"]["high"]["accuracy"] == 1.0 and s["by_confidence"]["medium"]["accuracy"] == 0.0
    assert s["recommended_fix_avoided"]["v_collapse"]["rate"] == 0.5
    assert s["recommended_fix_avoided"]["lr_too_high"]["rate"] == 1.0
    assert not s["targets"]["no_false_alarms"]
    text = accuracy.format_counterfactual({"group 0": s, "pooled": s})
    assert "right verdicts" in text and "ambiguous" in text
