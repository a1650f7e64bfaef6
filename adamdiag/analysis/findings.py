"""One function per finding: evidence (and the decision) in, :class:`Finding` objects out.

Messages quote the evidence they stand on, and never contradict a rule: a number the collapse rule
calls quiet (r < COLLAPSE_R) is never described as "O(1)" or "healthy" (a test renders every finding
of real runs and checks each message against its evidence).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from adamdiag.analysis.evidence import (
    Collapse,
    Evidence,
    collapse_stretch,
    first_instability,
    frac_live,
    series_arrays,
)
from adamdiag.analysis.fastai_logs import SMOOTH_BETA
from adamdiag.analysis.thresholds import (
    CHECKPOINTS_PAST_LOG_FACTOR,
    COLLAPSE_DEPTH,
    COLLAPSE_R,
    EPS_BOUND_FACTOR,
    EPS_DOMINATED_FRACTION,
    EPS_PROGRESS_SEGMENTS,
    EPS_STALLED_PROGRESS,
    MAX_EVIDENCE_ITEMS,
    MAX_NAMES_SHOWN,
    MAX_REGROWTH_LISTED,
    MAX_RMS_LISTED,
    MAX_SPIKES_LISTED,
    MAX_TAGS_EVIDENCE,
    MAX_TAGS_SHOWN,
    MIN_BASELINE_POINTS,
    MIN_LOSS_POINTS,
)
from adamdiag.analysis.verdicts import Decision
from adamdiag.results.report import Finding, Severity


def name_list(names: list[str], shown: int = MAX_NAMES_SHOWN) -> str:
    """'a, b, c and 5 more' — findings stay one line however many tensors collapsed."""
    head = ", ".join(f"`{n}`" for n in names[:shown])
    return head + (f" and {len(names) - shown} more" if len(names) > shown else "") if names else "no tensor"


def _where(label: str) -> str:
    return "all parameters" if label == "global" else label


# What the reader says of a record cut short by the end of a file (adamdiag.io.tfrecord).
TRUNCATED_TAIL = "truncated record at byte"


def input_problems(warnings: list[str], live_files: list[str] | None = None) -> list[Finding]:
    """AD902: every input problem, not only the first. A record cut short at the end of an event file
    still being written at the run's end (``live_files``: the newest segment's, and a second writer's
    beside it) is what a writer that is still writing (or was killed mid-write) leaves: an info "in
    progress", not damage — the records before it are all there."""
    out = []
    for name in live_files or []:
        tail = [w for w in warnings if TRUNCATED_TAIL in w and name in w]
        if tail:
            warnings = [w for w in warnings if w not in tail]
            out.append(
                Finding(
                    "AD902",
                    "info",
                    f"the last record of {name} is incomplete: the run is still being written (in progress) "
                    "or its writer stopped mid-record; every record before it was read",
                    evidence={"warnings": tail, "in_progress": True},
                )
            )
    if not warnings:
        return out
    shown = "; ".join(warnings[:MAX_NAMES_SHOWN])
    more = f" (and {len(warnings) - MAX_NAMES_SHOWN} more)" if len(warnings) > MAX_NAMES_SHOWN else ""
    return out + [
        Finding(
            "AD902",
            "warning",
            f"{len(warnings)} input problem(s): {shown}{more}",
            evidence={"warnings": warnings[:MAX_EVIDENCE_ITEMS]},
        )
    ]


def non_adam(ev: Evidence) -> list[Finding]:
    """AD903: a checkpoint of another optimizer; the diagnosis claims no Adam facts from it."""
    return [
        Finding(
            "AD903",
            "warning",
            f"not a plain Adam/AdamW optimizer: {what}; adamdiag diagnoses Adam's second moment, so no "
            "v-based evidence is used for this run",
        )
        for what in ev.non_adam[:MAX_NAMES_SHOWN]
    ]


