"""``adamdiag replay``: glue between the files (checkpoint, entry point, event log), the replay engines
and the renderers. The only replay module that touches the file system or prints.
"""

from __future__ import annotations

import os
import sys
import warnings as _warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamdiag.errors import InputError
from adamdiag.replay.distributed import Group, World, merge, shard, world_from_env
from adamdiag.replay.protocol import ReplaySpec, Variant, load_spec, make_variants
from adamdiag.replay.result import (
    ReplayResult,
    SpikeRule,
    check_fidelity,
    conclude,
    default_steps,
    reference_rule,
    summarize_variant,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

    from adamdiag.replay.checkpoint import ReplayCheckpoint
    from adamdiag.replay.engine import Curve

FORMATS = ("text", "json", "markdown", "junit")
MODES = ("auto", "batched", "sequential")
# On a CPU the batched sweep pays off for small models (per-step overhead dominates: measured 1.6x at
# K=4 and 4.0x at K=16 for 6k parameters) but not for large ones (compute-bound: 0.5x at 2.4M
# parameters, bench/replay_sweep.py); on CUDA it always batches.
CPU_BATCH_MAX_PARAMS = 1_000_000
MAX_STEPS = 1_000_000


def resolve_device(device: str, world: World) -> torch.device:
    """auto: CUDA when available (this rank's GPU under torchrun), else CPU."""
    import torch

    name = (device or "auto").lower()
    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise InputError(f"--device must be auto, cpu or cuda, got {device!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
        if name == "cuda":
            name = f"cuda:{world.local_rank % max(torch.cuda.device_count(), 1)}"
        dev = torch.device(name)
        torch.cuda.set_device(dev)
        return dev
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------
# The logged loss


def _has_events(d: Path) -> bool:
    try:
        return d.is_dir() and any("tfevents" in f.name and f.is_file() for f in d.iterdir())
    except OSError:
        return False


def _event_dirs(root: Path, depth: int = 2) -> list[Path]:
    """Directories at most ``depth`` levels under ``root`` that hold event files directly."""
    out, level = [], [root]
    for _ in range(depth + 1):
        nxt = []
        for d in level:
            if _has_events(d):
                out.append(d)
            try:
                nxt += sorted(p for p in d.iterdir() if p.is_dir() and p.name != "checkpoints")
            except OSError:
                pass
        level = nxt
    return out


def find_run_dir(checkpoint: Path, logdir: Path | None) -> Path:
    """The run directory with the logged loss: --logdir, else the checkpoint's parent's parent
    (``<run>/checkpoints/step_N.pt``), else its parent."""
    if logdir is not None:
        if not logdir.exists():
            raise InputError(f"--logdir: no such file or directory: {logdir}")
        if logdir.is_file() or _has_events(logdir):
            return logdir
        found = _event_dirs(logdir)
        if len(found) == 1:
            return found[0]
        if not found:
            raise InputError(f"--logdir: no TensorBoard event files under {logdir}")
        raise InputError(f"--logdir: several runs under {logdir} ({', '.join(map(str, found[:4]))}); name one")
    ck = checkpoint.resolve()
    for cand in (ck.parent.parent, ck.parent):
        if _has_events(cand):
            return cand
    found = _event_dirs(ck.parent.parent, depth=1)
    if not found and ck.is_dir():  # HF: <output_dir>/checkpoint-N beside <output_dir>/runs/<name>/
        found = _event_dirs(ck.parent, depth=2)
    if len(found) == 1:
        return found[0]
    raise InputError(
        f"no TensorBoard event files found for {checkpoint} (looked in {ck.parent.parent} and "
        f"{ck.parent}); pass --logdir"
    )


def read_logged_loss(run_dir: Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``tag`` as the run really went (restarts resolved)."""
    import numpy as np

    from adamdiag.analysis.frames import series
    from adamdiag.io.events import read_run

    ev = read_run(run_dir)
    scalars = ev.scalars
    if not (scalars["tag"] == tag).any():
        tags = sorted(set(map(str, scalars["tag"].unique())))
        shown = ", ".join(tags[:15]) + (f", ... ({len(tags)} tags)" if len(tags) > 15 else "")
        raise InputError(f"no scalar tag {tag!r} in {run_dir}; available: {shown or 'none'} (use --loss-tag)")
    s = series(scalars, tag)
    return s.index.to_numpy(dtype=np.int64), s.to_numpy(dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Running the variants


@dataclass
class Plan:
    """Everything every rank resolves identically before replaying."""

    checkpoint: Path
    ckpt: ReplayCheckpoint
    spec: ReplaySpec
    run_dir: Path
    logged_steps: Any
    logged_values: Any
    rule: SpikeRule | None
    steps: int
    variants: list[Variant]
    warnings: list[str] = field(default_factory=list)


def _original(ckpt: ReplayCheckpoint) -> Variant:
    g = ckpt.param_groups[0]
    return Variant("original", float(g["eps"]), float(g["betas"][1]), float(g["lr"]))


def log_step_offset(value: str | None, ckpt: ReplayCheckpoint) -> tuple[int, str | None]:
    """The logged step of update t's loss is t + offset. ``auto``: -1 for a PyTorch Lightning checkpoint
    (Lightning logs in ``training_step``, before the optimizer step that increments ``global_step``:
    the loss of update t is logged at step t-1), else 0 (the protocol's convention). Returns the offset
    and a note for the report when it is not 0."""
    raw = (value or "auto").strip().lower()
    if raw == "auto":
        off = -1 if ckpt.framework == "lightning" else 0
    else:
        try:
            off = int(raw)
        except ValueError:
            raise InputError(f"--log-step-offset must be auto or an integer, got {value!r}") from None
    note = None
    if off:
        why = " (PyTorch Lightning logs the loss of update t at step t-1)" if ckpt.framework == "lightning" else ""
        note = f"the loss of update t is read at logged step t{off:+d}{why}; --log-step-offset overrides"
    return off, note


def plan_replay(
    checkpoint: Path,
    *,
    eps: list[str] | None,
    beta2: list[str] | None,
    lr: list[str] | None,
    steps: int | None,
    entry: str | None,
    logdir: Path | None,
    trust_checkpoint: bool,
    loss_tag: str,
    log_offset: str | None = "auto",
) -> Plan:
    """Read and check every input; InputError with one line on the first problem."""
    from adamdiag.replay.checkpoint import load_replay_checkpoint

    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise InputError(f"--steps must be between 1 and {MAX_STEPS}, got {steps}")
    ckpt = load_replay_checkpoint(checkpoint, trust=trust_checkpoint)
    variants = make_variants(_original(ckpt), eps, beta2, lr)
    run_dir = find_run_dir(checkpoint, logdir)
    lsteps, lvals = read_logged_loss(run_dir, loss_tag)
    offset, offset_note = log_step_offset(log_offset, ckpt)
    lsteps = lsteps - offset  # from here on, steps are update numbers
    spec = load_spec(checkpoint, entry)
    warns = [offset_note] if offset_note else []
    groups = ckpt.param_groups
    if any(float(g.get("weight_decay", 0) or 0) and "decoupled_weight_decay" not in g for g in groups):
        warns.append(
            "the checkpoint does not say whether weight decay was decoupled (AdamW) or L2 (Adam); "
            "replaying as Adam (L2) -- the fidelity check shows whether that was right"
        )
    from adamdiag.replay.checkpoint import load_model_weights, order_is_guessed, param_order

    load_model_weights(spec.model, ckpt)  # fail early, with one line: another architecture
    param_order(ckpt, spec.model)  # ... or an optimizer that does not fit the model
    if order_is_guessed(ckpt, spec.model):
        warns.append(
            "the optimizer's param groups are not in model.parameters() order and carry no names; "
            "parameters were matched by shape (build it from model.named_parameters() to be sure)"
        )
    rule, _ = reference_rule(lsteps, lvals, ckpt.step)
    logged_spike = None
    if rule is not None:
        after = lsteps > ckpt.step
        logged_spike = rule.first_spike(lsteps[after], lvals[after])
    if steps is None:
        last = int(lsteps.max()) if len(lsteps) else None
        n, why = default_steps(ckpt.step, logged_spike, last)
        if n is None:
            raise InputError(f"{checkpoint}: {why}")
        steps = n
    return Plan(
        checkpoint=checkpoint,
        ckpt=ckpt,
        spec=spec,
        run_dir=run_dir,
        logged_steps=lsteps,
        logged_values=lvals,
        rule=rule,
        steps=steps,
        variants=variants,
        warnings=warns,
    )


def choose_sequential(mode: str, plan: Plan, device: torch.device) -> bool:
    """--mode auto: batch on CUDA, and on CPU for models up to CPU_BATCH_MAX_PARAMS parameters."""
    if mode not in MODES:
        raise InputError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "auto":
        return mode == "sequential"
    n = sum(p.numel() for p in plan.spec.model.parameters())
    return device.type == "cpu" and n > CPU_BATCH_MAX_PARAMS


def replay_variants(
    plan: Plan, indices: list[int], device: torch.device, *, sequential: bool, warnings: list[str]
) -> tuple[list[Curve], str]:
    """Curves of ``plan.variants[i]`` for ``i`` in ``indices``, and how the alternates ran.

    The original settings (index 0) always run on the reference path, the real torch.optim.Adam
    exactly as in training: the fidelity check compares them with the log, and near a blowup the
    dynamics amplify even rounding-level differences (batched matmuls sum in another order), so only
    the reference can be expected to reproduce the log to the last bit. The alternates run batched
    (vmap) unless ``sequential`` or the model cannot be batched.
    """
    from adamdiag.replay.engine import LazyProgress, replay_one, replay_sequential
    from adamdiag.replay.sweep import VmapUnsupported, replay_batched

    out: dict[int, Curve] = {}
    rest = [i for i in indices if i != 0]
    mode = "sequential" if sequential or len(rest) < 2 else "batched"
    with LazyProgress(plan.steps * len(indices), f"replaying {len(indices)} variants") as bar:
        if 0 in indices:
            out[0] = replay_one(plan.spec, plan.ckpt, plan.variants[0], plan.steps, device, bar)
        alts = [plan.variants[i] for i in rest]
        if mode == "batched":
            try:
                with _warnings.catch_warnings():
                    _warnings.simplefilter("ignore")  # vmap/functional_call chatter; our own fallback warns
                    curves = replay_batched(plan.spec, plan.ckpt, alts, plan.steps, device, bar)
            except VmapUnsupported as e:
                msg = f"the model/loss cannot be batched with torch.func.vmap ({e}); replaying the variants one by one"
                warnings.append(msg)
                print(f"adamdiag: warning: {msg}", file=sys.stderr)
                mode = "sequential"
                bar.done = plan.steps if 0 in indices else 0
        if mode == "sequential":
            curves = replay_sequential(plan.spec, plan.ckpt, alts, plan.steps, device, bar)
    out.update(zip(rest, curves))
    return [out[i] for i in indices], mode


def analyse(
    plan: Plan,
    curves: list[Curve],
    *,
    device: str,
    mode: str,
    force: bool,
    warnings: list[str],
    loss_tag: str = "train/loss",
) -> ReplayResult:
    """Fidelity, spikes and the verdict from the gathered curves (rank 0)."""
    import numpy as np

    from adamdiag import __version__

    ck = plan.ckpt
    rule, warn = reference_rule(plan.logged_steps, plan.logged_values, ck.step, fallback=np.asarray(curves[0].losses))
    if warn:
        warnings.append(warn)
    end = ck.step + plan.steps
    fid = check_fidelity(ck.step, curves[0].losses, plan.logged_steps, plan.logged_values, rule, end)
    outcomes = [
        summarize_variant(v.name, v.eps, v.beta2, v.lr, ck.step, c.losses, c.update_rms, c.sqrt_vhat, c.frac_eps, rule)
        for v, c in zip(plan.variants, curves)
    ]
    conclusion, code, summary = conclude(outcomes)
    lo = ck.step - 2 * (rule.points if rule else 0)
    keep = (plan.logged_steps > lo) & (plan.logged_steps <= end)
    frac = [o for o in outcomes[1:] if o.max_frac_eps_dominated >= 0.99 and not o.spike]
    if frac:
        warnings.append(
            f"{', '.join(o.name for o in frac)}: √v̂ < eps on ~all elements -- Adam is plain SGD with "
            f"lr/eps there; check that training still makes progress (eps cuts both ways)"
        )
    reference = {}
    if rule is not None:
        reference = {
            "level": rule.level,
            "factor": rule.factor if rule.log else None,
            "threshold": rule.threshold,
            "scale": rule.scale,
            "points": rule.points,
            "log": rule.log,
        }
    return ReplayResult(
        checkpoint=str(plan.checkpoint),
        start_step=ck.step,
        steps=plan.steps,
        fidelity=fid,
        variants=outcomes,
        conclusion=conclusion,
        exit_code=code,
        summary=summary,
        tool_version=__version__,
        run=str(plan.run_dir),
        loss_tag=loss_tag,
        entry=plan.spec.entry,
        device=device,
        mode=mode,
        clip_grad_norm=plan.spec.clip_grad_norm,
        reference=reference,
        logged={
            "steps": [int(s) for s in plan.logged_steps[keep]],
            "values": [float(v) for v in plan.logged_values[keep]],
        },
        warnings=warnings,
        forced=force and not fid.reproduced,
    )


def run_replay(
    checkpoint: Path,
    *,
    eps: list[str] | None,
    beta2: list[str] | None,
    lr: list[str] | None,
    steps: int | None,
    entry: str | None,
    logdir: Path | None,
    device: str,
    fmt: str,
    plot: Path | None,
    force: bool,
    trust_checkpoint: bool,
    loss_tag: str = "train/loss",
    mode: str = "auto",
    log_offset: str | None = "auto",
) -> int:
    """The ``replay`` command. Prints the result (rank 0 only) and returns the exit code:
    0 an alternate avoids the reproduced blowup (or nothing spiked), 1 none does; InputError (exit 2)
    for bad input or when the replay does not reproduce the log (unless ``force``)."""
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}")
    if mode not in MODES:
        raise InputError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    world = world_from_env()
    dev = resolve_device(device, world)
    if not world.distributed:
        plan = plan_replay(
            checkpoint,
            eps=eps,
            beta2=beta2,
            lr=lr,
            steps=steps,
            entry=entry,
            logdir=logdir,
            trust_checkpoint=trust_checkpoint,
            loss_tag=loss_tag,
            log_offset=log_offset,
        )
        warns = list(plan.warnings)
        curves, used = replay_variants(
            plan, list(range(len(plan.variants))), dev, sequential=choose_sequential(mode, plan, dev), warnings=warns
        )
        return _finish(
            plan, curves, dev=str(dev), mode=used, fmt=fmt, plot=plot, force=force, warnings=warns, loss_tag=loss_tag
        )
    return _run_distributed(
        world,
        dev,
        checkpoint,
        eps=eps,
        beta2=beta2,
        lr=lr,
        steps=steps,
        entry=entry,
        logdir=logdir,
        trust_checkpoint=trust_checkpoint,
        loss_tag=loss_tag,
        fmt=fmt,
        plot=plot,
        force=force,
        mode=mode,
        log_offset=log_offset,
    )


def _finish(
    plan: Plan,
    curves: list[Curve],
    *,
    dev: str,
    mode: str,
    fmt: str,
    plot: Path | None,
    force: bool,
    warnings: list[str],
    loss_tag: str,
) -> int:
    from adamdiag.render.replay import render

    result = analyse(plan, curves, device=dev, mode=mode, force=force, warnings=warnings, loss_tag=loss_tag)
    if not result.fidelity.reproduced and not force:
        notes = "".join(f"; note: {w}" for w in plan.warnings)  # what may explain it (guessed order, L2 vs AdamW)
        raise InputError(
            f"{result.fidelity.message}{notes}; no conclusion drawn (--force to report the variants anyway)"
        )
    text = render(result, fmt)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()
    if plot is not None:
        from adamdiag.render.replay_plot import plot_replay

        path = plot_replay(result, plot)
        print(f"wrote {path}", file=sys.stderr)
    return result.exit_code


def _run_distributed(
    world: World, dev: torch.device, checkpoint: Path, *, fmt: str, plot: Path | None, force: bool, mode: str, **kw: Any
) -> int:
    """Every rank plans (identically), replays its share; rank 0 gathers, reports and decides the code."""
    import traceback

    group = Group(world, dev.type)
    try:
        plan, err = None, None
        try:
            plan = plan_replay(checkpoint, **kw)
        except InputError as e:
            err = str(e)
        errors = [e for e in group.all_gather(err) if e]
        if errors:
            if world.rank == 0:
                raise InputError(errors[0])
            return 2
        assert plan is not None
        mine = shard(len(plan.variants), world.size, world.rank)
        warns = list(plan.warnings)
        payload: dict[str, Any]
        try:
            curves, used = (
                replay_variants(plan, mine, dev, sequential=choose_sequential(mode, plan, dev), warnings=warns)
                if mine
                else ([], "batched")
            )
            payload = {"items": list(zip(mine, curves)), "mode": used, "warnings": warns}
        except InputError as e:
            payload = {"error": str(e)}
        except Exception as e:  # noqa: BLE001 - report on rank 0 instead of hanging the others
            payload = {
                "error": f"internal error on rank {world.rank}: {type(e).__name__}: {e}",
                "trace": traceback.format_exc() if os.environ.get("ADAMDIAG_DEBUG") else "",
            }
        parts = group.all_gather(payload)
        code = 2
        if world.rank == 0:
            try:
                bad = [p for p in parts if "error" in p]
                if bad:
                    raise InputError(bad[0]["error"])
                curves = merge([p["items"] for p in parts], len(plan.variants))
                modes = sorted({p["mode"] for p in parts if p["items"]})
                all_warns = list(dict.fromkeys(w for p in parts for w in p["warnings"]))
                used = f"{'+'.join(modes)} across {world.size} ranks"
                code = _finish(
                    plan,
                    curves,
                    dev=f"{dev.type} x{world.size}",
                    mode=used,
                    fmt=fmt,
                    plot=plot,
                    force=force,
                    warnings=all_warns,
                    loss_tag=kw["loss_tag"],
                )
            finally:
                group.broadcast(code)
            return code
        return int(group.broadcast(code))
    finally:
        group.close()
