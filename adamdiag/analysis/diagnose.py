"""The diagnosis: v collapse vs its look-alikes, from whatever a run offers.

Pure: frames and checkpoint summaries in, a :class:`~adamdiag.results.report.RunReport` out, in three
steps that each live in their own module:

1. **evidence** (:mod:`.evidence`) — the loss events (when), and the second-moment facts (why):
   quiet stretches of r = g²/v̂ with their length and depth, re-growth, update RMS, a one-step
   gradient jump, non-finite or non-Adam state, the replay start checkpoint;
2. **verdict** (:mod:`.verdicts`) — an ordered table of rules, the first match wins, each with its
   confidence and the alternative cause that also fits;
3. **findings and recommendation** (:mod:`.findings`, :mod:`.recommend`) — one function per finding,
   messages that quote their own evidence; the fix sized from the start checkpoint, with the replay
   command that separates the candidate causes.

Every threshold is in :mod:`.thresholds` with its reason.
"""

from __future__ import annotations

from adamdiag.analysis import findings as F
from adamdiag.analysis.evidence import (  # re-exported: the monitor and tests use these names
    Evidence,
    RunInputs,
    Trajectory,
    collapse_stretch,
    gather,
    reconstruct,
    tags_of,
)
from adamdiag.analysis.recommend import recommend
from adamdiag.analysis.tags import (
    GRAD_NORM_TAGS,
    LOSS_TAGS,
    pick_grad_norm_tag,
    pick_loss_tag,
    pick_tag,
    pick_task_loss_tags,
)
from adamdiag.analysis.thresholds import MIN_LOSS_POINTS
from adamdiag.analysis.verdicts import Decision, decide, v_collapse_warning_step
from adamdiag.results.report import Finding, RunReport

__all__ = [
    "GRAD_NORM_TAGS",
    "LOSS_TAGS",
    "RunInputs",
    "Trajectory",
    "collapse_stretch",
    "diagnose",
    "pick_tag",
    "reconstruct",
]


def live_event_files(inp: RunInputs) -> list[str]:
    """File names of the event files still being written at the run's end: the last segment's, and every
    file whose scalars reach into it — a second writer beside the run's (the live monitor's own event
    file) appends at the same time, and its cut-short last record is "in progress" too."""
    s = inp.scalars
    if s is None or not len(s) or "segment" not in s.columns or "source_file" not in s.columns:
        return []
    start = s.loc[s["segment"] == s["segment"].max(), "wall_time"].min()
    ends = s.groupby("source_file")["wall_time"].max()
    return sorted(str(f).rsplit("/", 1)[-1] for f, t in ends.items() if t >= start)


def _resolve_tags(
    tags: list[str], loss_tags: list[str] | None, grad_norm_tag: str | None, counts: dict[str, int] | None = None
) -> tuple[list[str], str | None, list[Finding]]:
    """The loss tags and gradient-norm tag to use: the user's when given (a missing one is a finding,
    never a silent fallback to another tag), else the shared auto-pick."""
    problems = []
    if loss_tags:
        lt = [t for t in loss_tags if t in tags]
        for t in loss_tags:
            if t not in tags:
                problems.append(Finding("AD901", "warning", f"--loss-tag '{t}' is not a scalar tag of this run"))
        if loss_tags[0] not in tags:
            lt = []  # the total loss is missing: no blowup step can be set from a per-task tag
    else:
        auto = pick_loss_tag(tags, counts)
        lt = [auto, *pick_task_loss_tags(tags, auto)] if auto else []
    if grad_norm_tag is not None:
        gn = grad_norm_tag if grad_norm_tag in tags else None
        if gn is None:
            problems.append(
                Finding("AD901", "warning", f"--grad-norm-tag '{grad_norm_tag}' is not a scalar tag of this run")
            )
    else:
        gn = pick_grad_norm_tag(tags)
    return lt, gn, problems


