"""Pure analysis of a replay: spikes, fidelity against the log, the verdict; and the result object.

No torch, no I/O. The result serializes to the ``adamdiag.replay/1`` JSON contract (DESIGN.md); the
renderers (:mod:`adamdiag.render.replay`) only format it.

Spike rule (used for the replayed curves *and* to find the blowup in the log, so both are judged
alike): the reference is the logged loss over the last ``REFERENCE_POINTS`` logged steps up to the
checkpoint (the level the run had reached before the replayed stretch): its median ``m`` and robust
scale ``s`` = 1.4826·MAD of log(loss), floored at ``MIN_LOG_SCALE``. A curve spikes at the first step
whose loss is non-finite, or whose log-rise above log(m) exceeds max(log 2, SPIKE_Z·s) -- at least a
doubling, and well outside the run's own batch-to-batch noise -- *and* the median of that point and
the next ``SUSTAIN_POINTS - 1`` stays above 2·m, so one unlucky batch is not a blowup. The constants
are the blowup detector's (:mod:`adamdiag.analysis.signals`).

Fidelity rule: the replay with the checkpoint's own hyperparameters must reproduce the log, in two
parts. *Tracking*: over the logged steps of the first half of the way from the checkpoint to the
logged blowup (the whole window when none is logged) the maximum relative deviation
|replayed − logged| / |logged| must be ≤ ``FIDELITY_MAX_REL_DEV`` (1e-3: float32 replays on the same
kind of device agree to ~1e-6, bit for bit on the same machine, while a wrong data order, model or
loss is off by 0.3-1 from the first steps). *The event*: the replay must spike iff the log does, within
``spike_tolerance`` steps of the logged blowup. Why not track all the way to the blowup: the run is
already unstable before its loss shows it, and the instability amplifies rounding differences
exponentially. Measured on the shipped sample (checkpoint 600, blowup logged at 663): weights perturbed
by 1e-7 relative deviate by 6e-6 at step 630, 2e-3 at 650 and 0.5 at 662, and blow up at 665; a
replay of that CPU-trained run on an H200 likewise deviated by 0.5 at step 662. A replay on other
hardware reproduces the event, not the last digits of its approach.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from adamdiag.analysis.signals import BLOWUP_FACTOR, MIN_LOG_SCALE, SPIKE_Z
from adamdiag.results.report import json_safe

SCHEMA = "adamdiag.replay/1"
FIDELITY_MAX_REL_DEV = 1e-3
REFERENCE_POINTS = 50
SUSTAIN_POINTS = 3
MIN_REFERENCE_POINTS = 5
# Default replay length: to the logged blowup plus a margin, and never more than this many steps.
MAX_DEFAULT_STEPS = 2000
MIN_MARGIN = 20
# The tracked part of the way to a logged blowup, and the blowup-step tolerance as a fraction of it.
TRACK_FRACTION = 0.5
SPIKE_STEP_TOLERANCE_FRACTION = 0.1


@dataclass
class SpikeRule:
    """Reference level and threshold for calling a loss curve's rise a spike."""

    level: float  # median reference loss
    scale: float  # robust sigma (log space when ``log``, else absolute)
    threshold: float  # rise (log space when ``log``) that counts
    points: int  # how many logged points made the reference
    log: bool = True

    @property
    def factor(self) -> float:
        """Loss / level that counts as a spike (log rule)."""
        return math.exp(self.threshold) if self.log else float("nan")

    def _z(self, values: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(values) if self.log else values

    def first_spike(self, steps: np.ndarray, values: np.ndarray) -> int | None:
        """First step of ``values`` that spikes (see the module docstring), or None."""
        steps = np.asarray(steps)
        values = np.asarray(values, dtype=np.float64)
        if not len(values):
            return None
        ref = math.log(self.level) if self.log else self.level
        z = self._z(values)
        sustain = math.log(BLOWUP_FACTOR) if self.log else max(abs(self.level), self.scale)
        for i in range(len(values)):
            if not np.isfinite(values[i]):
                return int(steps[i])
            if self.log and values[i] <= 0:  # a loss at/below zero is not a rise
                continue
            if z[i] - ref > self.threshold:
                window = z[i : i + SUSTAIN_POINTS]
                window = np.where(np.isfinite(window), window, np.inf)  # a NaN after it only confirms it
                if float(np.median(window)) - ref > sustain:
                    return int(steps[i])
        return None


def reference_rule(
    logged_steps: np.ndarray, logged_values: np.ndarray, start_step: int, fallback: np.ndarray | None = None
) -> tuple[SpikeRule | None, str | None]:
    """Spike rule from the last REFERENCE_POINTS finite logged losses at steps <= ``start_step``;
    with too few of them, from ``fallback`` (the first replayed losses of the original). Returns the
    rule and a warning, if any."""
    steps = np.asarray(logged_steps)
    vals = np.asarray(logged_values, dtype=np.float64)
    sel = vals[(steps <= start_step) & np.isfinite(vals)][-REFERENCE_POINTS:]
    warning = None
    if len(sel) < MIN_REFERENCE_POINTS:
        fb = np.asarray(fallback if fallback is not None else [], dtype=np.float64)
        fb = fb[np.isfinite(fb)][:REFERENCE_POINTS]
        if len(fb) < MIN_REFERENCE_POINTS:
            return None, "too few logged losses before the checkpoint to set a reference level"
        warning = (
            f"only {len(sel)} logged losses at or before step {start_step}; the spike reference uses "
            f"the first {len(fb)} replayed losses of the original settings"
        )
        sel = fb
    if (sel > 0).all():
        z = np.log(sel)
        med = float(np.median(z))
        scale = max(1.4826 * float(np.median(np.abs(z - med))), MIN_LOG_SCALE)
        return SpikeRule(
            level=math.exp(med), scale=scale, threshold=max(math.log(BLOWUP_FACTOR), SPIKE_Z * scale), points=len(sel)
        ), warning
    med = float(np.median(sel))
    scale = max(1.4826 * float(np.median(np.abs(sel - med))), 0.01 * abs(med), 1e-12)
    return SpikeRule(
        level=med, scale=scale, threshold=max(SPIKE_Z * scale, abs(med)), points=len(sel), log=False
    ), warning


def default_steps(start_step: int, logged_spike: int | None, last_logged: int | None) -> tuple[int | None, str]:
    """Replay length when --steps is not given: to the logged blowup plus a margin (not past the end
    of the log), else to the last logged step; capped at MAX_DEFAULT_STEPS. (None, why) if impossible."""
    if logged_spike is not None:
        gap = logged_spike - start_step
        if gap > MAX_DEFAULT_STEPS:
            return None, (
                f"the logged blowup at step {logged_spike} is {gap} steps after the checkpoint "
                f"(default limit {MAX_DEFAULT_STEPS}); pass --steps or start from a later checkpoint"
            )
        n = gap + max(MIN_MARGIN, gap // 10)
        if last_logged is not None and last_logged >= logged_spike:
            n = min(n, last_logged - start_step)
        return n, f"to the logged blowup at step {logged_spike} + margin"
    if last_logged is None or last_logged <= start_step:
        return None, f"no logged loss after step {start_step}; pass --steps"
    return min(
        last_logged - start_step, MAX_DEFAULT_STEPS
    ), "to the last logged step (no blowup logged after the checkpoint)"


@dataclass
class Fidelity:
    """Does the replay with the original settings reproduce the log?"""

    max_rel_dev: float  # over logged steps before the logged blowup; NaN when none to compare
    reproduced: bool
    threshold: float = FIDELITY_MAX_REL_DEV
    compared_steps: int = 0
    max_rel_dev_step: int | None = None
    logged_spike_step: int | None = None
    replayed_spike_step: int | None = None
    message: str = ""
    tracked_until: int | None = None  # last step of the tracking window (see the module docstring)
    spike_tolerance: int | None = None  # |replayed - logged blowup step| allowed


def tracking_window_end(start_step: int, logged_spike: int | None, end_step: int) -> int:
    """Last step whose logged loss the replay must match to FIDELITY_MAX_REL_DEV.

    >>> tracking_window_end(600, 663, 700), tracking_window_end(600, None, 700)
    (631, 700)
    """
    if logged_spike is None:
        return end_step
    return start_step + max(1, int((logged_spike - start_step) * TRACK_FRACTION))


def spike_step_tolerance(start_step: int, logged_spike: int, logged_steps: np.ndarray) -> int:
    """How far the replayed blowup may land from the logged one: a tenth of the way from the
    checkpoint (the rounding-amplified timing shift; 2 steps at 63 on the sample), and never less
    than the logging interval there (the log cannot place the blowup more precisely).

    >>> spike_step_tolerance(600, 663, np.arange(600, 700)), spike_step_tolerance(0, 100, np.arange(0, 200, 10))
    (7, 10)
    """
    before = np.asarray(logged_steps)[np.asarray(logged_steps) < logged_spike]
    interval = int(logged_spike - before.max()) if len(before) else 1
    return max(interval, math.ceil((logged_spike - start_step) * SPIKE_STEP_TOLERANCE_FRACTION))


def _rel_dev(
    rep: dict[int, float], logged: dict[int, float], steps: list[int], shift: int = 0
) -> tuple[float, int | None, int]:
    worst, at, n = 0.0, None, 0
    for t in steps:
        if t + shift not in logged or t not in rep:
            continue
        a, b = rep[t], logged[t + shift]
        if not math.isfinite(b):
            continue
        d = abs(a - b) / max(abs(b), 1e-12) if math.isfinite(a) else math.inf
        n += 1
        if d > worst or at is None:
            worst, at = d, t
    return (worst if n else math.nan), at, n


def check_fidelity(
    start_step: int,
    replayed: list[float],
    logged_steps: np.ndarray,
    logged_values: np.ndarray,
    rule: SpikeRule | None,
    end_step: int,
) -> Fidelity:
    """Compare the original settings' replay with the log over steps start+1..end_step (the rule
    in the module docstring: track the log, then reproduce the blowup)."""
    rep = {start_step + 1 + i: float(x) for i, x in enumerate(replayed)}
    win = (logged_steps > start_step) & (logged_steps <= end_step)
    lsteps, lvals = np.asarray(logged_steps)[win], np.asarray(logged_values, dtype=np.float64)[win]
    logged = {int(s): float(v) for s, v in zip(lsteps, lvals)}
    logged_spike = rule.first_spike(lsteps, lvals) if rule is not None else None
    rsteps = np.array(sorted(rep), dtype=np.int64)
    replayed_spike = rule.first_spike(rsteps, np.array([rep[t] for t in rsteps])) if rule is not None else None
    track_end = tracking_window_end(start_step, logged_spike, end_step)
    tracked = [t for t in sorted(logged) if t <= track_end and (logged_spike is None or t < logged_spike)]
    dev, at, n = _rel_dev(rep, logged, tracked)
    f = Fidelity(
        max_rel_dev=dev,
        reproduced=False,
        compared_steps=n,
        max_rel_dev_step=at,
        logged_spike_step=logged_spike,
        replayed_spike_step=replayed_spike,
        tracked_until=track_end,
    )
    thr = FIDELITY_MAX_REL_DEV
    where = (
        f"up to step {track_end} (half way to the logged blowup at step {logged_spike})"
        if logged_spike is not None
        else "in the replayed steps"
    )
    if not logged:
        f.message = f"no logged loss between steps {start_step + 1} and {end_step} to compare the replay with"
        return f
    if n and not dev <= thr:
        f.message = (
            f"the replay does not reproduce the logged loss: max relative deviation {dev:.3g} at step {at} "
            f"{where} (threshold {thr:g})"
        )
        hints = []
        for shift in (-1, 1):
            d2, _, n2 = _rel_dev(rep, logged, tracked, shift)
            if n2 and d2 <= thr:
                hints.append(
                    f"the replay matches the log shifted by {shift:+d} step: pass --log-step-offset "
                    f"{shift:+d} (or log loss(model, batch(t)) computed before update t at step t)"
                )
        hint = (
            hints[0]
            if hints
            else (
                "check that batch(t) yields the batch of optimizer step t (same data order, "
                "1-based), that the model, loss and clipping match the run, and the device it trained on (--device)"
            )
        )
        f.message += f"; {hint}"
        return f
    if logged_spike is not None and replayed_spike is None:
        f.message = (
            f"the replay does not reproduce the logged blowup at step {logged_spike} "
            f"(max relative deviation {dev:.3g} {where})"
        )
        return f
    if logged_spike is None and replayed_spike is not None:
        f.message = f"the replay spikes at step {replayed_spike} but the log does not"
        return f
    if logged_spike is not None and replayed_spike is not None:
        tol = f.spike_tolerance = spike_step_tolerance(start_step, logged_spike, np.asarray(logged_steps))
        if abs(replayed_spike - logged_spike) > tol:
            when = "before" if replayed_spike < logged_spike else "after"
            f.message = (
                f"the replay blows up at step {replayed_spike}, {abs(replayed_spike - logged_spike)} steps "
                f"{when} the logged blowup at step {logged_spike} (tolerance {tol})"
            )
            return f
    f.reproduced = True
    if n:
        f.message = (
            f"the original settings reproduce the log: max relative deviation {dev:.3g} over {n} logged "
            f"steps {where} (threshold {thr:g})"
        )
    else:
        f.message = (
            f"no logged loss {where} inside the replay; fidelity rests on the reproduced blowup at step "
            f"{replayed_spike}"
        )
    if logged_spike is not None:
        f.message += (
            f"; blowup reproduced at step {replayed_spike} (logged: {logged_spike}, tolerance {f.spike_tolerance})"
        )
    return f


@dataclass
class VariantOutcome:
    """One replayed variant, summarized (the JSON contract's fields first)."""

    name: str
    eps: float
    beta2: float
    lr: float
    max_loss: float
    final_loss: float
    spike: bool
    spike_step: int | None
    max_update_rms: float
    min_sqrt_vhat: float = math.nan  # min over steps of sqrt(mean v̂)
    max_frac_eps_dominated: float = math.nan  # max over steps of the fraction with √v̂ < eps
    steps_replayed: int = 0
    nonfinite_step: int | None = None
    losses: list[float] = field(default_factory=list)


def _nanmax(xs: list[float]) -> float:
    a = np.asarray(xs, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.max()) if len(a) else math.nan


def _nanmin(xs: list[float]) -> float:
    a = np.asarray(xs, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.min()) if len(a) else math.nan


def summarize_variant(
    name: str,
    eps: float,
    beta2: float,
    lr: float,
    start_step: int,
    losses: list[float],
    update_rms: list[float],
    sqrt_vhat: list[float],
    frac_eps: list[float],
    rule: SpikeRule | None,
) -> VariantOutcome:
    """Summary numbers of one replayed curve; a non-finite loss makes max_loss infinite."""
    steps = np.arange(start_step + 1, start_step + 1 + len(losses))
    arr = np.asarray(losses, dtype=np.float64)
    nonfinite = int(steps[~np.isfinite(arr)][0]) if len(arr) and not np.isfinite(arr).all() else None
    spike_step = rule.first_spike(steps, arr) if rule is not None else nonfinite
    return VariantOutcome(
        name=name,
        eps=float(eps),
        beta2=float(beta2),
        lr=float(lr),
        max_loss=(math.inf if nonfinite is not None else _nanmax(losses)),
        final_loss=float(arr[-1]) if len(arr) else math.nan,
        spike=spike_step is not None,
        spike_step=spike_step,
        max_update_rms=_nanmax(update_rms),
        min_sqrt_vhat=_nanmin(sqrt_vhat),
        max_frac_eps_dominated=_nanmax(frac_eps),
        steps_replayed=len(losses),
        nonfinite_step=nonfinite,
        losses=[float(x) for x in losses],
    )


def conclude(variants: list[VariantOutcome]) -> tuple[str, int, str]:
    """(conclusion, exit code, one sentence). 0: some alternate avoids the spike the original
    reproduces (or nothing spiked); 1: every alternate spikes too."""
    orig, alts = variants[0], variants[1:]
    if not orig.spike:
        return "no_blowup", 0, "the original settings do not spike in the replayed steps: nothing to fix here"
    good = [v for v in alts if not v.spike]
    if good:
        names = ", ".join(v.name for v in good)
        return (
            "fixed",
            0,
            f"{names} avoid{'s' if len(good) == 1 else ''} the blowup that the original settings reproduce at step {orig.spike_step}",
        )
    return (
        "not_fixed",
        1,
        f"every variant spikes like the original (step {orig.spike_step}); none of them fixes this run",
    )


@dataclass
class ReplayResult:
    """Everything a replay produced; renderers format it, nothing is recomputed."""

    checkpoint: str
    start_step: int
    steps: int
    fidelity: Fidelity
    variants: list[VariantOutcome]
    conclusion: str = ""
    exit_code: int = 0
    summary: str = ""
    tool_version: str = ""
    run: str | None = None
    loss_tag: str = "train/loss"
    entry: str = ""
    device: str = "cpu"
    mode: str = "batched"
    clip_grad_norm: float | None = None
    reference: dict[str, Any] = field(default_factory=dict)
    logged: dict[str, list] = field(default_factory=lambda: {"steps": [], "values": []})
    warnings: list[str] = field(default_factory=list)
    forced: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The ``adamdiag.replay/1`` object (contract fields first), JSON-safe."""
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "checkpoint": self.checkpoint,
            "start_step": self.start_step,
            "steps": self.steps,
            "fidelity": asdict(self.fidelity),
            "variants": [asdict(v) for v in self.variants],
        }
        for k in (
            "conclusion",
            "exit_code",
            "summary",
            "tool_version",
            "run",
            "loss_tag",
            "entry",
            "device",
            "mode",
            "clip_grad_norm",
            "reference",
            "logged",
            "warnings",
            "forced",
        ):
            out[k] = getattr(self, k)
        return json_safe(out)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplayResult:
        """Inverse of :meth:`to_dict` (nulls that stood for non-finite numbers come back as NaN/inf)."""
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not an {SCHEMA} object (schema={data.get('schema')!r})")

        def restore(d: dict[str, Any], names: set[str]) -> dict[str, Any]:
            d = dict(d)
            for k in list(d):
                if k.endswith("_nonfinite"):
                    base = k[: -len("_nonfinite")]
                    d[base] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[d.pop(k)]
            return {k: v for k, v in d.items() if k in names}

        fid = Fidelity(**restore(data["fidelity"], set(Fidelity.__dataclass_fields__)))
        variants = []
        for v in data["variants"]:
            v = restore(v, set(VariantOutcome.__dataclass_fields__))
            v["losses"] = [math.nan if x is None else x for x in v.get("losses", [])]
            variants.append(VariantOutcome(**v))
        rest = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k not in ("fidelity", "variants")}
        return cls(fidelity=fid, variants=variants, **rest)