def missing_data(ev: Evidence, tags: list[str]) -> list[Finding]:
    """AD901: no loss tag, too few points, or a rise with too few points before it."""
    if ev.loss_tag is None:
        return [
            Finding(
                "AD901",
                "warning",
                f"no loss scalar found (tags: {', '.join(tags[:MAX_TAGS_SHOWN]) or 'none'}); name it with --loss-tag",
                evidence={"tags": tags[:MAX_TAGS_EVIDENCE]},
            )
        ]
    if ev.n_loss_points < MIN_LOSS_POINTS:
        rows = ev.n_loss_rows or 0
        if ev.n_loss_points == 1 and rows > 1:
            msg = (
                f"'{ev.loss_tag}' holds {rows} values, all at one step: the writer was given no step "
                "(add_scalar(tag, value, global_step)), so the points have no order to diagnose; log the "
                "optimizer step with each value"
            )
        else:
            # the frameworks' defaults log rarely: HF Trainer every 500 steps (each point a 500-step mean)
            more = (
                (f" ({rows} values)" if rows > ev.n_loss_points else "")
                + ": log the loss more often (HF Trainer's logging_steps, default 500; Lightning's log_every_n_steps, default 50)"
            )
            what = "steps" if rows > ev.n_loss_points else "points"
            msg = f"only {ev.n_loss_points} loss {what} in '{ev.loss_tag}'{more}"
        return [Finding("AD901", "warning", msg, evidence={"steps": ev.n_loss_points, "values": rows or None})]
    rise = ev.events.unbased_rise_step
    if rise is not None:
        return [
            Finding(
                "AD901",
                "warning",
                f"the loss rose at step {rise} with fewer than {MIN_BASELINE_POINTS} points before the rise: "
                "too few points before the rise to call it a blowup",
                step=rise,
                evidence={"tag": ev.loss_tag, "min_baseline_points": MIN_BASELINE_POINTS},
            )
        ]
    return []


def loss_rebuilt(ev: Evidence) -> list[Finding]:
    """AD603: a Keras running-mean loss was turned back into per-batch losses (or kept raw: why); AD605 the same
    for fastai's smoothed loss; AD606: Detectron2's running medians, read as logged (one finding for all)."""
    out = []
    medians = [r for r in ev.loss_rebuilt if r.get("kind") == "median"]
    if medians:
        w = medians[0]["window"]
        names = ", ".join(f"'{r['tag']}'" for r in medians[:MAX_NAMES_SHOWN])
        more = f" and {len(medians) - MAX_NAMES_SHOWN} more" if len(medians) > MAX_NAMES_SHOWN else ""
        msg = (
            f"{names}{more} logged by Detectron2's writers as the median of the last {w} iterations (not invertible): "
            f"a spike of fewer than {w // 2} iterations — one bad batch — never shows, and a blowup shows up to "
            f"~{w // 2} iterations after it began"
        )
        out.append(Finding("AD606", "info", msg, evidence={"tags": [r["tag"] for r in medians], "window": w}))
    for r in ev.loss_rebuilt:
        if r.get("kind") == "median":
            continue
        if r.get("kind") == "fastai-smoothed":
            msg = (
                f"'{r['tag']}' is fastai's smoothed loss (a debiased moving average, β {SMOOTH_BETA:g}): per-batch "
                "losses reconstructed before detection"
                if r["reconstructed"]
                else f"'{r['tag']}' looks like fastai's smoothed loss but was kept raw: {r['reason']}"
            )
            out.append(Finding("AD605", "info", msg, evidence=r))
            continue
        if r["reconstructed"]:
            msg = (
                f"'{r['tag']}' is Keras' running mean since the start of the epoch: per-batch losses reconstructed "
                f"before detection ({r['reason']})"
            )
        else:
            msg = f"'{r['tag']}' looks like Keras' running mean but was kept raw: {r['reason']}"
        out.append(Finding("AD603", "info", msg, evidence=r))
    return out


def epoch_axis(ev: Evidence) -> list[Finding]:
    """AD604 (info): Keras' epoch_* points moved from the epoch index to the iteration axis."""
    a = ev.epoch_axis
    if not a:
        return []
    return [
        Finding(
            "AD604",
            "info",
            f"Keras logged {', '.join(repr(t) for t in a['moved'][:MAX_NAMES_SHOWN])} per epoch at the epoch index; "
            f"its checkpoints count optimizer iterations ({a['updates_per_epoch']:g} per epoch, from "
            f"'{a['tag']}'): each epoch's point is placed at its last iteration, so steps here are iterations",
            evidence=a,
        )
    ]


