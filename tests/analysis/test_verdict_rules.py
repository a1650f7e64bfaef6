"""Every verdict rule from hand-made evidence: the first matching rule decides, with its confidence and
alternative; the findings say what their evidence says (end-to-end checks on real runs are in
tests/e2e and the validation matrix)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from adamdiag.analysis import findings as F
from adamdiag.analysis.evidence import Collapse, Evidence, StateProblem, Trajectory, VhatFall
from adamdiag.analysis.signals import LossEvents
from adamdiag.analysis.thresholds import COLLAPSE_R
from adamdiag.analysis.verdicts import RULES, decide


def _traj(exact: bool = True) -> Trajectory:
    s = np.arange(1, 11)
    return Trajectory("global", s, np.ones(10), np.ones(10), np.ones(10), exact=exact)


def _traj_of(label: str) -> Trajectory:
    s = np.arange(1, 11)
    return Trajectory(label, s, np.ones(10), np.ones(10), np.ones(10), exact=True)


def _collapse(deep: bool, exact: bool = True, label: str = "global") -> Collapse:
    return Collapse(label, "log", 100, 300, 1e-4, deep=deep, depth=0.001 if deep else 0.6, exact=exact)


UNRESOLVED = {"spike": 400, "step": 400, "ratio": 40.0, "unlogged": 99, "count": 1}

# over v's memory before the blowup at 900: most steps quiet, three recovered spikes, the lr constant
CYCLES = {"quiet_share": 0.7, "spikes": [600, 700, 800], "lr_rose": False, "window": [1, 900]}


def make(**kw) -> Evidence:
    ev = Evidence(
        loss_tag="train/loss",
        loss_tags=["train/loss"],
        grad_norm_tag="grad_norm",
        n_loss_points=1000,
        events=kw.pop("events", LossEvents(blowup_step=900, pre_level=1e-3, peak=10.0, peak_step=950, best_step=800)),
        task_events=kw.pop("task_events", {}),
        event_step=kw.pop("event_step", 900),
        trajectories=kw.pop("trajectories", [_traj()]),
        collapses=kw.pop("collapses", []),
        regrowth=[],
        update_rms=[],
        pre_event_r=kw.pop("pre_event_r", 0.5),
        grad_jump=kw.pop("grad_jump", None),
        state_problems=kw.pop("state_problems", []),
        non_adam=kw.pop("non_adam", []),
        checkpoints=[],
        ratios=[],
        start=None,
        beta2=0.999,
        eps=1e-8,
        lr=1e-3,
        hyper_assumed=True,
    )
    for k, v in kw.items():
        setattr(ev, k, v)
    return ev


JUMP = {"step": 900, "grad_norm": 100.0, "previous": 1.0, "trailing_median": 1.0}
QUIET = LossEvents()  # nothing happened
DEEP_FALL = VhatFall("log", 30.0, 100, 880, 600, True)  # v̂ at 1/900 of its peak, deep from step 600
ONE_POINT = {"step": 400, "loss": 5e3, "previous": 0.5, "next": 0.4, "ratio": 1e4, "count": 1}
SHALLOW_FALL = VhatFall("log", 5.0, 100, 880, None, True)


@pytest.mark.parametrize(
    "name, evidence, verdict, rule, confidence, alternative",
    [
        (
            "nan in m or v outranks a blowup",
            make(state_problems=[StateProblem(800, "w", "nonfinite")], collapses=[_collapse(True)]),
            "nonfinite",
            "nonfinite_state",
            "high",
            None,
        ),
        (
            "nan loss, no blowup",
            make(events=LossEvents(first_nonfinite_step=500), event_step=None),
            "nonfinite",
            "nonfinite_loss",
            "high",
            None,
        ),
        ("no loss tag", make(loss_tag=None), "inconclusive", "no_loss", "low", None),
        ("three points", make(n_loss_points=3), "inconclusive", "too_few_points", "low", None),
        ("sgd run that blew up", make(non_adam=["ck.pt: SGD"]), "inconclusive", "not_adam", "low", None),
        (
            "a 10x rise at the third point, nothing later",
            make(events=LossEvents(unbased_rise_step=3), event_step=None, pre_event_r=None),
            "inconclusive",
            "unbased_rise",
            "low",
            None,
        ),
        (
            "a 10x rise at the third point, a blowup later",
            make(events=LossEvents(unbased_rise_step=3, blowup_step=900, pre_level=1e-3, peak=10.0, peak_step=950)),
            "lr_too_high",
            "diverged",
            "high",
            None,
        ),
        (
            "one batch, gone next step",
            make(grad_jump={**JUMP, "isolated": True}),
            "bad_batch",
            "one_batch",
            "high",
            None,
        ),
        (
            "one batch during a collapse",
            make(grad_jump={**JUMP, "isolated": True}, collapses=[_collapse(True)]),
            "bad_batch",
            "one_batch",
            "medium",
            "v_collapse",
        ),
        ("deep collapse, exact", make(collapses=[_collapse(True)]), "v_collapse", "deep_collapse", "high", None),
        (
            "deep collapse, approximate",
            make(collapses=[_collapse(True, exact=False)]),
            "v_collapse",
            "deep_collapse",
            "low",
            None,
        ),
        (
            "long but shallow (stale v)",
            make(collapses=[_collapse(False)]),
            "v_collapse",
            "stale_v",
            "medium",
            "lr_too_high",
        ),
        (
            # the ordinary fall of some tensors' gradients after the first steps (the monitor's per-tensor
            # tags show it on warm-ups to a too-high lr): not a stale v while all parameters are not quiet
            "shallow stretch in one tensor, all parameters not quiet",
            make(collapses=[_collapse(False, label="fc.bias")]),
            "lr_too_high",
            "diverged",
            "high",
            None,
        ),
        (
            "shallow stretch in one tensor, no all-parameter trajectory (histograms or checkpoints only)",
            make(collapses=[_collapse(False, label="fc.bias")], trajectories=[_traj_of("fc.bias")]),
            "v_collapse",
            "stale_v",
            "medium",
            "lr_too_high",
        ),
        (
            # an every-N-steps reconstruction cannot say r was not quiet between its points
            "shallow stretch in one tensor, all parameters approximate and not quiet",
            make(collapses=[_collapse(False, label="fc.bias")], trajectories=[_traj(exact=False)]),
            "v_collapse",
            "stale_v",
            "medium",
            "lr_too_high",
        ),
        (
            "shallow stretch in all parameters and in one tensor",
            make(collapses=[_collapse(False, label="fc.bias"), _collapse(False)]),
            "v_collapse",
            "stale_v",
            "medium",
            "lr_too_high",
        ),
        (
            "deep stretch in one tensor, all parameters not quiet",
            make(collapses=[_collapse(True, label="fc.bias")]),
            "v_collapse",
            "deep_collapse",
            "high",
            None,
        ),
        (
            "jump after a collapse that stays up",
            make(grad_jump={**JUMP, "isolated": False}, collapses=[_collapse(False)]),
            "v_collapse",
            "stale_v",
            "medium",
            "lr_too_high",
        ),
        (
            "jump that stays up, no collapse",
            make(grad_jump={**JUMP, "isolated": False}),
            "bad_batch",
            "gradient_jump",
            "low",
            "lr_too_high",
        ),
        ("loss only", make(trajectories=[]), "inconclusive", "loss_only", "low", None),
        (
            # Lightning's default: the last epoch's checkpoint only, after the blowup — the state the blowup
            # left, nothing about what led to it
            "loss and a checkpoint after the blowup",
            make(trajectories=[], pre_event_r=None, checkpoints=[SimpleNamespace(step=1000)]),
            "inconclusive",
            "loss_only",
            "low",
            None,
        ),
        (
            "loss and one checkpoint before the blowup (no interval to see v move)",
            make(trajectories=[], pre_event_r=None, checkpoints=[SimpleNamespace(step=800)]),
            "inconclusive",
            "loss_only",
            "low",
            None,
        ),
        (
            "loss and a pair of checkpoints before the blowup, no collapse between them",
            make(trajectories=[], pre_event_r=None, checkpoints=[SimpleNamespace(step=700), SimpleNamespace(step=800)]),
            "lr_too_high",
            "diverged",
            "low",
            None,
        ),
        (
            "spikes that recovered",
            make(events=LossEvents(spikes=[400]), event_step=400),
            "healthy",
            "recovered_spikes",
            "high",
            None,
        ),
        (
            "one point of the loss 10x both neighbours, back at once, no gradient norm logged",
            make(events=LossEvents(spikes=[400]), event_step=400, one_point_spike=ONE_POINT),
            "bad_batch",
            "one_point_spike",
            "low",
            None,
        ),
        (
            "no loss event, a one-step gradient-norm jump back at the next step",
            make(events=QUIET, event_step=None, absorbed_jump={**JUMP, "isolated": True, "count": 1}),
            "bad_batch",
            "absorbed_batch",
            "medium",
            None,
        ),
        (
            "an absorbed jump is not the verdict when the loss has an event",
            make(events=LossEvents(spikes=[400]), event_step=400, absorbed_jump={**JUMP, "isolated": True, "count": 1}),
            "healthy",
            "recovered_spikes",
            "high",
            None,
        ),
        (
            "a recovered 10x spike whose next 10 steps are not logged: the log cannot tell it from a blowup",
            make(events=LossEvents(spikes=[400]), event_step=400, unresolved_spike=UNRESOLVED),
            "healthy",
            "recovered_spikes",
            "medium",
            None,
        ),
        (
            "... and without mechanism data it stays low (never raised)",
            make(events=LossEvents(spikes=[400]), event_step=400, unresolved_spike=UNRESOLVED, trajectories=[]),
            "healthy",
            "recovered_spikes",
            "low",
            None,
        ),
        (
            "a healthy total beside a per-task loss that blew up",
            make(events=QUIET, event_step=None, task_events={"train/loss_head": LossEvents(blowup_step=500)}),
            "healthy",
            "no_event",
            "medium",
            None,
        ),
        (
            "spikes that recovered after a deep v collapse: the mechanism is in place",
            make(events=LossEvents(spikes=[400]), event_step=400, collapses=[_collapse(True)]),
            "healthy",
            "recovered_spikes",
            "medium",
            "v_collapse",
        ),
        (
            "the blowup's first point is one batch's loss (logged every step), no gradient norm",
            make(blowup_batch_spike=ONE_POINT),
            "bad_batch",
            "batch_loss_blowup",
            "medium",
            None,
        ),
        (
            "one batch's loss starts the blowup after a stale v: a v collapse stays the alternative",
            make(blowup_batch_spike=ONE_POINT, collapses=[_collapse(False)]),
            "bad_batch",
            "batch_loss_blowup",
            "low",
            "v_collapse",
        ),
        (
            "a one-point spike is not looked at when the run blew up",
            make(one_point_spike=ONE_POINT),
            "lr_too_high",
            "diverged",
            "high",
            None,
        ),
        (
            "v̂ fell 30x (√) with no quiet stretch",
            make(vhat_fall=DEEP_FALL),
            "v_collapse",
            "shrunken_v",
            "medium",
            "lr_too_high",
        ),
        (
            "one batch outranks a shrunken v",
            make(grad_jump={**JUMP, "isolated": True}, vhat_fall=DEEP_FALL),
            "bad_batch",
            "one_batch",
            "high",
            None,
        ),
        ("v̂ fell only 5x (√)", make(vhat_fall=SHALLOW_FALL), "lr_too_high", "diverged", "high", None),
        ("diverged, r O(1) on exact data", make(), "lr_too_high", "diverged", "high", None),
        (
            "diverged after a short quiet stretch",
            make(pre_event_r=COLLAPSE_R / 10),
            "lr_too_high",
            "diverged",
            "medium",
            "v_collapse",
        ),
        (
            "spike cycles at a constant lr after short quiet stretches",
            make(pre_event_r=COLLAPSE_R / 2, spike_cycles=CYCLES),
            "v_collapse",
            "spike_cycles",
            "medium",
            "lr_too_high",
        ),
        (
            "spike cycles during a warm-up (the lr rose): the lr made the step",
            make(pre_event_r=COLLAPSE_R / 2, spike_cycles={**CYCLES, "lr_rose": True}),
            "lr_too_high",
            "diverged",
            "medium",
            "v_collapse",
        ),
        (
            "one recovered spike is no cycle",
            make(pre_event_r=COLLAPSE_R / 2, spike_cycles={**CYCLES, "spikes": [700]}),
            "lr_too_high",
            "diverged",
            "medium",
            "v_collapse",
        ),
        (
            "mostly not quiet over v's memory",
            make(pre_event_r=COLLAPSE_R / 2, spike_cycles={**CYCLES, "quiet_share": 0.3}),
            "lr_too_high",
            "diverged",
            "medium",
            "v_collapse",
        ),
        (
            "spike cycles need r low just before the blowup",
            make(spike_cycles=CYCLES),
            "lr_too_high",
            "diverged",
            "high",
            None,
        ),
        ("diverged, approximate data", make(trajectories=[_traj(exact=False)]), "lr_too_high", "diverged", "low", None),
        ("nothing happened", make(events=QUIET, event_step=None), "healthy", "no_event", "high", None),
    ],
)
def test_rule(name, evidence, verdict, rule, confidence, alternative):
    d = decide(evidence)
    assert (d.verdict, d.rule, d.confidence, d.alternative) == (verdict, rule, confidence, alternative), name


def test_every_rule_has_a_case():
    names = {r.name for r in RULES}
    assert names == {
        "nonfinite_state",
        "nonfinite_loss",
        "no_data",
        "unbased_rise",
        "one_batch",
        "batch_loss_blowup",
        "collapse",
        "gradient_jump",
        "loss_only",
        "one_point_spike",
        "absorbed_batch",
        "recovered_spikes",
        "shrunken_v",
        "spike_cycles",
        "diverged",
        "healthy",
    }


def test_spike_cycles_message_says_its_numbers():
    ev = make(pre_event_r=COLLAPSE_R / 2, spike_cycles=CYCLES)
    f, *_ = F.spike_cycles(ev)
    assert f.id == "AD101" and f.step == 600 and "70% of the logged steps" in f.message
    assert "recovered 3 times (step 600, 700, 800)" in f.message and "the lr did not rise" in f.message


@pytest.mark.parametrize("r", [0.5, COLLAPSE_R / 3, None])
def test_diverged_message_never_contradicts_its_number(r):
    ev = make(pre_event_r=r)
    (f,) = F.diverged(ev, decide(ev))
    low = f.message.lower()
    if r is not None and r < COLLAPSE_R:
        assert "o(1)" not in low and "healthy" not in low and "tracked" not in low
        assert "low" in low
    assert f.evidence["median_r_before"] == r


def test_collapse_message_states_depth_only_when_it_decided():
    shallow = make(collapses=[_collapse(False)])
    (f,) = [x for x in F.collapse(shallow, decide(shallow)) if x.id == "AD101"]
    assert "shallow" in f.message and "stale v" in f.message
    deep = make(collapses=[_collapse(True)])
    (f,) = [x for x in F.collapse(deep, decide(deep)) if x.id == "AD101"]
    assert "√v̂" in f.message and "x down" in f.message


@pytest.mark.parametrize("r", [0.3, None])
def test_shrunken_v_message_states_its_numbers(r):
    ev = make(vhat_fall=DEEP_FALL, pre_event_r=r)
    (f,) = [x for x in F.shrunken_v(ev) if x.id == "AD101"]
    assert "fell to 0.0011 of its peak at step 100" in f.message and "√v̂ 30x down" in f.message
    assert ("tracked" in f.message) == (r is not None) and "healthy" not in f.message.lower()
    assert f.step == DEEP_FALL.deep_step and f.evidence["sqrt_vhat_fall"] == 30.0


def test_loss_only_names_where_the_checkpoints_are():
    """AD901 says why the checkpoints do not count: all after the blowup, or only one before it."""
    after = make(trajectories=[], pre_event_r=None, checkpoints=[SimpleNamespace(step=1000)])
    (f,) = F.loss_only(after)
    assert "from before it (the checkpoints are from step 1000, after it)" in f.message
    one = make(trajectories=[], pre_event_r=None, checkpoints=[SimpleNamespace(step=800), SimpleNamespace(step=1000)])
    (f,) = F.loss_only(one)
    assert "a second optimizer checkpoint from before it (only step 800 is)" in f.message
    (f,) = F.loss_only(make(trajectories=[]))
    assert "or optimizer checkpoints:" in f.message


def test_too_few_loss_points_says_how_to_log_more():
    # HF Trainer's default logging_steps=500 leaves a short run 1-4 points: the finding names the setting
    (f,) = F.missing_data(make(n_loss_points=3, n_loss_rows=3), ["train/loss"])
    assert f.id == "AD901" and "only 3 loss points in 'train/loss'" in f.message and "logging_steps" in f.message


def test_a_recovered_run_after_a_deep_collapse_gets_the_eps_fix_worded_for_its_spike():
    from adamdiag.analysis.recommend import recommend

    ev = make(events=LossEvents(spikes=[400]), event_step=400, collapses=[_collapse(True)])
    d = decide(ev)
    assert (d.verdict, d.alternative) == ("healthy", "v_collapse")
    rec = recommend(ev, d, "run", [])
    assert rec is not None and rec["action"] == "increase eps"
    assert rec["message"].startswith("the run recovered this time") and "before the spike" in rec["message"]
    assert "blowup to size" not in rec["message"]
    # a healthy run without that alternative gets no recommendation
    quiet = make(events=QUIET, event_step=None)
    assert recommend(quiet, decide(quiet), "run", []) is None