def diagnose(inp: RunInputs, *, loss_tags: list[str] | None = None, grad_norm_tag: str | None = None) -> RunReport:
    """Diagnose one run. ``loss_tags[0]`` is the total loss (it sets ``blowup_step``); further tags
    are per-task losses whose events become findings naming them."""
    tags = tags_of(inp)
    # logged steps per tag, for the choice between Lightning's <name>_step and <name>_epoch
    counts = None if inp.scalars is None or not len(inp.scalars) else inp.scalars.groupby("tag")["step"].nunique()
    lt, gn, tag_problems = _resolve_tags(tags, loss_tags, grad_norm_tag, None if counts is None else counts.to_dict())
    if not loss_tags and len(lt) > 1 and inp.scalars is not None:
        # an auto-picked per-task tag must be a curve: HF Trainer's end-of-training summary
        # `train/train_loss` is one number beside `train/loss`
        counts = inp.scalars["tag"].value_counts()
        lt = [lt[0], *(t for t in lt[1:] if counts.get(t, 0) >= MIN_LOSS_POINTS)]
    ev = gather(inp, lt, gn, task_tags_named=bool(loss_tags))
    d = decide(ev)
    rep = RunReport(
        run=inp.run,
        verdict=d.verdict,
        convention=inp.convention,
        warnings=list(inp.warnings),
        confidence=d.confidence,
        alternative=d.alternative,
        loss_tag=ev.loss_tag,
        loss_tags=list(ev.loss_tags),
        grad_norm_tag=gn,
    )
    if inp.scalars is not None and len(inp.scalars):
        rep.sources.append("scalars")
    if inp.histograms is not None and len(inp.histograms):
        rep.sources.append("histograms")
    if ev.checkpoints:
        rep.sources.append("checkpoints")
    if any(t.source == "monitor" for t in ev.trajectories):
        rep.sources.append("monitor")  # the most exact source: r and v̂ as the optimizer had them
    rep.findings += F.input_problems(inp.warnings, live_event_files(inp)) + tag_problems + F.non_adam(ev)
    if d.rule in ("no_loss", "too_few_points"):
        rep.findings += F.missing_data(ev, tags)
        return rep
    rep.findings += (
        F.missing_data(ev, tags) + F.loss_rebuilt(ev) + F.epoch_axis(ev) + F.loss_events(ev) + F.nonfinite(ev)
    )
    _verdict_findings(rep, ev, d)
    rep.findings += F.update_rms(ev)
    eps_findings, eps_too_large = F.eps_dominance(ev, inp.scalars, rep.verdict)
    rep.findings += eps_findings
    if eps_too_large:
        d = Decision("eps_too_large", "eps_dominated", "medium")
        rep.verdict, rep.confidence = d.verdict, d.confidence
    if rep.verdict in ("healthy", "eps_too_large"):
        # (an absorbed one-batch jump is no longer healthy: rule absorbed_batch, AD301 through F.bad_batch)
        rep.findings += F.collapse_in_progress(ev, ev.beta2)
    rep.findings += F.data_quality(ev, tags)
    named = [c.label for c in ev.collapses if c.label != "global"]
    rep.recommendation = recommend(ev, d, inp.run, named)
    return rep


def _verdict_findings(rep: RunReport, ev: Evidence, d: Decision) -> None:
    """The blowup and warning steps, and the findings, that belong to the decided verdict."""
    rep.blowup_step = ev.blowup_step
    if d.verdict == "bad_batch":
        rep.blowup_step = ev.event_step
        rep.warning_step = ev.grad_jump["step"] if ev.grad_jump else None
        if d.rule == "one_point_spike" and ev.one_point_spike is not None:
            rep.blowup_step = ev.one_point_spike["step"]
        elif d.rule == "absorbed_batch" and ev.absorbed_jump is not None:
            rep.blowup_step = rep.warning_step = ev.absorbed_jump["step"]
        rep.findings += F.bad_batch(ev, d)
    elif d.rule == "shrunken_v" and ev.vhat_fall is not None:
        rep.blowup_step = ev.event_step
        rep.warning_step = v_collapse_warning_step(ev, d)
        rep.findings += F.shrunken_v(ev)
    elif d.rule == "spike_cycles" and ev.spike_cycles is not None:
        rep.blowup_step = ev.event_step
        rep.warning_step = v_collapse_warning_step(ev, d)
        rep.findings += F.spike_cycles(ev)
    elif d.verdict == "v_collapse":
        rep.blowup_step = ev.event_step
        rep.warning_step = v_collapse_warning_step(ev, d)
        rep.findings += F.collapse(ev, d)
    elif d.rule == "loss_only":
        rep.findings += F.loss_only(ev)
    elif d.rule == "recovered_spikes":
        rep.findings += F.recovered_after_collapse(ev)
    elif d.verdict == "nonfinite":
        nf = [s for s in [ev.events.first_nonfinite_step] + [p.step for p in ev.state_problems] if s is not None]
        rep.blowup_step = ev.blowup_step if ev.blowup_step is not None else min(nf, default=None)
    elif d.verdict == "lr_too_high":
        rep.blowup_step = ev.event_step
        rep.warning_step = F.lr_warning_step(ev)
        rep.findings += F.diverged(ev, d)