def loss_events(ev: Evidence) -> list[Finding]:
    """AD001 (blowup; its peak with its own step) and AD002 (recovered spikes), for the total loss and
    every per-task loss tag."""
    out = []
    for tag, e, total in [(ev.loss_tag, ev.events, True)] + [(t, e, False) for t, e in ev.task_events.items()]:
        b = e.blowup_step
        where = "" if total else f" in '{tag}'"
        # An auto-picked part of the total (not named by the user) is reported when it blows up, as a
        # warning: it names the head that went first, without failing a gate on an auxiliary term.
        quiet_part = not total and not ev.task_tags_named
        severity: Severity = "warning" if quiet_part else "error"
        tb = ev.events.blowup_step
        if quiet_part and b is not None and tb is not None and b >= tb:
            continue  # went with (or after) the total: nothing the total's AD001 does not say already
        if b is not None:
            msg = f"loss{where} blew up at step {b}"
            if e.pre_level is not None:
                msg += f": {e.pre_level:.4g} → peak {e.peak:.4g} at step {e.peak_step}"
            out.append(
                Finding(
                    "AD001",
                    severity,
                    msg,
                    step=b,
                    evidence={
                        "tag": tag,
                        "pre_level": e.pre_level,
                        "peak": e.peak,
                        "peak_step": e.peak_step,
                        "best_step": e.best_step,
                        "total": total,
                    },
                )
            )
        unresolved = ev.unresolved_spike if total else None
        for s in [] if quiet_part else e.spikes[:MAX_SPIKES_LISTED]:
            msg = f"loss{where} spike at step {s} (recovered)"
            if unresolved is not None and unresolved["spike"] == s:
                u = unresolved
                gap = f"the next {u['unlogged']} steps are not logged" if u["unlogged"] is not None else "the log ends"
                msg += (
                    f"; it reached {u['ratio']:.3g}x its level at step {u['step']} and {gap}: a blowup that held "
                    "there would look the same"
                )
            out.append(Finding("AD002", "warning", msg, step=s, evidence={"tag": tag}))
    c = ev.end_climb
    if c is not None:
        out.append(
            Finding(
                "AD003",
                "warning",
                f"the loss ended {c['ratio']:.3g}x above where it started ({c['start']:.4g} at the first logged points "
                f"→ {c['end']:.4g} from step {c['end_step']} on): no 10x blowup, but the run got worse than it "
                "started — an lr too high for this model is the usual cause (a loss that grows by design, e.g. a "
                "GAN generator's, also does this)",
                step=c["end_step"],
                evidence={"tag": ev.loss_tag, **c},
            )
        )
    return out


def nonfinite(ev: Evidence) -> list[Finding]:
    """AD401: NaN/Inf in the loss, the gradient norm or the saved m/v (an info for gradient-norm overflows that
    loss scaling skipped); AD403: impossible state."""
    out = []
    nf_state = [p for p in ev.state_problems if p.kind == "nonfinite"]
    e = ev.events
    if e.first_nonfinite_step is not None or nf_state:
        steps = [s for s in [e.first_nonfinite_step] + [p.step for p in nf_state] if s is not None]
        nf = min(steps)
        where = f" in the optimizer state of {name_list([p.tensor for p in nf_state])}" if nf_state else ""
        out.append(
            Finding(
                "AD401",
                "error",
                f"non-finite values (NaN/Inf) from step {nf}{where}",
                step=nf,
                evidence={"tag": ev.loss_tag, "state": [vars(p) for p in nf_state[:MAX_EVIDENCE_ITEMS]]},
            )
        )
    if ev.overflow_steps:
        k = ev.overflow_steps
        out.append(
            Finding(
                "AD401",
                "info",
                f"the gradient norm '{ev.grad_norm_tag}' was non-finite at {len(k)} logged step(s) ("
                + (f"{k[0]}…{k[-1]}" if len(k) > 1 else f"{k[0]}")
                + ") while the loss stayed finite and training went on: steps that mixed-precision loss scaling "
                "skipped (an overflow halves the scale and the update is not taken), not a failure; they are left "
                "out of the v reconstruction",
                step=k[0],
                evidence={"steps": k[:MAX_EVIDENCE_ITEMS], "count": len(k)},
            )
        )
    corrupt = [p for p in ev.state_problems if p.kind == "corrupt"]
    if corrupt:
        out.append(
            Finding(
                "AD403",
                "error",
                f"corrupt optimizer state (negative v or a checksum mismatch) in {name_list([p.tensor for p in corrupt])} "
                f"at step {corrupt[0].step}: that checkpoint cannot start a replay",
                step=corrupt[0].step,
                evidence={"state": [vars(p) for p in corrupt[:MAX_EVIDENCE_ITEMS]]},
            )
        )
    return out


