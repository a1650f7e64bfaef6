"""fastai's optimizer state (``learn.save(name)``, ``SaveModelCallback(with_opt=True)``: ``models/<name>.pth`` =
``{"model": state_dict, "opt": opt.state_dict()}``), read as the torch optimizer state it is equivalent to.

fastai's ``Optimizer.state_dict()`` is ``{"state": [one dict per parameter, in the order of its param groups],
"hypers": [one dict per param group]}`` (``hypers`` a fastcore ``L``: read as a list by the inert loader). Its
``Adam`` keeps ``grad_avg`` (m, with dampening: m = β1·m + (1-β1)·g) and ``sqr_avg`` (v) and a ``step`` count
per parameter, and names its hyperparameters ``lr``, ``mom`` (β1), ``sqr_mom`` (β2, default **0.99**), ``eps``
(default **1e-5**), ``wd``; its update is torch's (eps added to √v̂), weight decay decoupled by default
(``decouple_wd=True``, not stored). The state keeps no map from parameters to groups: with several groups (a
splitter's discriminative learning rates) a value the groups disagree on is unknown (NaN), not guessed.

fastai's other optimizers that keep ``grad_avg``/``sqr_avg`` are told by their hyperparameters (RAdam ``beta``,
QHAdam ``nu_1``, Lookahead ``k``...) and refused; LAMB stores exactly Adam's: said in a warning.
"""

from __future__ import annotations

import math
from typing import Any

from adamdiag.errors import InputError

ADAM_HYPERS = {"lr", "mom", "sqr_mom", "eps", "wd"}


def is_fastai_state(x: Any) -> bool:
    """A fastai ``Optimizer.state_dict()``: a list of per-parameter dicts with ``sqr_avg`` and a list of hypers."""
    if not isinstance(x, dict) or set(x) != {"state", "hypers"}:
        return False
    st, hy = x.get("state"), x.get("hypers")
    return (
        isinstance(st, list)
        and isinstance(hy, list)
        and bool(hy)
        and all(isinstance(h, dict) for h in hy)
        and any(isinstance(s, dict) and "sqr_avg" in s for s in st)
    )


def _same(hypers: list[dict], key: str) -> float:
    vals = {float(h[key]) for h in hypers if isinstance(h.get(key), (int, float)) and not isinstance(h.get(key), bool)}
    return vals.pop() if len(vals) == 1 and all(key in h for h in hypers) else math.nan


def to_torch_state(x: dict, where: str, warnings: list[str]) -> dict:
    """The torch ``optimizer.state_dict()`` a fastai Adam state stands for (one param group)."""
    hypers = x["hypers"]
    keys = set().union(*(set(h) for h in hypers))
    extra = sorted(keys - ADAM_HYPERS)
    if extra:
        raise InputError(
            f"{where}: a fastai optimizer with hyperparameters {', '.join(extra)} beside Adam's (RAdam, QHAdam, "
            "Lookahead/ranger...): only fastai's Adam is read"
        )
    state: dict[int, dict] = {}
    for i, s in enumerate(x["state"]):
        if not isinstance(s, dict) or "grad_avg" not in s or "sqr_avg" not in s:
            continue  # a parameter that never stepped (no slots yet)
        step = s.get("step")
        state[i] = {"exp_avg": s["grad_avg"], "exp_avg_sq": s["sqr_avg"], "step": step}
    group = {
        "params": list(range(len(x["state"]))),
        "lr": _same(hypers, "lr"),
        "betas": (_same(hypers, "mom"), _same(hypers, "sqr_mom")),
        "eps": _same(hypers, "eps"),
        "weight_decay": _same(hypers, "wd"),
        "amsgrad": False,
        "decoupled_weight_decay": True,  # fastai's default (decouple_wd=True), not stored
        "maximize": False,
    }
    differ = [k for k in ("lr", "mom", "sqr_mom", "eps", "wd") if math.isnan(_same(hypers, k))]
    warnings.append(
        f"fastai optimizer state ({where}): grad_avg/sqr_avg read as m/v, mom/sqr_mom as β1/β2 (fastai's defaults "
        "0.9/0.99, eps 1e-5); weight decay taken as decoupled (fastai's decouple_wd=True, not stored); LAMB "
        "stores the same state and hyperparameters as Adam"
        + (
            f"; its {len(hypers)} param groups differ in {', '.join(differ)}, and the state does not say which "
            "parameter is in which group: unknown there"
            if differ
            else ""
        )
    )
    return {"state": state, "param_groups": [group]}
