"""One policy for the hyperparameters a checkpoint may not hold (issue 13; docs/architecture.md, "Contracts").

Every tensor's lr, β1, β2, eps and weight decay carries where its value came from, the
``<name>_source`` keys of ``adamdiag.inspect/1``:

* ``"file"``    — read from the checkpoint (a torch param group, a TF graph constant, a Keras config);
* ``"default"`` — not stored, and the reader knows which framework wrote the file: that framework's
  constructor default is used *and said so* in a warning (Keras ``.weights.h5`` / TF2 checkpoints
  keep no β1/β2/eps). The statistics use it; ``--assume-*`` replaces it;
* ``"user"``    — not stored (or only a framework default), and the user gave ``--assume-lr`` /
  ``--assume-beta2`` / ``--assume-eps``: used, and listed in the output;
* ``"unknown"`` — not stored and nothing assumed: the value is NaN (``null`` in JSON) and every
  statistic that needs it is ``null`` too (``analysis.moments.STAT_NEEDS``). Never a silent default.

A value the file stores is never replaced by an assumption (a warning says the assumption was not
used): the file is the truth about its own run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from adamdiag.errors import InputError

HYPER_NAMES = ("lr", "beta1", "beta2", "eps", "weight_decay")
SOURCES = ("file", "default", "user", "unknown")
# the command-line flag that supplies each assumable value
FLAGS = {"lr": "--assume-lr", "beta2": "--assume-beta2", "eps": "--assume-eps"}
# how every warning of :func:`apply` starts (scan lifts these into the run's warnings)
PREFIX = "hyperparameters: "


@dataclass(frozen=True)
class Assumptions:
    """Values the user gives for hyperparameters a checkpoint does not hold (``--assume-*``)."""

    lr: float | None = None
    beta2: float | None = None
    eps: float | None = None

    def given(self) -> dict[str, float]:
        """The assumed values, by hyperparameter name (those the user gave)."""
        return {k: v for k, v in (("lr", self.lr), ("beta2", self.beta2), ("eps", self.eps)) if v is not None}

    def validate(self) -> Assumptions:
        """Itself, after checking each value is one Adam can run with; InputError (one line) otherwise."""
        ok = {
            "lr": lambda x: math.isfinite(x) and x > 0,
            "beta2": lambda x: 0.0 <= x < 1.0,
            "eps": lambda x: math.isfinite(x) and x > 0,
        }
        for k, x in self.given().items():
            if not ok[k](x):
                want = "in [0, 1)" if k == "beta2" else "a positive finite number"
                raise InputError(f"{FLAGS[k]} must be {want}, got {x:g}")
        return self


def sources_of(hyper: dict[str, Any]) -> dict[str, str]:
    """The source of every hyperparameter of a reader's hyper dict: the reader's own ``sources``
    where it gave one, else "file" for a finite value and "unknown" for a missing or NaN one."""
    given = hyper.get("sources") or {}
    out = {}
    for k in HYPER_NAMES:
        s = given.get(k)
        if s not in SOURCES:
            v = hyper.get(k)
            s = "file" if isinstance(v, int | float) and math.isfinite(v) else "unknown"
        out[k] = s
    return out


# What torch.optim.Adam's constructor accepts (it raises on anything else): a stored value outside
# these cannot be what an Adam run used — the file is damaged, or not an Adam state.
DOMAIN = {
    "lr": ("≥ 0", lambda x: x >= 0.0),
    "beta1": ("in [0, 1)", lambda x: 0.0 <= x < 1.0),
    "beta2": ("in [0, 1)", lambda x: 0.0 <= x < 1.0),
    "eps": ("≥ 0", lambda x: x >= 0.0),
}


def check_domain(entries: Iterable[Any], path: object) -> None:
    """InputError (one line) when a checkpoint stores a finite lr, β1, β2 or eps that Adam refuses
    (β2 = 1.5, eps < 0): the statistics would divide by a negative 1-β2^t or take its square root.
    Run after :func:`apply` (NaN / missing values are "unknown" there, never checked here)."""
    for e in entries:
        if getattr(e, "shape", ()) is None:
            continue
        src = e.hyper.get("sources") or {}
        for k, (rule, ok) in DOMAIN.items():
            x = e.hyper.get(k)
            if src.get(k) == "file" and isinstance(x, int | float) and math.isfinite(x) and not ok(x):
                raise InputError(
                    f"{path}: stores {k}={x:g} (param group {getattr(e, 'group', '?')}), which Adam does not accept "
                    f"({k} must be {rule}): the file is damaged or holds no Adam state"
                )


def apply(entries: Iterable[Any], assume: Assumptions | None, warnings: list[str]) -> None:
    """Complete every entry's ``hyper["sources"]`` and put the user's assumptions in, in place.

    ``entries``: the reader's ``_Entry`` objects (their ``hyper`` dicts may be shared between
    entries of a group: each entry gets its own copy where something changes). Adds one warning
    per assumption used (or not used: the file stores the value) and one naming what stays unknown.
    """
    given = (assume or Assumptions()).given()
    used: dict[str, int] = {}
    stored: dict[str, set[float]] = {}
    unknown: dict[str, int] = {}
    for e in entries:
        if getattr(e, "shape", ()) is None:  # no state: never yielded, nothing is computed from it
            continue
        h = dict(e.hyper)
        src = sources_of(h)
        for k, x in given.items():
            if src[k] in ("unknown", "default"):
                h[k], src[k] = float(x), "user"
                used[k] = used.get(k, 0) + 1
            else:
                stored.setdefault(k, set()).add(float(h[k]))
        for k in HYPER_NAMES:
            if src[k] == "unknown":
                h[k] = math.nan  # never a number nobody stated
                unknown[k] = unknown.get(k, 0) + 1
        h["sources"] = src
        e.hyper = h
    for k, x in given.items():
        if k in used:
            warnings.append(
                f"{PREFIX}{k}={x:g} assumed ({FLAGS[k]}) for {used[k]} tensor(s) whose checkpoint does not store it"
            )
        if k in stored:
            vals = ", ".join(f"{v:g}" for v in sorted(stored[k])[:3])
            warnings.append(
                f"{PREFIX}{FLAGS[k]} {x:g} not used for {'any' if k not in used else 'the other'} tensor(s): the "
                f"checkpoint stores {k} ({vals})"
            )
    if unknown:
        flags = [FLAGS[k] for k in unknown if k in FLAGS]
        hint = f"; give {' / '.join(flags)} to use a value" if flags else ""
        warnings.append(
            f"{PREFIX}unknown (not in the checkpoint): {', '.join(f'{k} ({n} tensor(s))' for k, n in unknown.items())}: "
            f"statistics that need {'it' if len(unknown) == 1 else 'them'} are null{hint}"
        )


__all__ = ["DOMAIN", "FLAGS", "HYPER_NAMES", "PREFIX", "SOURCES", "Assumptions", "apply", "check_domain", "sources_of"]