def bad_batch(ev: Evidence, d: Decision) -> list[Finding]:
    """AD301: the one-step gradient-norm jump (or, with no gradient norm logged, the one-point loss spike)."""
    if d.rule == "one_point_spike" and ev.one_point_spike is not None:
        return [_one_point_spike_finding(ev.one_point_spike)]
    if d.rule == "absorbed_batch":
        return absorbed_batch(ev)
    if d.rule == "batch_loss_blowup" and ev.blowup_batch_spike is not None:
        sp = ev.blowup_batch_spike
        return [
            Finding(
                "AD301",
                "error",
                f"one batch at step {sp['step']}: the loss was {sp['loss']:.4g}, {sp['ratio']:.3g}x both neighbours "
                f"({sp['previous']:.4g} before, {sp['next']:.4g} after) — one batch's own loss, not the model's: the "
                "next batch met a model a decade better; what the loss did after it is what that batch's update did "
                "to the weights (check that batch's data; log the gradient norm to see the update)",
                step=sp["step"],
                evidence=sp,
            )
        ]
    j = ev.grad_jump
    assert j is not None
    shape = "back down at the next step" if j.get("isolated") else "and stayed up"
    return [
        Finding(
            "AD301",
            "error" if ev.blowup_step is not None else "warning",
            f"one batch at step {j['step']}: {_jump_text(j)}, {shape}",
            step=j["step"],
            evidence=j,
        )
    ]


def _one_point_spike_finding(sp: dict[str, Any]) -> Finding:
    more = f" (the largest of {sp['count']})" if sp["count"] > 1 else ""
    return Finding(
        "AD301",
        "warning",
        f"one batch at step {sp['step']}{more}: the loss was {sp['loss']:.4g}, {sp['ratio']:.3g}x both neighbours "
        f"({sp['previous']:.4g} before, {sp['next']:.4g} after) — one batch's own loss, and the run recovered at once "
        "(check that batch's data; log the gradient norm to see what the batch did to the update)",
        step=sp["step"],
        evidence=sp,
    )


def _jump_text(j: dict[str, Any]) -> str:
    """'gradient norm 117 jumped 738x in one step (484x the trailing median)' of a one-step jump."""
    prev = max(j["previous"], np.finfo(float).tiny)
    return (
        f"gradient norm {j['grad_norm']:.3g} jumped {j['grad_norm'] / prev:.3g}x in one step "
        f"({j['grad_norm'] / j['trailing_median']:.3g}x the trailing median)"
    )


def absorbed_batch(ev: Evidence) -> list[Finding]:
    """AD301 (warning) in a run whose loss shows no event: a one-batch gradient jump Adam absorbed."""
    j = ev.absorbed_jump
    if j is None:
        return []
    more = f" (the largest of {j['count']})" if j["count"] > 1 else ""
    return [
        Finding(
            "AD301",
            "warning",
            f"one batch at step {j['step']}{more}: {_jump_text(j)} and was back at the "
            "next; the loss did not react — Adam absorbed it, but its g² entered v, so the following steps were "
            "smaller (check that batch's data)",
            step=j["step"],
            evidence=j,
        )
    ]


def _collapse_evidence(c: Collapse) -> dict[str, Any]:
    return {
        "tensor": c.label,
        "first_step": c.first_step,
        "warning_step": c.warning_step,
        "median_r": c.median_r,
        "deep": c.deep,
        "depth": c.depth,
        "source": c.source,
    }


def _depth_text(c: Collapse, d: Decision) -> str:
    # Only where depth decided something: a deep stretch, or the verdict of a shallow one (stale v).
    # (A tensor's histogram rarely sees its own peak, so a per-tensor "shallow" proves little.)
    if not math.isfinite(c.depth) or not (c.deep or d.rule == "stale_v"):
        return ""
    if c.deep:
        down = 1 / math.sqrt(c.depth) if c.depth > 0 else math.inf
        return f"; v̂ fell to {c.depth:.2g} of its peak (√v̂ {down:.3g}x down)"
    return f"; v̂ is at {c.depth:.2g} of its peak — shallow, but v lives on the memory of larger gradients (a stale v)"


