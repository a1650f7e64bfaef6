"""The framework-neutral replay entry (issue 14): the user's own code replays, adamdiag judges.

A neutral entry returns ``{"run": run}``; ``run(checkpoint, variant, steps)`` trains ``steps`` updates
from ``checkpoint`` with the variant's hyperparameters in the user's framework (TensorFlow, JAX, numpy)
and returns, per replayed step t (entry i = update start+1+i)::

    {"loss": [...],                         # the loss of update t's batch before update t (as logged)
     "g2":   {"global": [...], name: [...]}, # mean g² of the gradient update t feeds into v
     "vhat": {"global": [...], name: [...]}, # mean v̂_{t-1}: bias-corrected v before update t
     # optional, per step:
     "sqrt_vhat_median": {"global": [...], name: [...]},  # median √v̂_t after update t
     "update_rms": [...], "frac_eps": [...]}

This module turns that into the very :class:`~adamdiag.replay.engine.Curve` objects the torch engines
produce, so fidelity, blowups, outcomes, the conclusion, rendering, exit codes and ``scan --verify`` are
one code path (:func:`adamdiag.replay.runner.analyse`). It also reads the start step and original
hyperparameters of a checkpoint that is not a torch one (TF/Keras readers, or the entry's ``original``)
without importing any ML framework.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamdiag.errors import InputError
from adamdiag.replay.protocol import NeutralSpec, Variant
from adamdiag.replay.result import ScopeSeries

if TYPE_CHECKING:
    from adamdiag.io.checkpoints import OptimizerCheckpoint
    from adamdiag.io.checkpoints.hyper import Assumptions
    from adamdiag.replay.checkpoint import ReplayCheckpoint
    from adamdiag.replay.engine import Curve

# What to tell a user who gave a checkpoint only a neutral entry can replay (exit 2, one line).
NEUTRAL_ENTRY_HINT = (
    "pass --entry file.py:function returning {'run': run}, with run(checkpoint, variant, steps) -> "
    "{'loss': [...], 'g2': {'global': [...]}, 'vhat': {'global': [...]}} written in your framework "
    "(docs/replay.md, 'Any framework'; examples/tf1_replay_entry.py)"
)
MEDIAN_FALLBACK_NOTE = (
    "the entry gives no sqrt_vhat_median: √(mean v̂_(t-1)) stands in for the median √v̂ in the at_risk "
    "rule (a mean leans toward the largest elements; return the median to be exact)"
)


def foreign_checkpoint(path: Path, assume: Assumptions | None = None) -> OptimizerCheckpoint | None:
    """A TensorFlow/Keras checkpoint opened by adamdiag's own readers (no TensorFlow), else None;
    ``assume`` (``--assume-*``) fills what it does not store (``io.checkpoints.hyper``)."""
    from adamdiag.io.checkpoints import hyper
    from adamdiag.io.checkpoints.tf import open_foreign

    ck = open_foreign(Path(path))
    if ck is not None:
        hyper.apply(ck.entries, assume, ck.warnings)
    return ck


def neutral_checkpoint(
    path: Path, foreign: OptimizerCheckpoint | None, spec: NeutralSpec
) -> tuple[ReplayCheckpoint, list[str]]:
    """The start step and original eps/β2/lr of a neutral replay of a checkpoint that is not a torch
    one, as a weightless :class:`ReplayCheckpoint` (param group 0 carries the hyperparameters, as for
    torch), and warnings. Per value, first wins: what the TF/Keras reader read from the file, the
    entry's ``original``, the reader's assumed framework defaults (warned)."""
    from adamdiag.replay.checkpoint import ReplayCheckpoint

    given = dict(spec.original or {})
    warns: list[str] = []
    known: dict[str, float] = {}
    defaults: dict[str, float] = {}
    beta1 = 0.9
    if foreign is not None:
        e = next((e for e in foreign.entries if e.shape is not None), None)
        h = e.hyper if e is not None else {}
        sources = h.get("sources") or {}
        for k in ("eps", "beta2", "lr"):
            src = sources.get(k, "file")
            if h.get(k) is None or src == "unknown" or not math.isfinite(float(h[k])):
                continue  # not stored, nothing assumed: the entry's original must say
            # the file's value, or the user's --assume-*: known; a framework default: warned below
            (known if src in ("file", "user") else defaults)[k] = float(h[k])
        if h.get("beta1") is not None:
            beta1 = float(h["beta1"])
        if foreign.step is not None:
            known["step"] = foreign.step
    for k, x in given.items():
        if k in known and not math.isclose(known[k], x, rel_tol=1e-6):
            warns.append(
                f"the entry's original {k}={x:g} differs from the checkpoint's {known[k]:g}; using the checkpoint's"
            )
    values = {**defaults, **given, **known}
    for k, x in defaults.items():
        if k not in given and k not in known:
            warns.append(f"original {k}={x:g} is the framework's default, not read from the checkpoint")
    missing = [k for k in ("eps", "beta2", "lr", "step") if k not in values]
    if missing:
        what = "no reader knows this checkpoint" if foreign is None else "the checkpoint does not say"
        raise InputError(
            f"{path}: {what} and the entry gives no original {', '.join(missing)}: add "
            "'original': {'eps': ..., 'beta2': ..., 'lr': ..., 'step': ...} to the entry's dict"
        )
    group = {"lr": values["lr"], "betas": (beta1, values["beta2"]), "eps": values["eps"], "weight_decay": 0.0}
    framework = "neutral" if foreign is None else foreign.layout
    ck = ReplayCheckpoint(
        path=Path(path),
        step=int(values["step"]),
        model_state={},
        optim_state={"state": {}, "param_groups": [group]},
        framework=framework,
    )
    return ck, warns


def variant_dict(variant: Variant, original: Variant) -> dict[str, Any]:
    """What ``run`` gets: the variant's settings and its lr relative to the original (for schedules)."""
    return {
        "name": variant.name,
        "eps": variant.eps,
        "beta2": variant.beta2,
        "lr": variant.lr,
        "lr_scale": variant.lr / original.lr if original.lr else 1.0,
        "original": (variant.eps, variant.beta2, variant.lr) == (original.eps, original.beta2, original.lr),
    }


