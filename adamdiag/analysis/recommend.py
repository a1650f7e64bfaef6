"""What to change, sized from the evidence, and the replay command that would prove it.

Hyperparameters come from the checkpoint the replay starts from (the last one before the blowup): a
run that warms its learning rate up has a different lr there than at its last checkpoint, and
"lr/3" must mean a third of the lr the replay starts with. The printed ``verify:`` command tries the
recommendation's own candidates *and* the competing cause's fix, one change at a time, so its table
tells which change helped (a v collapse: eps candidates, lr/3 and lr/10; too high an lr: lr/3, lr/10
and eps 1e-3); it carries ``--loss-tag`` and ``--logdir`` whenever replay's own choice would miss them.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Callable
from typing import Any

from adamdiag.analysis.evidence import (
    Evidence,
    ckpt_tensor_label,
    frac_below,
    frac_live,
    hyperparameters,
    live_frac_below,
    live_median,
    optimizer_key,
    param_key,
    tensor_eps,
    zero_v_fraction,
)
from adamdiag.analysis.findings import name_list
from adamdiag.analysis.thresholds import (
    DECADE,
    EPS_BOUNDS_MOST,
    EPS_DECREASE,
    EPS_DOMINATION_MARGIN,
    EPS_SEARCH_LOWEST_DECADE,
    EPS_UNSIZED,
    LR_REDUCTION,
    LR_REDUCTION_STRONG,
    LR_RISE_SINCE_START,
    NEAR_EPS_FRACTION,
    REPORT_EPS_CANDIDATES,
    SCHEDULE_RISE,
)
from adamdiag.analysis.verdicts import Decision
from adamdiag.printable import is_utf8


def replay_command(ev: Evidence, run: str, args: list[str], path: str | None = None) -> str | None:
    """``adamdiag replay START ARGS`` with the flags this run needs, or None without a start checkpoint
    (``path``: another checkpoint than the start, e.g. the earlier one ``--verify`` may fall back to)."""
    path = path or (getattr(ev.start, "path", None) if ev.start is not None else None)
    if not path or _replay_refusal(ev):
        return None
    parts = ["adamdiag", "replay", path, *args]
    # replay picks the loss tag as scan does: name it only when scan used another (the user's --loss-tag).
    if ev.loss_tag and ev.loss_tag != ev.auto_loss_tag:
        parts += ["--loss-tag", ev.loss_tag]
    # replay finds the run's events by walking up from the checkpoint; a checkpoint kept elsewhere
    # (--checkpoints DIR) needs the run named. Compared as paths, without touching the file system.
    if not os.path.normpath(path).startswith(os.path.normpath(run) + os.sep):
        parts += ["--logdir", run]
    return " ".join(shell_quote(p) for p in parts)


def _replay_refusal(ev: Evidence) -> str | None:
    """Why ``replay`` cannot re-run the start checkpoint's optimizer (it steps torch.optim.Adam/AdamW in float32:
    a quantized state or a look-alike of Adam would be another run), else None."""
    return getattr(ev.start, "replay_refusal", None) if ev.start is not None else None


def _the_replay(ev: Evidence) -> str:
    """How the recommendation names the replay: the printed ``verify:`` line below it, when there is one."""
    return "the replay" if _replay_refusal(ev) else "the replay below"


def _no_replay_note(ev: Evidence, rec: dict[str, Any] | None) -> dict[str, Any] | None:
    """Where the replay cannot run, the recommendation says so and how to check it instead."""
    why = _replay_refusal(ev)
    if rec is not None and why and "replay" in rec:
        rec["message"] += (
            f"; the replay this calls for cannot run on these checkpoints: {why} — resume training from "
            f"{getattr(ev.start, 'path', 'its start')} with each change instead"
        )
    return rec


def shell_quote(arg: str) -> str:
    """``shlex.quote``, except for a path that is not UTF-8 (lone surrogates): bash's ``$'…'`` with its odd
    bytes as ``\\xNN``, so the printed command still names the file when pasted.

    >>> shell_quote(b"/runs/a\\xffb/x.pt".decode("utf-8", "surrogateescape"))
    "$'/runs/a\\\\xffb/x.pt'"
    >>> shell_quote("/runs/my run/x.pt")
    "'/runs/my run/x.pt'"
    """
    if is_utf8(arg):
        return shlex.quote(arg)
    raw = arg.encode("utf-8", "surrogateescape")
    body = "".join(
        c if c.isascii() and c.isprintable() and c not in "\\'" else f"\\x{b:02x}"
        for b, c in ((b, chr(b)) for b in raw)
    )
    return f"$'{body}'"


def _eps_args(values: list[float]) -> list[str]:
    return [a for e in values for a in ("--eps", f"{e:g}")]


def _lr_args(values: list[float]) -> list[str]:
    return [a for x in values for a in ("--lr", f"{x:.3g}")]


def recommend(ev: Evidence, d: Decision, run: str, collapsed_names: list[str]) -> dict[str, Any] | None:
    """The recommendation block of ``adamdiag.report/1`` for the decided verdict."""
    v = d.verdict
    if v == "v_collapse":
        return _no_replay_note(ev, _increase_eps(ev, d, run, collapsed_names))
    if v == "lr_too_high":
        return _no_replay_note(ev, _lower_lr(ev, d, run))
    if v == "healthy" and d.alternative == "v_collapse":
        # spikes that recovered after a deep v collapse (rule recovered_spikes): the same fix, sized the same
        # way, before the next spike is one the run does not come back from
        rec = _increase_eps(ev, d, run, collapsed_names, event="spike")
        rec["message"] = f"the run recovered this time; before a spike it does not come back from: {rec['message']}"
        return _no_replay_note(ev, rec)
    if v == "healthy" and d.alternative == "lr_too_high" and ev.end_climb is not None:
        # the loss ended above its start with no blowup (AD003): no event to size a cut from or replay to
        return {
            "action": "check the learning rate",
            "message": f"the loss ended {ev.end_climb['ratio']:.3g}x above where it started; unless it grows by "
            "design, the steps are too large for this model: lower lr (about 10x) or add warm-up / gradient clipping",
        }
    if v == "bad_batch":
        return {
            "action": "guard against bad batches",
            "message": "inspect the batch at the spike step; clip gradients or skip batches whose loss is an outlier",
        }
    if v == "nonfinite":
        return {
            "action": "find the first non-finite value",
            "message": "check the data and loss for NaN/Inf; with fp16 use loss scaling; enable anomaly detection",
        }
    if v == "eps_too_large":
        return {
            "action": "decrease eps",
            "message": f"eps {ev.eps:g} dominates √v̂ almost everywhere; try {ev.eps / EPS_DECREASE:g}",
        }
    return None


def _eff(t: Any, e: float) -> float:
    """A candidate eps in √v̂ units for tensor ``t``: TF adds eps to the un-corrected √v, which is eps/√(1-β2^t)
    next to √v̂ (the reader's ``eps_effective``/``eps`` ratio; 1 in the torch convention)."""
    eff, own = float(getattr(t, "eps_effective", math.nan)), float(getattr(t, "eps", math.nan))
    return e * eff / own if math.isfinite(eff) and math.isfinite(own) and own > 0 and eff > 0 else e


def _weighted(fractions: list[float], tensors: list[Any]) -> float:
    """Per-tensor fractions → the fraction of all their elements (a 1-element bias must not outvote a
    4096-element weight); nan when nothing is finite."""
    pairs = [(f, int(t.numel)) for f, t in zip(fractions, tensors) if math.isfinite(f) and int(t.numel) > 0]
    n = sum(w for _, w in pairs)
    return sum(f * w for f, w in pairs) / n if n else math.nan


def _dominating_decade(collapsed: list[Any]) -> float | None:
    """The smallest power of ten that dominates (√v̂ ≤ eps/3) at least half of the collapsed tensors'
    live elements; None when no decade up to the largest √v̂ does (no finite quantiles)."""
    tops = [float(t.sqrt_vhat_q.get("max", math.nan)) for t in collapsed]
    tops = [x for x in tops if math.isfinite(x) and x > 0]
    if not tops:
        return None
    for k in range(EPS_SEARCH_LOWEST_DECADE, math.ceil(math.log10(max(tops) * EPS_DOMINATION_MARGIN)) + 1):
        e = DECADE**k
        if _weighted([live_frac_below(t, _eff(t, e) / EPS_DOMINATION_MARGIN) for t in collapsed], collapsed) >= (
            EPS_BOUNDS_MOST
        ):
            return e
    return None


def _increase_eps(
    ev: Evidence, d: Decision, run: str, collapsed_names: list[str], event: str = "blowup"
) -> dict[str, Any]:
    """The eps recommendation, sized from the last checkpoint before the ``event`` (a blowup; for a run that
    recovered, its spike)."""
    eps, start = ev.eps, ev.start
    rec: dict[str, Any] = {"action": "increase eps", "current_eps": eps, "candidates": []}
    if start is not None:
        # Collapsed tensors: those the evidence named; else those with elements near eps; else the one
        # with the smallest median √v̂ (the first to be dominated by a larger eps).
        # matched by param_key: the evidence's names may come from histograms that name a wrapper (DDP's module.)
        by_label = {param_key(ckpt_tensor_label(t)): t for t in start.tensors}
        collapsed = list({id(t): t for n in collapsed_names if (t := by_label.get(param_key(n))) is not None}.values())
        if not collapsed:
            near = [t for t in start.tensors if frac_live(t, "frac_sqrt_vhat_below_10eps") > NEAR_EPS_FRACTION]
            # (a tensor whose v is all 0 never received a gradient: not a candidate)
            live = [t for t in start.tensors if zero_v_fraction(t) < 1.0]
            collapsed = near or sorted(live or start.tensors, key=live_median)[:1]
        n_all = sum(int(t.numel) for t in start.tensors) or 1
        by_size = sorted(collapsed, key=lambda t: -int(t.numel))
        largest, names = by_size[0], [ckpt_tensor_label(t) for t in by_size]
        # The collapsed tensors' own eps: with several optimizers in a file (a GAN's two) the run's eps (the one
        # most elements use) may be another optimizer's.
        own = tensor_eps(largest)
        if own is not None and own != eps:
            eps = own
            rec["current_eps"] = own
        derived = _dominating_decade(collapsed)
        for e in sorted({*REPORT_EPS_CANDIDATES, *([derived] if derived is not None else [])}):
            bounded = [frac_below(t.sqrt_vhat_q, _eff(t, e)) for t in collapsed]
            dominated = [live_frac_below(t, _eff(t, e) / EPS_DOMINATION_MARGIN) for t in collapsed]
            allf = sum(frac_below(t.sqrt_vhat_q, _eff(t, e)) * int(t.numel) for t in start.tensors) / n_all
            rec["candidates"].append(
                {
                    "eps": e,
                    "frac_collapsed_bounded": _weighted(bounded, collapsed),
                    "frac_collapsed_dominated": _weighted(dominated, collapsed),
                    "frac_all_eps_dominated": float(allf),
                }
            )
        # The smallest candidate that dominates most collapsed elements (the fix: their denominator no
        # longer follows v, see EPS_DOMINATION_MARGIN) — the smallest such, because eps cuts both ways:
        # frac_all_eps_dominated says how much of the healthy rest it turns into SGD.
        good = [c for c in rec["candidates"] if c["frac_collapsed_dominated"] >= EPS_BOUNDS_MOST and c["eps"] > eps]
        choice = good[0] if good else rec["candidates"][-1]
        shown = name_list(names)
        opt = optimizer_key(largest) if len({optimizer_key(t) for t in start.tensors}) > 1 else None
        sizing = (
            f"√v̂ ≤ eps/{EPS_DOMINATION_MARGIN:g} ({_eff(largest, choice['eps']) / EPS_DOMINATION_MARGIN:.3g}) in "
            f"{choice['frac_collapsed_dominated']:.0%} of the live elements of the collapsed tensors ({shown}) at "
            f"step {start.step}, so eps, not the decaying v, sets their step"
        )
        risen = schedule_rise_since_start(ev)
        floor = next((c for c in rec["candidates"] if c["eps"] >= EPS_UNSIZED), None)
        if risen is not None and floor is not None and choice["eps"] < floor["eps"]:
            # A warm restart (or a steep warm-up) between the checkpoint and the blowup: √v̂ there sizes eps
            # for the checkpoint's lr. The restart multiplies lr/eps, the step size of the elements eps
            # dominates, and a cycle that ended at a tiny lr has sharpened the loss; how much eps that
            # needs no checkpoint shows, so the sizing is a lower bound and the unsized default the floor
            # (on the lab's warm-restart runs the sized 1e-4/1e-3 blew up where 1e-2 avoided it).
            rec["sized_eps"] = choice["eps"]
            sizing = (
                f"the logged lr rose {risen:,.0f}x from {start_lr(ev)[1]} (step {start.step}) to "
                f"{ev.lr_at_event:.3g} at the {event} (a warm restart or warm-up): √v̂ at the checkpoint sizes eps "
                f"for its lr only — {choice['eps']:g} would put √v̂ ≤ eps/{EPS_DOMINATION_MARGIN:g} in "
                f"{choice['frac_collapsed_dominated']:.0%} of the collapsed tensors' live elements ({shown}) — while "
                f"at the raised lr it is lr/eps that must stay stable, so the unsized {floor['eps']:g} is the floor "
                "(the verify: line compares them)"
            )
            choice = floor
        rec["eps"] = choice["eps"]
        rec["message"] = (
            (f"in optimizer `{opt}`: " if opt else "")
            + f"eps {eps:g} → {choice['eps']:g}: {sizing}; {choice['frac_all_eps_dominated']:.0%} of all elements "
            "would be eps-dominated"
        )
    else:
        rec["eps"] = EPS_UNSIZED
        rec["candidates"] = [{"eps": e} for e in REPORT_EPS_CANDIDATES]
        others = ", ".join(f"{e:g}" for e in REPORT_EPS_CANDIDATES if e != EPS_UNSIZED)
        rec["message"] = (
            f"eps {eps:g} → {EPS_UNSIZED:g} (compare {others}); no checkpoint before the {event} to size it from the "
            "measured √v̂"
        )
    if d.alternative == "lr_too_high":
        # shrunken_v: v̂ fell deep while it tracked shrinking gradients — no quiet stretch at all
        why = {
            "shrunken_v": "v̂ fell deep without a quiet stretch (it tracked shrinking gradients)",
            "spike_cycles": "recovered spikes kept the quiet stretches short (v, not the lr, kept crossing the limit)",
        }.get(d.rule, "the quiet stretch before the blowup is long but shallow")
        rec["message"] += (
            f"; {why}, so a too-high lr also fits: {_the_replay(ev)} tries both (a stale v is the cause when an eps "
            "fix avoids the blowup and lr/3 only postpones it)"
        )
    rec["alternatives"] = ["a shorter v memory (beta2 0.99-0.995)", "gradient clipping"]
    args = _eps_args([c["eps"] for c in rec["candidates"]])
    if ev.lr:
        # the competing cause's fixes, each on its own: lr/10 is what lr_too_high recommends, lr/3 tells
        # a postponement (a stale v: lr/3 only moves the blowup later)
        args += _lr_args([ev.lr / LR_REDUCTION, ev.lr / LR_REDUCTION_STRONG])
    rec["verify"] = replay_command(ev, run, args)
    lrs = [ev.lr / LR_REDUCTION, ev.lr / LR_REDUCTION_STRONG] if ev.lr else []
    rec["replay"] = replay_plan(ev, [c["eps"] for c in rec["candidates"] if c["eps"] > eps], lrs)
    _earlier_verify(ev, run, rec, lambda lrs_: _eps_args([c["eps"] for c in rec["candidates"]]) + _lr_args(lrs_))
    return rec


# The lr recommendation's claim when the log shows no v collapse; scan --verify drops it when its replay shows
# an eps change avoiding the blowup too (pipeline.verify._drop_refuted_eps_claim finds it by this text).
NO_EPS_FIX = "eps will not help"


def _lower_lr(ev: Evidence, d: Decision, run: str) -> dict[str, Any]:
    lr = ev.lr
    if d.alternative is not None:
        why = f"a v collapse also fits (g²/v̂ was low before the blowup): {_the_replay(ev)} tries an eps fix too"
    elif ev.pre_event_r is None:  # no logged trajectory: what the checkpoints before it show
        why = f"{NO_EPS_FIX}: the checkpoints before the blowup show no v collapse"
    else:
        why = f"{NO_EPS_FIX}: v tracked the gradients"
    cuts = [LR_REDUCTION, LR_REDUCTION_STRONG]
    rise = schedule_rise(ev)
    if rise is not None:
        # The schedule (a warm-up) keeps raising the lr after the blowup: a cut of the whole schedule by 10
        # can peak back above the lr that blew up. The replay also tries the cut that keeps the peak at a
        # tenth of it. Tried, not recommended: on the lab's warm-up runs it avoided the blowup on some and
        # only postponed it further on others (bench/README.md, session 11).
        cuts.append(LR_REDUCTION_STRONG * rise)
        why += (
            f"; the logged lr keeps rising after the blowup, to {ev.lr_peak_after:.3g} ({rise:.2g}x the lr at "
            f"the blowup): the replay also tries a {LR_REDUCTION_STRONG * rise:.2g}x cut, which keeps that peak "
            "at a tenth of the lr that blew up"
        )
    risen = schedule_rise_since_start(ev)
    if risen is not None and lr and ev.start is not None and ev.lr_at_event is not None:
        # A warm restart (or a warm-up) between the start checkpoint and the blowup: the lr that blew up is
        # the logged one, not the checkpoint's; "lr/10" at the checkpoint means the whole schedule cut 10x
        # (the replay scales an entry's lr_schedule by --lr / the start's lr), so say it at the blowup.
        why += (
            f"; the logged lr rose {risen:,.0f}x from {start_lr(ev)[1]} (step {ev.start.step}) to "
            f"{ev.lr_at_event:.3g} at the blowup: cut the whole schedule {LR_REDUCTION_STRONG:g}x ("
            f"{ev.lr_at_event:.3g} → {ev.lr_at_event / LR_REDUCTION_STRONG:.3g} there); the replay's --lr values "
            "are the start checkpoint's lr cut the same way"
        )
    rec: dict[str, Any] = {
        "action": "lower the learning rate",
        "lr": (lr / LR_REDUCTION_STRONG) if lr else None,
        # the factor: "lr" is the start checkpoint's lr times it, and so is every lr of the schedule
        "lr_scale": 1.0 / LR_REDUCTION_STRONG,
        "current_lr": lr,
        "message": (
            f"lower lr about {LR_REDUCTION_STRONG:g}x (or add warmup / gradient clipping): a {LR_REDUCTION:g}x cut "
            f"often only postpones the blowup, as the loss sharpens back to the edge of stability; {why}"
        ),
    }
    if ev.lr_at_event is not None:
        rec["lr_at_blowup"] = ev.lr_at_event
    if lr:
        args = _lr_args([lr / c for c in cuts]) + _eps_args([REPORT_EPS_CANDIDATES[0]])
        rec["verify"] = replay_command(ev, run, args)
        rec["replay"] = replay_plan(ev, list(REPORT_EPS_CANDIDATES[:2]), [lr / c for c in cuts])
        _earlier_verify(ev, run, rec, lambda lrs_: _lr_args(lrs_) + _eps_args([REPORT_EPS_CANDIDATES[0]]), cuts)
    return rec


def schedule_rise(ev: Evidence) -> float | None:
    """How far the logged lr rises after the blowup over the lr at it (≥ SCHEDULE_RISE, else None): a
    warm-up still under way when the run blew up."""
    a, p = ev.lr_at_event, ev.lr_peak_after
    if a is None or p is None or not a > 0 or not p >= SCHEDULE_RISE * a:
        return None
    return p / a


def schedule_rise_since_start(ev: Evidence) -> float | None:
    """How far the logged lr at the blowup is above the lr at the start checkpoint (≥ LR_RISE_SINCE_START, else
    None): a warm restart or a steep warm-up between the replay's start and the blowup."""
    a, s = ev.lr_at_event, start_lr(ev)[0]
    if a is None or s is None or ev.start is None or not s > 0 or not a >= LR_RISE_SINCE_START * s:
        return None
    return a / s


def start_lr(ev: Evidence) -> tuple[float | None, str]:
    """The lr the start checkpoint's v lived under, and how to name it: the checkpoint's own lr, or the logged
    lr up to its step when that is lower — a scheduler that stepped before the save leaves the *next* update's
    lr in the checkpoint, which at a warm restart is already the raised one (fairseq's cosine at update 1000)."""
    own, logged = ev.lr, ev.lr_before_start
    if logged is not None and (own is None or not own > 0 or logged < own):
        return logged, f"the logged {logged:.3g} up to the start checkpoint"
    return own, f"the start checkpoint's {own:.3g}" if own is not None else "the start checkpoint's"


def _earlier_verify(
    ev: Evidence,
    run: str,
    rec: dict[str, Any],
    args_for: Callable[[list[float]], list[str]],
    cuts: tuple[float, ...] | list[float] = (LR_REDUCTION, LR_REDUCTION_STRONG),
) -> None:
    """The ``verify:`` command from the replay plan's earlier checkpoint (its own lr cut by ``cuts``:
    lr/3 and lr/10), stored in the plan: when ``--verify`` had to fall back to it, that is the command
    that shows the result."""
    plan = rec.get("replay") or {}
    e = plan.get("earlier")
    if e and ev.lr:
        lr = float(e["original"]["lr"])
        e["verify"] = replay_command(ev, run, args_for([lr / c for c in cuts]), e["checkpoint"])


def replay_plan(ev: Evidence, eps_values: list[float], lr_values: list[float]) -> dict[str, Any] | None:
    """What ``--verify`` replays: the start checkpoint, its own settings, and single changes — the
    eps candidates and the lr reductions (both causes' fixes, so the outcome can tell them apart)."""
    path = getattr(ev.start, "path", None) if ev.start is not None else None
    if not path or ev.lr is None or ev.start is None:
        return None
    plan: dict[str, Any] = {
        "checkpoint": path,
        "start_step": int(ev.start.step),
        "original": {"eps": ev.eps, "beta2": ev.beta2, "lr": ev.lr},
        "eps": [float(e) for e in eps_values],
        "lr": [float(x) for x in lr_values],
    }
    # The checkpoint before the start, for when no change avoids the blowup from the start: the
    # instability may already be under way there (a drift that only looks sudden in the loss), and a fix
    # can only be proven from before it. Its own hyperparameters (a schedule moves lr), the same
    # changes relative to them.
    bad = {p.step for p in ev.state_problems}
    earlier = [c for c in ev.checkpoints if c.step < ev.start.step and c.step not in bad and getattr(c, "path", None)]
    if earlier:
        prev = earlier[-1]
        beta2, eps, lr = hyperparameters(prev)
        if lr is not None and ev.lr:
            plan["earlier"] = {
                "checkpoint": prev.path,
                "start_step": int(prev.step),
                "original": {"eps": eps, "beta2": beta2, "lr": lr},
                "eps": plan["eps"],
                "lr": [float(x) * lr / ev.lr for x in lr_values],
            }
    return plan