def collapse(ev: Evidence, d: Decision) -> list[Finding]:
    """AD101 (quiet stretch, all parameters and per tensor), AD105 (checkpoint decay), AD102 (re-growth)."""
    out = []
    b = ev.event_step
    logs = [c for c in ev.collapses if c.source == "log"]
    deep_warn = ev.collapse_warning_step()
    for c in [c for c in logs if c.label == "global"][:1]:
        out.append(
            Finding(
                "AD101",
                "error",
                f"v collapse: g²/v̂ (all parameters) stayed below {COLLAPSE_R} (median {c.median_r:.3g}) from step "
                f"{c.first_step} until the blowup at {b}{_depth_text(c, d)}",
                step=c.warning_step,
                evidence={**_collapse_evidence(c), "threshold": COLLAPSE_R},
            )
        )
    per = sorted((c for c in logs if c.label != "global"), key=lambda c: c.median_r)
    if per:
        c0 = per[0]
        # A tensor's own stretch may start earlier than the evidence that made it dangerous.
        warns = [
            max(c.warning_step, deep_warn) if (not c.deep and deep_warn is not None) else c.warning_step for c in per
        ]
        out.append(
            Finding(
                "AD101",
                "error",
                f"v collapse in {name_list([c.label for c in per])}: g²/v̂ stayed below {COLLAPSE_R} "
                f"(median {c0.median_r:.3g} in {c0.label}) from step {min(c.first_step for c in per)} until the "
                f"blowup at {b}{_depth_text(c0, d)}",
                step=min(warns),
                tensor=c0.label,
                evidence={"threshold": COLLAPSE_R, "tensors": [_collapse_evidence(c) for c in per]},
            )
        )
    ck = [c for c in ev.collapses if c.source == "checkpoints"]
    if ck:
        out.append(
            Finding(
                "AD105",
                "error",
                f"between checkpoints, v decayed almost purely in {name_list([c.label for c in ck])}; largest: "
                f"{ck[0].message}",
                step=min(c.warning_step for c in ck),
                tensor=ck[0].label,
                evidence={
                    "tensors": [
                        {"tensor": c.label, "warning_step": c.warning_step, "deep": c.deep, **c.evidence} for c in ck
                    ]
                },
            )
        )
    out += regrowth(ev)
    return out


def _peaks(
    rows: list[tuple[str, float, int]], rule: str, severity: Severity, text: str, key: str, limit: int
) -> list[Finding]:
    """One finding per trajectory peak (label, value, step), largest first; ``text`` is formatted with
    ``value``, ``where`` and ``step``."""
    return [
        Finding(
            rule,
            severity,
            text.format(value=value, where=_where(label), step=step),
            step=step,
            tensor=None if label == "global" else label,
            evidence={key: value},
        )
        for label, value, step in sorted(rows, key=lambda x: -x[1])[:limit]
    ]


def regrowth(ev: Evidence) -> list[Finding]:
    """AD102: g²/v̂ far above 1 just before the event."""
    return _peaks(
        ev.regrowth,
        "AD102",
        "error",
        "gradients re-grew in {where}: g²/v̂ = {value:.3g} at step {step}",
        "r",
        MAX_REGROWTH_LISTED,
    )


def loss_only(ev: Evidence) -> list[Finding]:
    """AD901: a blowup with nothing that shows the optimizer's state before it."""
    before = ev.checkpoints_before_event()
    if not ev.checkpoints:
        what = "optimizer checkpoints"
    elif not before:
        steps = ", ".join(str(c.step) for c in ev.checkpoints[:MAX_NAMES_SHOWN])
        what = f"optimizer checkpoints from before it (the checkpoints are from step {steps}, after it)"
    else:
        what = f"a second optimizer checkpoint from before it (only step {before[0].step} is)"
    return [
        Finding(
            "AD901",
            "warning",
            f"the loss blew up but the run has no gradient-norm scalar, gradient histograms or {what}: the cause "
            "can't be told apart (log grad_norm or keep checkpoints)",
            step=ev.event_step,
            evidence={"checkpoint_steps": [c.step for c in ev.checkpoints][:MAX_EVIDENCE_ITEMS]},
        )
    ]


def recovered_after_collapse(ev: Evidence) -> list[Finding]:
    """AD101 (warning): spikes that recovered after a deep quiet stretch — the mechanism is in place (the
    condition under which rule recovered_spikes gives v_collapse as the alternative)."""
    if not ev.deep_collapses():
        return []
    spikes = ev.events.spikes
    return [
        Finding(
            "AD101",
            "warning",
            f"loss spike(s) at step {', '.join(map(str, spikes[:MAX_SPIKES_LISTED]))} followed a v collapse: the run "
            "recovered this time, but the mechanism is in place",
            step=ev.event_step,
            evidence={
                "spikes": spikes[:MAX_EVIDENCE_ITEMS],
                "collapse": [c.label for c in ev.collapses][:MAX_EVIDENCE_ITEMS],
            },
        )
    ]