def _floats(x: Any, what: str, n: int | None, where: str) -> list[float]:
    if isinstance(x, (str, bytes)) or not isinstance(x, Sequence) and not hasattr(x, "tolist"):
        raise InputError(f"{where}: {what} must be a list of numbers, got {type(x).__name__}")
    try:
        out = [float(v) for v in (x.tolist() if hasattr(x, "tolist") else x)]
    except (TypeError, ValueError):
        raise InputError(f"{where}: {what} must be a list of numbers") from None
    if n is not None and len(out) != n:
        raise InputError(f"{where}: {what} has {len(out)} values for {n} losses (one per replayed step)")
    return out


def curve_from_result(raw: Any, where: str, steps: int, eps: float, named: list[str]) -> tuple[Curve, list[str]]:
    """Validate ``run``'s result and build the variant's :class:`Curve` (and notes for the report).

    Scopes judged for at_risk: "global", then the ``named`` tensors (they must be in g2 and vhat), or,
    when none are named, every tensor the entry reports (it chose to report them)."""
    from adamdiag.replay.engine import Curve

    if not isinstance(raw, dict):
        raise InputError(f"{where} must return a dict with loss, g2, vhat; got {type(raw).__name__}")
    missing = [k for k in ("loss", "g2", "vhat") if k not in raw]
    if missing:
        raise InputError(f"{where} returned no {', '.join(missing)} (keys: {', '.join(map(str, raw)) or 'none'})")
    losses = _floats(raw["loss"], "loss", None, where)
    n = len(losses)
    if n > steps:
        raise InputError(f"{where} returned {n} losses for {steps} steps")
    per: dict[str, dict[str, list[float]]] = {}
    for key in ("g2", "vhat", "sqrt_vhat_median"):
        d = raw.get(key, {})
        if not isinstance(d, dict) or (key != "sqrt_vhat_median" and "global" not in d):
            raise InputError(f"{where}: {key} must be a dict with a 'global' list (and one per tensor, optional)")
        per[key] = {str(k): _floats(v, f"{key}[{k!r}]", n, where) for k, v in d.items()}
    both = [k for k in per["g2"] if k in per["vhat"]]
    scopes = ["global", *named] if named else ["global", *(k for k in both if k != "global")]
    absent = [s for s in scopes if s not in both]
    if absent:
        raise InputError(f"{where}: no g2/vhat for tensor {absent[0]!r} (it gave: {', '.join(both)})")
    notes = []
    moments = {}
    for s in scopes:
        g2, vp = per["g2"][s], per["vhat"][s]
        med = per["sqrt_vhat_median"].get(s)
        if med is None:
            med = [math.sqrt(v) if v >= 0 else math.nan for v in vp]
            notes.append(MEDIAN_FALLBACK_NOTE)
        moments[s] = ScopeSeries(g2, vp, med)
    g2, vp = per["g2"]["global"], per["vhat"]["global"]
    # ratio of global means when the entry gives no elementwise update RMS: only the report's max_update_rms
    rms = (
        _floats(raw["update_rms"], "update_rms", n, where)
        if "update_rms" in raw
        else [math.sqrt(a / max(b, eps * eps)) if b >= 0 else math.nan for a, b in zip(g2, vp)]
    )
    frac = _floats(raw["frac_eps"], "frac_eps", n, where) if "frac_eps" in raw else [math.nan] * n
    # √(mean v̂_t) after update t is the next step's v̂_{t-1}; the last step's is not returned
    sqrt_vhat = [math.sqrt(v) if v >= 0 else math.nan for v in vp[1:]] + ([math.nan] if n else [])
    curve = Curve(losses, rms, sqrt_vhat, frac, moments)
    finite = all(math.isfinite(x) for x in losses)
    # fewer steps than asked without a non-finite loss: the entry stopped early (its own budget)
    curve.truncated = n < steps and finite
    return curve.truncate_nonfinite(), list(dict.fromkeys(notes))


def replay_neutral(
    spec: NeutralSpec,
    checkpoint: Path,
    variants: list[Variant],
    original: Variant,
    steps: int,
    *,
    named: list[str],
    deadline: float | None,
    warnings: list[str],
    advance: Callable[[int], None] | None = None,
) -> list[Curve]:
    """Call ``run`` once per variant, in order; past ``deadline`` the rest get an empty, truncated
    curve (as the torch sequential path)."""
    from adamdiag.replay.engine import Curve

    out = []
    for v in variants:
        if deadline is not None and time.monotonic() > deadline:
            out.append(Curve(moments={k: ScopeSeries() for k in ["global", *named]}, truncated=True))
            if advance is not None:
                advance(steps)
            continue
        where = f"entry point {spec.entry}: run(..., {v.name}, {steps})"
        try:
            raw = spec.run(str(checkpoint), variant_dict(v, original), steps)
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - user code: one line, never a traceback
            raise InputError(f"{where} raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        curve, notes = curve_from_result(raw, where, steps, v.eps, named)
        warnings.extend(m for m in notes if m not in warnings)
        out.append(curve)
        if advance is not None:
            advance(steps)
    return out
