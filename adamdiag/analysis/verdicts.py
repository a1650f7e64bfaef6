"""The verdict: an ordered table of rules over :class:`~adamdiag.analysis.evidence.Evidence`.

The first rule that matches decides the verdict; each rule names the evidence it needs, and says how
sure it is (``confidence``) and which other cause also fits (``alternative``). The order encodes
the mechanism (docs/architecture.md):

1. non-finite optimizer state outranks everything (training put NaN/Inf into m or v);
2. a non-finite loss (or gradient norm) with no blowup before it is ``nonfinite``;
3. too little data, or not an Adam run: ``inconclusive``; so is a loss that rose 10x in its first
   points, before it had a level to rise from (and nothing blew up later);
4. a one-step gradient jump that is gone at the next step (one batch) with no quiet stretch
   before it: ``bad_batch``;
5. a blowup after a quiet stretch that reaches it — v lived on the memory of old gradients — is
   ``v_collapse``: deep (√v̂ ≥ 10x down) → high confidence on exact data; long but shallow → still
   a stale v (lowering lr only moves the instability later: the adaptive edge of stability), medium
   confidence with ``lr_too_high`` as the alternative, and the replay that separates them proposed
   (a shallow stretch counts in the all-parameter trajectory when there is one:
   :meth:`~adamdiag.analysis.evidence.Evidence.stale_collapses`);
   a gradient jump *after* such a stretch is the collapse's re-growth, not a bad batch;
6. a one-step gradient jump without a quiet stretch: ``bad_batch`` (the jump did not settle at once,
   so with lower confidence);
7. a blowup with no gradient data and fewer than two optimizer checkpoints from before it (one taken
   after the blowup shows what it left, not what led to it): ``inconclusive``;
8. no gradient norm logged and a recovered loss spike that is one point ≥ 10x both neighbours, back at its
   level at the next: ``bad_batch`` (low: the loss alone shows it); no loss event at all but a ≥10x one-step
   jump of the logged gradient norm, back at the next step: ``bad_batch`` (medium: the loss did not react);
9. recovered spikes only: ``healthy`` (warnings say what preceded them); medium when one reached 10x at a point
   whose next 10 steps are not logged (the log cannot tell it from a blowup that held);
10. a blowup after spike cycles — over v's memory most steps quiet (r < 0.1), ≥ 2 recovered spikes, the logged lr
    not rising: ``v_collapse`` (medium, ``lr_too_high`` beside it): the adaptive edge of stability cycling;
11. any other blowup: ``lr_too_high``;
12. otherwise ``healthy`` (eps_too_large is decided on checkpoints afterwards, in the findings); a healthy run
    whose loss ended ≥ 2x above where it started is healthy with low confidence, ``lr_too_high`` beside it
    (AD003); one with a per-task loss that blew up beside the total (an AD001 warning) at most medium.

Confidence: ``high`` = one rule matched on exact evidence (or a replay verified it); ``medium`` = an
alternative also fits; ``low`` = approximate or partial evidence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from adamdiag.analysis.evidence import Evidence
from adamdiag.analysis.thresholds import COLLAPSE_R, MIN_LOSS_POINTS, SPIKE_CYCLE_MIN_SPIKES, SPIKE_CYCLE_QUIET_SHARE


@dataclass
class Decision:
    """What the first matching rule says."""

    verdict: str
    rule: str
    confidence: str  # high | medium | low
    alternative: str | None = None


@dataclass
class VerdictRule:
    name: str
    needs: str  # the evidence the rule reads (documentation; shown by `python -m adamdiag.analysis.verdicts`)
    decide: Callable[[Evidence], Decision | None]


def _exact(ev: Evidence) -> bool:
    return any(t.exact for t in ev.trajectories) or bool(ev.checkpoints)


def _nonfinite_state(ev: Evidence) -> Decision | None:
    if any(p.kind == "nonfinite" for p in ev.state_problems):
        return Decision("nonfinite", "nonfinite_state", "high")
    return None


def _nonfinite_loss(ev: Evidence) -> Decision | None:
    e = ev.events
    if e.first_nonfinite_step is not None and e.blowup_step is None:
        return Decision("nonfinite", "nonfinite_loss", "high")
    return None


def _no_data(ev: Evidence) -> Decision | None:
    if ev.loss_tag is None:
        return Decision("inconclusive", "no_loss", "low")
    if ev.n_loss_points < MIN_LOSS_POINTS:
        return Decision("inconclusive", "too_few_points", "low")
    if ev.non_adam and ev.event_step is not None:
        return Decision("inconclusive", "not_adam", "low")
    return None


def _unbased_rise(ev: Evidence) -> Decision | None:
    # The loss rose a decade above its starting level and held it before there were MIN_BASELINE_POINTS
    # points to measure a level from, and nothing blew up later: a run that diverged in its first steps,
    # or a first point that was no level (an eval-like curve starting near zero). Not healthy, not a cause.
    if ev.blowup_step is None and ev.events.unbased_rise_step is not None:
        return Decision("inconclusive", "unbased_rise", "low")
    return None


def _one_batch(ev: Evidence) -> Decision | None:
    j = ev.grad_jump
    if j is None or not j.get("isolated"):
        return None
    if ev.collapses:
        return Decision("bad_batch", "one_batch", "medium", alternative="v_collapse")
    return Decision("bad_batch", "one_batch", "high")


def _collapse(ev: Evidence) -> Decision | None:
    if ev.blowup_step is None or not ev.collapses:
        return None
    deep = ev.deep_collapses()
    if deep:
        exact = any(c.exact for c in deep)
        return Decision("v_collapse", "deep_collapse", "high" if exact else "low")
    stale = ev.stale_collapses()
    if not stale:
        return None
    exact = any(c.exact for c in stale)
    return Decision("v_collapse", "stale_v", "medium" if exact else "low", alternative="lr_too_high")


def _gradient_jump(ev: Evidence) -> Decision | None:
    if ev.grad_jump is None:
        return None
    return Decision("bad_batch", "gradient_jump", "low", alternative="lr_too_high")


def _batch_loss_blowup(ev: Evidence) -> Decision | None:
    # No gradient norm logged, the loss logged every step, and the blowup's first point is one batch's own
    # loss a decade above both neighbours (evidence.blowup_batch_spike): the model the next batch met was
    # fine, the batch was not — the climb after it is what its update did to the weights, which no eps or lr
    # fix removes. Loss-only evidence: medium; low with a v collapse before it (a stale v can amplify what
    # a batch does, so that cause stays the alternative).
    if ev.blowup_step is None or ev.blowup_batch_spike is None:
        return None
    if ev.collapses:
        return Decision("bad_batch", "batch_loss_blowup", "low", alternative="v_collapse")
    return Decision("bad_batch", "batch_loss_blowup", "medium")


def _no_mechanism_data(ev: Evidence) -> Decision | None:
    if ev.blowup_step is not None and not ev.has_mechanism_data:
        return Decision("inconclusive", "loss_only", "low")
    return None


def _one_point_spike(ev: Evidence) -> Decision | None:
    # No blowup, no gradient norm logged, and a recovered spike that is one logged point a decade above both
    # neighbours with the next point back at the level before: one batch's own loss (the model the next batch
    # met was as good as before) — a bad batch seen by the loss alone, so low confidence.
    if ev.blowup_step is None and ev.one_point_spike is not None:
        return Decision("bad_batch", "one_point_spike", "low")
    return None


def _absorbed_batch(ev: Evidence) -> Decision | None:
    # No loss event at all, but the logged gradient norm jumped ≥10x for one step and was back at the next:
    # the bad-batch signature with a loss that did not react (Adam absorbed the batch). The run is not damaged;
    # it did meet a bad batch — medium: the loss half of the signature is missing.
    if ev.event_step is None and ev.absorbed_jump is not None:
        return Decision("bad_batch", "absorbed_batch", "medium")
    return None


def _recovered(ev: Evidence) -> Decision | None:
    if ev.event_step is not None and ev.blowup_step is None:
        if ev.deep_collapses():
            # The spikes followed a deep v collapse (AD101, warning): the run recovered this time, but the
            # mechanism that blows runs up is in place — on the out-of-family warm-restart runs the live
            # loss did blow up between two logged points and an eps fix avoided it. Healthy is the outcome
            # the log shows, not a clean bill: medium, a v collapse the alternative.
            return Decision("healthy", "recovered_spikes", "medium", alternative="v_collapse")
        if ev.unresolved_spike is not None and ev.end_climb is None and _sure(ev) == "high":
            # A spike ≥ 10x at a point whose next BLOWUP_PERSIST steps are not logged: the log cannot show whether
            # it held like a blowup (the relogged matrix at every 100 steps: v-collapse blowups that held 40 steps
            # and were over by the next point read healthy, high). Healthy is what the log shows, not a sure bill.
            return Decision("healthy", "recovered_spikes", "medium")
        return _healthy_unless_worse(ev, Decision("healthy", "recovered_spikes", _sure(ev)))
    return None


def _shrunken_v(ev: Evidence) -> Decision | None:
    # No quiet stretch, but the mean v̂ fell by ≥ 1/COLLAPSE_DEPTH from its peak before the blowup: v
    # tracked gradients that shrank near an optimum, so the per-element step lr/√v̂ grew ≥ 10x — the
    # v-collapse mechanism without the staleness (eps caps lr/√v̂; a smaller lr only delays the edge
    # of stability). Both causes fit: medium, and the recommendation's replay tries both fixes.
    f = ev.vhat_fall
    if ev.blowup_step is None or f is None or not f.deep:
        return None
    return Decision("v_collapse", "shrunken_v", "medium", alternative="lr_too_high")


def _spike_cycles(ev: Evidence) -> Decision | None:
    # Quiet before the blowup (r < COLLAPSE_R) but no single stretch long enough to make v stale: over v's
    # memory most steps were quiet, the run spiked and recovered ≥ SPIKE_CYCLE_MIN_SPIKES times, and the logged
    # lr did not rise — the adaptive edge of stability cycling (v decays, the loss spikes, v is lifted, decays
    # again) until a spike does not recover. eps caps lr/√v̂; a smaller lr moves the limit, not the cycle.
    # Medium: the replay tries both. A warm-up (the lr rose) or an unlogged lr stays diverged.
    c = ev.spike_cycles
    if ev.blowup_step is None or c is None or ev.pre_event_r is None or not ev.pre_event_r < COLLAPSE_R:
        return None
    if c["lr_rose"] or c["quiet_share"] < SPIKE_CYCLE_QUIET_SHARE or len(c["spikes"]) < SPIKE_CYCLE_MIN_SPIKES:
        return None
    return Decision("v_collapse", "spike_cycles", "medium", alternative="lr_too_high")


def _lr_too_high(ev: Evidence) -> Decision | None:
    if ev.blowup_step is None:
        return None
    if ev.pre_event_r is not None and ev.pre_event_r < COLLAPSE_R:
        # Quiet before the blowup, but not for long enough to make v stale: both causes fit.
        return Decision("lr_too_high", "diverged", "medium", alternative="v_collapse")
    exact = any(t.exact for t in ev.trajectories) and ev.pre_event_r is not None
    return Decision("lr_too_high", "diverged", "high" if exact else "low")


def _healthy(ev: Evidence) -> Decision | None:
    return _healthy_unless_worse(ev, Decision("healthy", "no_event", _sure(ev)))


def _sure(ev: Evidence) -> str:
    return "high" if ev.has_mechanism_data else "low"


def _healthy_unless_worse(ev: Evidence, d: Decision) -> Decision:
    # Nothing blew up by the 10x rule, but the loss ended ≥ 2x above where it started (evidence.end_climb): a
    # run that got worse than it started is no clean bill — a climb that stayed under a decade (a warm-up to an
    # lr too high, logged sparsely) looks like this; so does a loss that grows by design (a GAN generator's, an
    # annealed KL term). Healthy is what the 10x rule says, with low confidence and lr_too_high beside it.
    if ev.end_climb is not None:
        return Decision("healthy", d.rule, "low", alternative="lr_too_high")
    if d.confidence == "high" and any(e.blowup_step is not None for e in ev.task_events.values()):
        # A per-task loss beside the total blew up (an AD001 warning): the total may hide a head's blowup (issue
        # 14's multi-task report), so the clean bill is not a sure one. On the matrix (groups 0-30, 180, 190) 3 of
        # the 10 runs read healthy-high with a task blowup were blowups of the total by the labeller; 0 of 130
        # healthy-high runs without one.
        return Decision("healthy", d.rule, "medium", alternative=d.alternative)
    return d


RULES: list[VerdictRule] = [
    VerdictRule("nonfinite_state", "checkpoints: NaN/Inf in m or v", _nonfinite_state),
    VerdictRule("nonfinite_loss", "loss: a non-finite value with no blowup or spike before it", _nonfinite_loss),
    VerdictRule("no_data", "loss tag and point count; checkpoints of another optimizer", _no_data),
    VerdictRule(
        "unbased_rise",
        "loss: a 10x rise that held and never came back, with < 5 points before it and no blowup later",
        _unbased_rise,
    ),
    VerdictRule("one_batch", "gradient norm: a ≥10x one-step jump at the event, gone at the next point", _one_batch),
    VerdictRule(
        "batch_loss_blowup",
        "loss every step, no gradient norm: the blowup's first point ≥10x both neighbours (one batch's loss)",
        _batch_loss_blowup,
    ),
    VerdictRule(
        "collapse",
        "r = g²/v̂ from logs or checkpoints: a quiet stretch reaching the blowup (shallow: all parameters)",
        _collapse,
    ),
    VerdictRule("gradient_jump", "gradient norm: a ≥10x one-step jump at the event", _gradient_jump),
    VerdictRule(
        "loss_only",
        "a blowup, no gradient data and < 2 optimizer checkpoints before it",
        _no_mechanism_data,
    ),
    VerdictRule(
        "one_point_spike",
        "loss, no gradient norm: a recovered spike one point ≥10x both neighbours, back at its level next",
        _one_point_spike,
    ),
    VerdictRule(
        "absorbed_batch",
        "gradient norm, no loss event: a ≥10x one-step jump, back at the next step (the loss did not react)",
        _absorbed_batch,
    ),
    VerdictRule("recovered_spikes", "loss: spikes that recovered, no blowup", _recovered),
    VerdictRule("shrunken_v", "mean v̂ from logs or checkpoints: ≥ 100x below its peak before the blowup", _shrunken_v),
    VerdictRule(
        "spike_cycles",
        "r low before the blowup; over v's memory most steps quiet, ≥ 2 recovered spikes, the logged lr not rising",
        _spike_cycles,
    ),
    VerdictRule("diverged", "a blowup without a quiet stretch before it", _lr_too_high),
    VerdictRule("healthy", "nothing blew up", _healthy),
]


def v_collapse_warning_step(ev: Evidence, d: Decision) -> int | None:
    """Where the evidence of a ``v_collapse`` decision begins (the report's ``warning_step``): for
    ``shrunken_v`` the first point at which v̂ was ≤ COLLAPSE_DEPTH of its peak, else the quiet stretch's
    warning step (deep stretches first). None for any other verdict. scan and the live monitor (at a fed
    loss's blowup) both take it from here."""
    if d.verdict != "v_collapse":
        return None
    if d.rule == "shrunken_v" and ev.vhat_fall is not None:
        return ev.vhat_fall.deep_step
    if d.rule == "spike_cycles" and ev.spike_cycles is not None:
        return int(ev.spike_cycles["spikes"][0])
    return ev.collapse_warning_step()


def decide(ev: Evidence) -> Decision:
    """The first matching rule's decision (the last rule always matches)."""
    for rule in RULES:
        d = rule.decide(ev)
        if d is not None:
            return d
    raise AssertionError("the last verdict rule always matches")  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover - prints the rule table for the docs
    for i, r in enumerate(RULES, 1):
        print(f"{i}. {r.name}: {r.needs}")