def shrunken_v(ev: Evidence) -> list[Finding]:
    """AD101 for a v̂ that fell deep without a quiet stretch (rule shrunken_v), then re-growth (AD102)."""
    f = ev.vhat_fall
    assert f is not None  # the rule decided on it
    r = ev.pre_event_r
    tracked = f" (g²/v̂ median {r:.3g} before it: v tracked the shrinking gradients)" if r is not None else ""
    where = "logged gradient norm" if f.source == "log" else "checkpoints"
    fix = "eps caps it, while a smaller lr only delays the edge of stability (a too-high lr fits too: the replay tells them apart)"
    if f.source == "checkpoint elements":
        names = name_list(f.tensors)
        msg = (
            f"v collapse per element: at step {f.step}, {f.fraction:.0%} of all live elements had √v̂ ≥ 10x below "
            f"their tensor's median at an earlier checkpoint (the typical tensor's median {f.factor:.3g}x down; in "
            f"{names}), while the tensor means, kept up by an active part, fell less — part of the model went quiet "
            f"before the blowup at {ev.event_step}; the per-element step lr/√v̂ grew ≥ 10x there — {fix}"
        )
    else:
        msg = (
            f"v collapse: v̂ (all parameters, from the {where}) fell to {1 / f.factor**2:.2g} of its peak at step "
            f"{f.peak_step} (√v̂ {f.factor:.3g}x down) before the blowup at {ev.event_step}{tracked}; the "
            f"per-element step lr/√v̂ grew {f.factor:.3g}x — {fix}"
        )
    evidence = {
        "source": f.source,
        "sqrt_vhat_fall": f.factor,
        "peak_step": f.peak_step,
        "deep_step": f.deep_step,
        "median_r_before": r,
        "depth_threshold": COLLAPSE_DEPTH,
    }
    if f.source == "checkpoint elements":
        evidence.update(fraction_fallen=f.fraction, tensors=f.tensors[:MAX_EVIDENCE_ITEMS])
    return [Finding("AD101", "error", msg, step=f.deep_step, evidence=evidence), *regrowth(ev)]


def spike_cycles(ev: Evidence) -> list[Finding]:
    """AD101 for a blowup that ended a cycle of recovered spikes over quiet stretches (rule spike_cycles),
    then re-growth (AD102)."""
    c = ev.spike_cycles
    assert c is not None  # the rule decided on it
    b, r, sp = ev.event_step, ev.pre_event_r, c["spikes"]
    shown = ", ".join(map(str, sp[:MAX_SPIKES_LISTED])) + (" …" if len(sp) > MAX_SPIKES_LISTED else "")
    msg = (
        f"v collapse: over v's memory before the blowup at {b} (steps {c['window'][0]}-{b}) g²/v̂ was below "
        f"{COLLAPSE_R} on {c['quiet_share']:.0%} of the logged steps (median {r:.3g} just before it) and the loss "
        f"spiked and recovered {len(sp)} times (step {shown}) while the lr did not rise: v decays until the step "
        "lr/√v̂ passes the loss's stability limit, spikes lift it, it decays again — eps caps the step, a smaller lr "
        "only moves the limit (a too-high lr fits too: the replay tells them apart)"
    )
    evidence = {"median_r_before": r, **c}
    return [Finding("AD101", "error", msg, step=sp[0], evidence=evidence), *regrowth(ev)]


def diverged(ev: Evidence, d: Decision) -> list[Finding]:
    """AD201: the blowup without a stale v. Says what r was, in words that match its value."""
    b = ev.event_step
    r = ev.pre_event_r
    if r is None:
        msg = f"loss diverged at step {b} without a v collapse in the data: the steps are too large"
    elif r >= COLLAPSE_R:
        msg = (
            f"loss diverged at step {b} while g²/v̂ stayed at or above {COLLAPSE_R} (median {r:.3g} before it): "
            "v tracked the gradients, no v collapse — the steps are too large"
        )
    else:
        msg = (
            f"loss diverged at step {b}; g²/v̂ was low before it (median {r:.3g} < {COLLAPSE_R}) but not for long "
            "enough to make v stale: a too-large step is the likelier cause, a v collapse the alternative"
        )
    return [
        Finding("AD201", "error", msg, step=b, evidence={"median_r_before": r, "lr": ev.lr, "threshold": COLLAPSE_R})
    ]


