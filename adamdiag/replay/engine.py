"""Sequential replay with the real ``torch.optim.Adam``: the reference implementation.

One variant at a time: load the checkpoint's weights into the entry's model, build a real
``torch.optim.Adam`` (or AdamW semantics via ``decoupled_weight_decay``) with the checkpoint's state and
the variant's eps/beta2/lr, and run the training step exactly as the protocol defines it::

    loss = loss_fn(model, batch(t))      # the logged train/loss at step t (before update t)
    loss.backward(); clip_grad_norm_(...); opt.step()

The batched sweep (:mod:`adamdiag.replay.sweep`) is tested against this.

Per step and variant we also record (all over every element of every parameter):

- ``update_rms``: sqrt(mean(g² / max(v̂_{t-1}, eps²))) with g the (clipped) gradient Adam is about to
  use and v̂_{t-1} its bias-corrected second moment before the update (Wortsman et al. 2023; > 1
  means the gradient is far larger than Adam's estimate of it, as at a regrowth after v collapse);
- ``sqrt_vhat``: sqrt(mean(v̂_t)) after the update (how far v has decayed);
- ``frac_eps``: fraction of elements with √v̂_t < eps (where eps, not √v̂, sets the step);
- for the outcome rule (:func:`adamdiag.replay.result.risk_evidence`), globally and for each named
  tensor: ``g2_mean`` = mean g² of the gradient Adam uses, ``vhat_prev_mean`` = mean v̂_{t-1}, and
  ``median_sqrt_vhat`` = median √v̂_t (exact up to OUTCOME_MEDIAN_SAMPLE elements, else over an evenly
  strided sample that both engines take identically: see :func:`median_stride`).

A variant stops early once its blowup is decided (:class:`StopRule`), and all stop at a deadline
(a time budget): such a curve is ``truncated``.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from adamdiag.analysis.thresholds import OUTCOME_MEDIAN_SAMPLE
from adamdiag.errors import InputError
from adamdiag.replay.checkpoint import ReplayCheckpoint, load_model_weights, param_order
from adamdiag.replay.protocol import ReplaySpec, Variant, scheduled_lrs, variant_groups
from adamdiag.replay.result import ScopeSeries

if TYPE_CHECKING:
    import torch

# Progress appears only for replays that take longer than this (seconds): short ones stay quiet.
PROGRESS_AFTER_S = 2.0


# How often (steps) to ask whether a variant's blowup is decided; each ask runs the loss detector.
CHECK_EVERY = 16


@dataclass
class Curve:
    """What one variant's replay produced; entry i is step start+1+i. Truncated after the first
    non-finite loss (the run is over for that variant). ``moments``: "global" and each named tensor
    (see the module docstring); ``truncated``: stopped by the deadline before the planned steps."""

    losses: list[float] = field(default_factory=list)
    update_rms: list[float] = field(default_factory=list)
    sqrt_vhat: list[float] = field(default_factory=list)
    frac_eps: list[float] = field(default_factory=list)
    moments: dict[str, ScopeSeries] = field(default_factory=dict)
    truncated: bool = False

    def cut(self, n: int) -> Curve:
        """The first ``n`` steps."""
        return Curve(
            self.losses[:n],
            self.update_rms[:n],
            self.sqrt_vhat[:n],
            self.frac_eps[:n],
            {
                k: ScopeSeries(m.g2_mean[:n], m.vhat_prev_mean[:n], m.median_sqrt_vhat[:n])
                for k, m in self.moments.items()
            },
            self.truncated,
        )

    def truncate_nonfinite(self) -> Curve:
        for i, x in enumerate(self.losses):
            if not math.isfinite(x):
                return self.cut(i + 1)
        return self


@dataclass
class StopRule:
    """When a variant's replay may end before the planned steps.

    ``stop_after(losses)``: None while the variant has not blown up, else the number of steps after
    which its blowup step is settled (:meth:`adamdiag.replay.result.BlowupJudge.stop_after`);
    ``deadline``: a ``time.monotonic()`` value (a time budget) after which every variant stops and
    is marked truncated."""

    stop_after: Callable[[list[float]], int | None] | None = None
    deadline: float | None = None
    every: int = CHECK_EVERY

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline


def median_stride(numel: int) -> int:
    """Every how many elements the median √v̂ samples a scope of ``numel`` elements: 1 (exact) up to
    OUTCOME_MEDIAN_SAMPLE elements, else an even stride giving about that many (thresholds.py says why).

    >>> median_stride(1000), median_stride(3 * OUTCOME_MEDIAN_SAMPLE)
    (1, 3)
    """
    return max(1, -(-numel // OUTCOME_MEDIAN_SAMPLE))


class LazyProgress:
    """A rich progress bar on stderr that only appears once the work has taken PROGRESS_AFTER_S, and
    only when stderr is a terminal (logs and pipes stay clean)."""

    def __init__(self, total: int, description: str = "replaying", enabled: bool = True) -> None:
        self.total = total
        self.description = description
        self.enabled = enabled and sys.stderr.isatty()
        self.done = 0
        self.t0 = time.monotonic()
        self._bar: Any = None  # a rich Progress once shown
        self._task: Any = None

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is None and time.monotonic() - self.t0 > PROGRESS_AFTER_S:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            from adamdiag.console import stderr_console

            console = stderr_console()
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total, completed=self.done)
        elif self._bar is not None:
            self._bar.update(self._task, completed=self.done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> LazyProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def to_device(obj: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) batch to ``device``; other objects pass through."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def get_batch(spec: ReplaySpec, t: int, device: torch.device) -> Any:
    try:
        b = spec.batch(t)
    except Exception as e:  # noqa: BLE001 - user code
        raise InputError(f"entry point {spec.entry}: batch({t}) raised {type(e).__name__}: {e}") from None
    return to_device(b, device)


def check_loss(spec: ReplaySpec, loss: Any, t: int) -> None:
    import torch

    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        what = type(loss).__name__ if not isinstance(loss, torch.Tensor) else f"a tensor of shape {tuple(loss.shape)}"
        raise InputError(f"entry point {spec.entry}: loss(model, batch({t})) must return a scalar tensor, got {what}")
    if not loss.requires_grad:
        raise InputError(
            f"entry point {spec.entry}: loss(model, batch({t})) does not depend on the model's "
            "parameters (no grad); is the model in torch.no_grad() or are its parameters frozen?"
        )


def optimizer_groups(ckpt: ReplayCheckpoint, variant: Variant, device: torch.device) -> list[dict[str, Any]]:
    """The checkpoint's param groups with the variant's hyperparameters, made safe to run on
    ``device`` (capturable/differentiable are training-time options that change nothing numerically)."""
    groups = variant_groups(ckpt.param_groups, variant)
    for g in groups:
        g["capturable"] = bool(g.get("capturable", False)) and device.type == "cuda"
        g["differentiable"] = False
        if g.get("fused") and device.type not in ("cuda", "cpu"):
            g["fused"] = None
    return groups


def _named_params(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return dict(model.named_parameters())


def replay_one(
    spec: ReplaySpec,
    ckpt: ReplayCheckpoint,
    variant: Variant,
    steps: int,
    device: torch.device,
    progress: LazyProgress | None = None,
    *,
    named: list[str] | None = None,
    stop: StopRule | None = None,
) -> Curve:
    """Replay ``steps`` steps of one variant with the real torch.optim.Adam; ``named``: parameter
    names (model.named_parameters()) whose moments are recorded besides the global ones; ``stop``:
    when to end early (a decided blowup, a deadline)."""
    import torch

    model = spec.model
    load_model_weights(model, ckpt)
    model.to(device)
    order = param_order(ckpt, model)
    by_name = _named_params(model)
    groups = optimizer_groups(ckpt, variant, device)
    params_by_group = [[by_name[name] for name, _ in row] for row in order]
    opt = torch.optim.Adam(
        [
            {**{k: v for k, v in g.items() if k not in ("params", "param_names")}, "params": ps}
            for g, ps in zip(groups, params_by_group)
        ]
    )
    # Saved state ids -> positions 0..n-1 in the order above; deep copy so the checkpoint in memory is
    # never touched by the in-place updates (load_state_dict may keep the very same tensors).
    remap = {pid: i for i, (_, pid) in enumerate(p for row in order for p in row)}
    state = {remap[pid]: copy.deepcopy(st) for pid, st in ckpt.optim_state["state"].items() if pid in remap}
    sd_groups = []
    start = 0
    for g, row in zip(groups, order):
        g = {k: v for k, v in g.items() if k != "param_names"}
        g["params"] = list(range(start, start + len(row)))
        start += len(row)
        sd_groups.append(g)
    opt.load_state_dict({"state": state, "param_groups": sd_groups})
    params = [p for ps in params_by_group for p in ps]
    names = [name for row in order for name, _ in row]
    hyper = [(g["eps"], g["betas"][1]) for g, ps in zip(opt.param_groups, params_by_group) for _ in ps]
    # L2 weight decay (Adam, not AdamW) is part of the gradient Adam feeds into v: ±g + wd·p (the sign
    # is maximize's; it matters only next to the wd term)
    l2 = [
        (
            0.0 if g.get("decoupled_weight_decay", False) else float(g.get("weight_decay", 0.0) or 0.0),
            bool(g.get("maximize", False)),
        )
        for g, ps in zip(opt.param_groups, params_by_group)
        for _ in ps
    ]
    original_lrs = [float(g["lr"]) for g in ckpt.param_groups]
    variant_lrs = [float(g["lr"]) for g in groups]
    tracked = list(named or [])
    stride = median_stride(sum(p.numel() for p in params))

    curve = Curve(moments={k: ScopeSeries() for k in ["global", *tracked]})
    stop_at = steps
    for t in range(ckpt.step + 1, ckpt.step + steps + 1):
        batch = get_batch(spec, t, device)
        opt.zero_grad(set_to_none=True)
        try:
            loss = spec.loss(model, batch)
        except Exception as e:  # noqa: BLE001 - user code
            raise InputError(
                f"entry point {spec.entry}: loss(model, batch({t})) raised {type(e).__name__}: {e}"
            ) from None
        check_loss(spec, loss, t)
        loss.backward()
        if spec.clip_grad_norm is not None:
            # model.parameters() order, as training scripts call it: the norm's sum order is part of the bits
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.clip_grad_norm)
        curve.update_rms.append(_update_rms_ref(params, opt, hyper))
        for scope, (g2, vp) in _moments_before_ref(params, names, opt, hyper, tracked, l2).items():
            curve.moments[scope].g2_mean.append(g2)
            curve.moments[scope].vhat_prev_mean.append(vp)
        if spec.lr_schedule is not None:
            for g, lr in zip(opt.param_groups, scheduled_lrs(spec, t, original_lrs, variant_lrs)):
                g["lr"] = lr
        opt.step()
        sv, fe = _vhat_stats_ref(params, opt, hyper)
        curve.sqrt_vhat.append(sv)
        curve.frac_eps.append(fe)
        for scope, med in _median_after_ref(params, names, opt, hyper, tracked, stride).items():
            curve.moments[scope].median_sqrt_vhat.append(med)
        lv = float(loss.detach())
        curve.losses.append(lv)
        if progress is not None:
            progress.advance()
        n = len(curve.losses)
        if not math.isfinite(lv):
            break
        if stop is not None:
            if stop.stop_after is not None and stop_at == steps and n % stop.every == 0:
                after = stop.stop_after(curve.losses)
                if after is not None:
                    stop_at = min(stop_at, after)
            if n >= stop_at:
                break
            if n < steps and stop.expired():
                curve.truncated = True
                break
    if progress is not None:
        progress.advance(steps - len(curve.losses))
    return curve


def _vhat_of(opt: torch.optim.Optimizer, p: torch.Tensor, beta2: float) -> torch.Tensor | None:
    """v̂ = exp_avg_sq / (1 − β2^step) of ``p`` as ``opt`` holds it now, or None while Adam has no state
    for it (no ``exp_avg_sq`` yet, or step ≤ 0): the one rule by which every reference statistic below
    skips a parameter, and the one bias correction they all apply."""
    st = opt.state.get(p, {})
    if "exp_avg_sq" not in st:
        return None
    k = float(st["step"])
    if k <= 0:
        return None
    return st["exp_avg_sq"] / (1.0 - beta2**k)


def _moments_before_ref(
    params: Sequence[torch.Tensor],
    names: list[str],
    opt: torch.optim.Optimizer,
    hyper: list[tuple[float, float]],
    tracked: list[str],
    l2: list[tuple[float, bool]],
) -> dict[str, tuple[float, float]]:
    """Per scope ("global", then each tracked name): (mean g², mean v̂_{t-1}) before the update, over
    the elements of parameters that have a gradient and Adam state (as update RMS). g is what Adam
    puts into v: the (clipped) gradient (negated under maximize), plus wd·p under L2 weight decay
    (``l2``: (wd or 0 for AdamW, maximize) per parameter)."""
    import torch

    acc = {k: [0.0, 0.0, 0] for k in ["global", *tracked]}
    with torch.no_grad():
        for p, name, (_eps, beta2), (wd, maximize) in zip(params, names, hyper, l2):
            if p.grad is None or (vhat := _vhat_of(opt, p, beta2)) is None:
                continue
            g = (-p.grad if maximize else p.grad).add(p, alpha=wd) if wd else p.grad
            g2 = float((g * g).sum(dtype=torch.float64))
            vp = float(vhat.sum(dtype=torch.float64))
            for scope in ("global", name) if name in acc else ("global",):
                acc[scope][0] += g2
                acc[scope][1] += vp
                acc[scope][2] += p.numel()
    nan = float("nan")
    return {k: (a / n, b / n) if n else (nan, nan) for k, (a, b, n) in acc.items()}


def _median_after_ref(
    params: Sequence[torch.Tensor],
    names: list[str],
    opt: torch.optim.Optimizer,
    hyper: list[tuple[float, float]],
    tracked: list[str],
    stride: int,
) -> dict[str, float]:
    """Per scope: median √v̂ after the update (lower median, as torch.median), over every ``stride``-th
    element of each parameter for the global scope and every median_stride(numel)-th for a named one."""
    import torch

    samples: dict[str, list[torch.Tensor]] = {k: [] for k in ["global", *tracked]}
    with torch.no_grad():
        for p, name, (_eps, beta2) in zip(params, names, hyper):
            v = _vhat_of(opt, p, beta2)
            if v is None:
                continue
            vhat = v.reshape(-1)
            samples["global"].append(vhat[::stride])
            if name in samples:
                samples[name].append(vhat[:: median_stride(vhat.numel())])
    return {k: math.sqrt(float(torch.cat(v).median())) if v else float("nan") for k, v in samples.items()}


def _update_rms_ref(
    params: Sequence[torch.Tensor], opt: torch.optim.Optimizer, hyper: list[tuple[float, float]]
) -> float:
    """sqrt(mean over all elements of g²/max(v̂_{t-1}, eps²)); params without state yet are skipped."""
    import torch

    num, n = 0.0, 0
    with torch.no_grad():
        for p, (eps, beta2) in zip(params, hyper):
            if p.grad is None or (vhat := _vhat_of(opt, p, beta2)) is None:
                continue
            # elementwise in the parameter's dtype, summed in float64 (a plain reduction, no big copies)
            num += float((p.grad * p.grad / torch.clamp(vhat, min=eps * eps)).sum(dtype=torch.float64))
            n += p.numel()
    return math.sqrt(num / n) if n else float("nan")


def _vhat_stats_ref(
    params: Sequence[torch.Tensor], opt: torch.optim.Optimizer, hyper: list[tuple[float, float]]
) -> tuple[float, float]:
    """(sqrt(mean v̂), fraction of elements with √v̂ < eps) after the update."""
    import torch

    tot, below, n = 0.0, 0, 0
    for p, (eps, beta2) in zip(params, hyper):
        vhat = _vhat_of(opt, p, beta2)
        if vhat is None:
            continue
        tot += float(vhat.sum(dtype=torch.float64))
        below += int((vhat.sqrt() < eps).sum())
        n += p.numel()
    if not n:
        return float("nan"), float("nan")
    return math.sqrt(tot / n), below / n


def replay_sequential(
    spec: ReplaySpec,
    ckpt: ReplayCheckpoint,
    variants: list[Variant],
    steps: int,
    device: torch.device,
    progress: LazyProgress | None = None,
    on_variant: Callable[[int], None] | None = None,
    *,
    named: list[str] | None = None,
    stop: StopRule | None = None,
) -> list[Curve]:
    """Each variant in turn (the reference path). Memory: the model, one optimizer, one batch.
    Past the deadline the remaining variants get an empty, truncated curve."""
    out = []
    for i, v in enumerate(variants):
        if on_variant is not None:
            on_variant(i)
        if stop is not None and stop.expired():
            out.append(Curve(moments={k: ScopeSeries() for k in ["global", *(named or [])]}, truncated=True))
            if progress is not None:
                progress.advance(steps)
            continue
        out.append(replay_one(spec, ckpt, v, steps, device, progress, named=named, stop=stop))
    return out
