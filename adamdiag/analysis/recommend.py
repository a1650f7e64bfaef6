"""What to change, sized from the evidence, and the replay command that would prove it.

Hyperparameters come from the checkpoint the replay starts from (the last one before the blowup): a
run that warms its learning rate up has a different lr there than at its last checkpoint, and
"lr/3" must mean a third of the lr the replay starts with. The printed ``verify:`` command tries the
recommendation's own candidates *and* the competing cause's fix, one change at a time, so its table
tells which change helped (a v collapse: eps candidates and lr/3; too high an lr: lr/3, lr/10 and
eps 1e-3); it carries ``--loss-tag`` and ``--logdir`` whenever replay's own choice would miss them.
"""

from __future__ import annotations

import math
import os
import shlex
from typing import Any

import numpy as np

from adamdiag.analysis.evidence import Evidence, ckpt_tensor_label, frac_below, frac_live
from adamdiag.analysis.thresholds import (
    DECADE,
    EPS_BOUNDS_MOST,
    EPS_DECREASE,
    LR_REDUCTION,
    LR_REDUCTION_STRONG,
    NEAR_EPS_FRACTION,
    REPORT_EPS_CANDIDATES,
    TINY,
)
from adamdiag.analysis.verdicts import Decision


def replay_command(ev: Evidence, run: str, args: list[str]) -> str | None:
    """``adamdiag replay START ARGS`` with the flags this run needs, or None without a start checkpoint."""
    path = getattr(ev.start, "path", None) if ev.start is not None else None
    if not path:
        return None
    parts = ["adamdiag", "replay", path, *args]
    # replay picks the loss tag as scan does: name it only when scan used another (the user's --loss-tag).
    if ev.loss_tag and ev.loss_tag != ev.auto_loss_tag:
        parts += ["--loss-tag", ev.loss_tag]
    # replay finds the run's events by walking up from the checkpoint; a checkpoint kept elsewhere
    # (--checkpoints DIR) needs the run named. Compared as paths, without touching the file system.
    if not os.path.normpath(path).startswith(os.path.normpath(run) + os.sep):
        parts += ["--logdir", run]
    return " ".join(shlex.quote(p) for p in parts)


def _eps_args(values: list[float]) -> list[str]:
    return [a for e in values for a in ("--eps", f"{e:g}")]


def _lr_args(values: list[float]) -> list[str]:
    return [a for x in values for a in ("--lr", f"{x:.3g}")]


def recommend(ev: Evidence, d: Decision, run: str, collapsed_names: list[str]) -> dict[str, Any] | None:
    """The recommendation block of ``adamdiag.report/1`` for the decided verdict."""
    v = d.verdict
    if v == "v_collapse":
        return _increase_eps(ev, d, run, collapsed_names)
    if v == "lr_too_high":
        return _lower_lr(ev, d, run)
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