def update_rms(ev: Evidence) -> list[Finding]:
    """AD103: update RMS > 1 just before the event."""
    return _peaks(
        ev.update_rms,
        "AD103",
        "warning",
        "update RMS {value:.3g} > 1 in {where} at step {step}",
        "update_rms",
        MAX_RMS_LISTED,
    )


def lr_warning_step(ev: Evidence) -> int | None:
    return first_instability(ev.trajectories, ev.event_step) if ev.event_step is not None else None


def eps_dominance(ev: Evidence, scalars: Any, verdict: str) -> tuple[list[Finding], bool]:
    """AD501: √v̂ < eps for most elements at the last checkpoint. Returns the findings and whether the
    run is ``eps_too_large`` (healthy so far, eps dominates, and the loss barely moved)."""
    if not ev.checkpoints or ev.loss_tag is None:
        return [], False
    last = ev.checkpoints[-1]
    n = sum(int(t.numel) for t in last.tensors)
    if not n:
        return [], False
    below = sum(frac_live(t, "frac_sqrt_vhat_below_eps") * int(t.numel) for t in last.tensors) / n
    if not math.isfinite(below) or below < EPS_DOMINATED_FRACTION:
        return [], False
    _, loss = series_arrays(scalars, ev.loss_tag)
    finite = np.isfinite(loss)
    progress = None
    if finite.sum() >= MIN_LOSS_POINTS:
        lf = loss[finite]
        k = max(1, len(lf) // EPS_PROGRESS_SEGMENTS)
        progress = float(np.median(lf[-k:]) / np.median(lf[:k])) if np.median(lf[:k]) > 0 else None
    stalled = progress is not None and progress > EPS_STALLED_PROGRESS
    msg = f"√v̂ < eps={ev.eps:g} for {below:.0%} of all elements at step {last.step}: Adam behaves like SGD with step lr/eps"
    if verdict == "healthy" and stalled:
        return [
            Finding(
                "AD501",
                "warning",
                msg + f"; the loss barely moved (final/initial {progress:.2f})",
                step=last.step,
                evidence={"frac_below_eps": below, "progress": progress},
            )
        ], True
    return [Finding("AD501", "info", msg, step=last.step, evidence={"frac_below_eps": below})], False


def collapse_in_progress(ev: Evidence, beta2: float) -> list[Finding]:
    """AD101 on a run that did not blow up: v is collapsing, and whether eps bounds the step."""
    for tr in ev.trajectories:
        c = collapse_stretch(tr, None, beta2)
        if c is None:
            continue
        first, warn, med = c
        # eps bounds the damage when √v̂ is already at or below eps: the step cannot grow further.
        tail = tr.vhat[-1] if len(tr.vhat) else float("nan")
        bounded = (
            tr.eps > 0 and math.isfinite(tail) and math.sqrt(max(tail, 0.0)) <= EPS_BOUND_FACTOR * tr.eps_eff()[-1]
        )
        if bounded:
            tail_text = "; eps bounds the step"
        elif tr.eps == 0:
            tail_text = "; eps and v's scale are unknown without a checkpoint"
        else:
            tail_text = "; eps does not bound the step: a return of larger gradients would blow up the update"
        return [
            Finding(
                "AD101",
                "info" if bounded else "warning",
                f"v is collapsing in {_where(tr.label)} from step {first} (g²/v̂ median {med:.3g}){tail_text}",
                step=warn,
                tensor=None if tr.label == "global" else tr.label,
                evidence={"median_r": med},
            )
        ]
    return []


def checkpoints_off_the_log(ev: Evidence) -> list[Finding]:
    """AD901 (warning): the checkpoints' steps and the log's do not overlap by a wide margin. Checkpoints count
    optimizer steps. A log written against the epoch (a loss per epoch at ``step=epoch``) or one that stopped early
    puts every checkpoint far past its end, where nothing of theirs is placed on it; one written against the samples
    or tokens seen puts every checkpoint far before its start — where they are taken for early steps of the log, so
    the replay start chosen "before the blowup" can be a checkpoint saved after it. Said instead of silence."""
    first, last = ev.loss_first_step, ev.loss_last_step
    steps = sorted(c.step for c in ev.checkpoints if c.step is not None)
    if not steps or first is None or last is None or ev.epoch_axis:
        return []
    span = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}–{steps[-1]}"
    evidence = {"loss_first_step": first, "loss_last_step": last, "checkpoint_steps": steps[:MAX_TAGS_EVIDENCE]}
    if steps[0] > CHECKPOINTS_PAST_LOG_FACTOR * max(last, 1):
        text = (
            f"every checkpoint ({span}) lies past the log's last step ({last}): the log counts something other than "
            "optimizer steps (a loss per epoch at step=epoch, samples or tokens seen), stopped early, or the "
            "checkpoints are another run's; none is placed on the log (their hyperparameters are still used) — "
            "log against the optimizer step, or pass --checkpoints"
        )
    elif first > CHECKPOINTS_PAST_LOG_FACTOR * max(steps[-1], 1):
        text = (
            f"every checkpoint ({span}) lies before the log's first step ({first}): the log counts something finer "
            "than optimizer steps (samples or tokens seen), began long after them (a resumed run), or the "
            "checkpoints are another run's; read on the log's axis they are early steps of it, so the replay start "
            "chosen before the blowup may not be — log against the optimizer step, or pass --checkpoints"
        )
    else:
        return []
    return [Finding("AD901", "warning", text, evidence=evidence)]


def data_quality(ev: Evidence, tags: list[str]) -> list[Finding]:
    """AD901 (info): assumed hyperparameters, approximate reconstructions; AD601: clipping."""
    out = []
    if ev.hyper_assumed and ev.trajectories:
        where = (
            f"beta2={ev.beta2}, eps={ev.eps:g} from {ev.hyper_source}"
            if ev.hyper_source
            else f"assumed beta2={ev.beta2}, eps={ev.eps:g} ({ev.hyper_defaults} defaults)"
        )
        out.append(
            Finding(
                "AD901",
                "info",
                f"no optimizer checkpoint found: {where}; "
                + (
                    f"none was read under --checkpoints {ev.checkpoint_root} for this run"
                    if ev.checkpoint_root is not None
                    else "pass --checkpoints for exact values"
                ),
                evidence={
                    "beta2": ev.beta2,
                    "eps": ev.eps,
                    "source": ev.hyper_source or f"{ev.hyper_defaults} defaults",
                },
            )
        )
    out += checkpoints_off_the_log(ev)
    approx = [t.label for t in ev.trajectories if not t.exact]
    if approx:
        what = "per-tensor histograms" if "global" not in approx else "the gradient norm"
        out.append(
            Finding(
                "AD901",
                "info",
                f"{what} not logged every step from step 1: the v reconstruction from it is approximate between checkpoints",
                evidence={"approximate": approx[:MAX_TAGS_EVIDENCE]},
            )
        )
    bucketed = [t.label for t in ev.trajectories if t.bucketed]
    if bucketed:
        out.append(
            Finding(
                "AD901",
                "info",
                f"per-tensor g² of {len(bucketed)} tensor(s) estimated from histogram buckets (the writer keeps no sum "
                "of squares: TF2 summaries, wandb.watch): each value at its bucket's centre, within a few % of the "
                "exact mean on dense gradients, high on mostly-zero ones",
                evidence={"bucketed": bucketed[:MAX_TAGS_EVIDENCE]},
            )
        )
    if ev.clip_norm is not None and ev.grad_norm_tag is not None:
        out.append(
            Finding(
                "AD601",
                "info",
                f"gradient clipping at {ev.clip_norm:g} ({ev.clip_source}): '{ev.grad_norm_tag}' is the norm before "
                f"clipping, Adam stepped with the clipped gradient, so v is reconstructed from min(norm, {ev.clip_norm:g})",
                evidence={"clip_norm": ev.clip_norm, "source": ev.clip_source},
            )
        )
    clip_tags = [t for t in tags if "clip" in t.lower()]
    if ev.grad_norm_tag is not None and clip_tags and ev.clip_norm is None:  # (a known norm is said above)
        out.append(
            Finding(
                "AD601",
                "info",
                f"gradient clipping detected ({clip_tags[0]}): Adam saw the clipped gradients (using '{ev.grad_norm_tag}')",
            )
        )
    return out