def _increase_eps(ev: Evidence, d: Decision, run: str, collapsed_names: list[str]) -> dict[str, Any]:
    eps, start = ev.eps, ev.start
    rec: dict[str, Any] = {"action": "increase eps", "current_eps": eps, "candidates": []}
    if start is not None:
        # Collapsed tensors: those the evidence named; else those with elements near eps; else the one
        # with the smallest median √v̂ (the first to be dominated by a larger eps).
        by_label = {ckpt_tensor_label(t): t for t in start.tensors}
        collapsed = [by_label[n] for n in dict.fromkeys(collapsed_names) if n in by_label]
        if not collapsed:
            near = [t for t in start.tensors if frac_live(t, "frac_sqrt_vhat_below_10eps") > NEAR_EPS_FRACTION]
            collapsed = near or sorted(start.tensors, key=lambda t: float(t.sqrt_vhat_q["p50"]))[:1]
        n_all = sum(int(t.numel) for t in start.tensors) or 1
        p50 = float(np.median([t.sqrt_vhat_q["p50"] for t in collapsed]))
        derived = DECADE ** math.ceil(math.log10(max(p50, TINY)))
        for e in sorted({*REPORT_EPS_CANDIDATES, derived}):
            col = [frac_below(t.sqrt_vhat_q, e) for t in collapsed]
            allf = sum(frac_below(t.sqrt_vhat_q, e) * int(t.numel) for t in start.tensors) / n_all
            rec["candidates"].append(
                {"eps": e, "frac_collapsed_bounded": float(np.mean(col)), "frac_all_eps_dominated": float(allf)}
            )
        # The smallest candidate that bounds most collapsed elements (the fix) while keeping eps from
        # dominating most of the healthy ones (eps cuts both ways).
        good = [c for c in rec["candidates"] if c["frac_collapsed_bounded"] >= EPS_BOUNDS_MOST and c["eps"] > eps]
        choice = good[0] if good else rec["candidates"][0]
        rec["eps"] = choice["eps"]
        top = collapsed[0]
        rec["message"] = (
            f"eps {eps:g} → {choice['eps']:g}: √v̂ is below {choice['eps']:g} in "
            f"{frac_below(top.sqrt_vhat_q, choice['eps']):.0%} of the elements of `{ckpt_tensor_label(top)}` at "
            f"step {start.step}; {choice['frac_all_eps_dominated']:.0%} of all elements would be eps-dominated"
        )
    else:
        rec["eps"] = REPORT_EPS_CANDIDATES[0]
        rec["candidates"] = [{"eps": e} for e in REPORT_EPS_CANDIDATES]
        rec["message"] = (
            f"eps {eps:g} → {REPORT_EPS_CANDIDATES[0]:g} (compare "
            f"{', '.join(f'{e:g}' for e in REPORT_EPS_CANDIDATES[1:])}); no checkpoint before the blowup to size it "
            "from the measured √v̂"
        )
    if d.alternative == "lr_too_high":
        rec["message"] += (
            "; the quiet stretch before the blowup is long but shallow, so a too-high lr also fits: the replay below "
            "tries both (a stale v is the cause when an eps fix avoids the blowup and lr/3 only postpones it)"
        )
    rec["alternatives"] = ["a shorter v memory (beta2 0.99-0.995)", "gradient clipping"]
    args = _eps_args([c["eps"] for c in rec["candidates"]])
    if ev.lr:
        args += _lr_args([ev.lr / LR_REDUCTION])  # the competing cause's fix, tried on its own
    rec["verify"] = replay_command(ev, run, args)
    lrs = [ev.lr / LR_REDUCTION, ev.lr / LR_REDUCTION_STRONG] if ev.lr else []
    rec["replay"] = replay_plan(ev, [c["eps"] for c in rec["candidates"] if c["eps"] > eps], lrs)
    return rec


def _lower_lr(ev: Evidence, d: Decision, run: str) -> dict[str, Any]:
    lr = ev.lr
    why = (
        "eps will not help: v tracked the gradients"
        if d.alternative is None
        else "a v collapse also fits (g²/v̂ was low before the blowup): the replay below tries an eps fix too"
    )
    rec: dict[str, Any] = {
        "action": "lower the learning rate",
        "lr": (lr / LR_REDUCTION) if lr else None,
        "current_lr": lr,
        "message": f"lower lr about {LR_REDUCTION:g}x (or add warmup / gradient clipping); {why}",
    }
    if ev.lr_at_event is not None:
        rec["lr_at_blowup"] = ev.lr_at_event
    if lr:
        args = _lr_args([lr / LR_REDUCTION, lr / LR_REDUCTION_STRONG]) + _eps_args([REPORT_EPS_CANDIDATES[0]])
        rec["verify"] = replay_command(ev, run, args)
        rec["replay"] = replay_plan(ev, list(REPORT_EPS_CANDIDATES[:2]), [lr / LR_REDUCTION, lr / LR_REDUCTION_STRONG])
    return rec


def replay_plan(ev: Evidence, eps_values: list[float], lr_values: list[float]) -> dict[str, Any] | None:
    """What ``--verify`` replays: the start checkpoint, its own settings, and single changes — the
    eps candidates and the lr reductions (both causes' fixes, so the outcome can tell them apart)."""
    path = getattr(ev.start, "path", None) if ev.start is not None else None
    if not path or ev.lr is None or ev.start is None:
        return None
    return {
        "checkpoint": path,
        "start_step": int(ev.start.step),
        "original": {"eps": ev.eps, "beta2": ev.beta2, "lr": ev.lr},
        "eps": [float(e) for e in eps_values],
        "lr": [float(x) for x in lr_values],
    }
