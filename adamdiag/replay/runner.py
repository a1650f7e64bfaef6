"""``adamdiag replay``: glue between the files (checkpoint, entry point, event log), the replay engines
and the renderers. The only replay module that touches the file system or prints.
"""

from __future__ import annotations

import os
import sys
import time
import warnings as _warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamdiag.errors import InputError, missing_path
from adamdiag.replay.distributed import Group, World, merge, shard, world_from_env
from adamdiag.replay.protocol import (
    NeutralSpec,
    NoEntry,
    NoNeutralEntry,
    ReplaySpec,
    Variant,
    load_spec,
    make_variants,
)
from adamdiag.replay.result import (
    BlowupJudge,
    ReplayResult,
    SpikeRule,
    check_fidelity,
    conclude,
    default_horizon,
    outcome_findings,
    reference_rule,
    schedule_horizon,
    summarize_variant,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

    from adamdiag.io.checkpoints.hyper import Assumptions
    from adamdiag.replay.checkpoint import ReplayCheckpoint
    from adamdiag.replay.engine import Curve

FORMATS = ("text", "json", "markdown", "junit", "github")
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


def _has_framework_log(d: Path) -> bool:
    """A run folder known by a framework's own log (HF's trainer_state.json, Lightning's metrics.csv), no events."""
    from adamdiag.io.events import run_files

    try:
        return d.is_dir() and bool(run_files(d))
    except (OSError, InputError):
        return False


# Where the trackers keep their runs in a training's working directory (wandb's and MLflow's defaults, DVCLive's)
TRACKER_DIRS = ("wandb", "mlruns", "mlflow.db", "dvclive")


def _runs_under(folder: Path) -> list[Path]:
    """The runs the search of ``scan`` finds under ``folder`` (its trackers' runs included); [] when none."""
    from adamdiag.io.events import discover

    try:
        return discover([folder]).runs
    except InputError:
        return []


def _tracker_runs(folder: Path) -> list[Path]:
    """The runs of the trackers' own folders directly in ``folder`` (``wandb/``, ``mlruns/``, ``mlflow.db``,
    ``dvclive/``): where a checkpoint's training logged when it wrote no event files."""
    return [r for name in TRACKER_DIRS if (folder / name).exists() for r in _runs_under(folder / name)]


def _mmengine_runs(work_dir: Path) -> list[Path]:
    """mmengine's log folders in ``work_dir`` (``<timestamp>/vis_data/``, with event files or its scalars.json),
    where its Runner keeps them beside the checkpoints ``iter_N.pth`` / ``epoch_N.pth``."""
    from adamdiag.io.mmengine_log import SCALARS_JSON, is_scalars_json

    try:
        vis = sorted(d / "vis_data" for d in work_dir.iterdir() if d.is_dir() and (d / "vis_data").is_dir())
    except OSError:
        return []
    return [d for d in vis if _has_events(d) or is_scalars_json(d / SCALARS_JSON)]


def _listed(paths: list[Path], shown: int = 4) -> str:
    """'a, b, c, d and 3 more': an error line stays one line however many runs there are."""
    return ", ".join(map(str, paths[:shown])) + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


def find_run_dir(checkpoint: Path, logdir: Path | None) -> Path:
    """The run directory with the logged loss: --logdir, else the checkpoint's parent's parent
    (``<run>/checkpoints/step_N.pt``), else its parent — a folder of event files, else one whose loss a framework
    logged in its own file (an HF output dir's trainer_state.json, a Lightning CSVLogger's metrics.csv), or
    mmengine's ``<timestamp>/vis_data/`` beside its checkpoints, else the one run of a tracker's folder beside
    (``wandb/``, ``mlruns/``, ``mlflow.db``, ``dvclive/``; several: a one-line error naming them)."""
    if logdir is not None:
        from adamdiag.io.mlflow_log import split_run_path

        if split_run_path(logdir) is not None:  # a run of an MLflow database, as scan names it
            return logdir
        if not logdir.exists():
            raise missing_path(logdir, "--logdir")
        if logdir.is_file() or _has_events(logdir) or _has_framework_log(logdir):
            return logdir
        found = _event_dirs(logdir) or _runs_under(logdir)
        if len(found) == 1:
            return found[0]
        if not found:
            raise InputError(f"--logdir: no TensorBoard event files under {logdir}")
        raise InputError(f"--logdir: several runs under {logdir} ({_listed(found)}); name one")
    ck = checkpoint.resolve()
    for cand in (ck.parent.parent, ck.parent):
        if _has_events(cand):
            return cand
    found = _event_dirs(ck.parent.parent, depth=1)
    if not found and ck.is_dir():  # HF: <output_dir>/checkpoint-N beside <output_dir>/runs/<name>/
        found = _event_dirs(ck.parent, depth=2)
    if not found:  # mmengine: <work_dir>/iter_N.pth beside <work_dir>/<timestamp>/vis_data/
        found = _mmengine_runs(ck.parent)
        if len(found) > 1:
            raise InputError(
                f"several mmengine runs beside {checkpoint} ({_listed(found)}): pass --logdir with the one"
            )
    if len(found) == 1:
        return found[0]
    if not found:
        for cand in (ck.parent.parent, ck.parent):
            if _has_framework_log(cand):
                return cand
        found = [r for cand in (ck.parent.parent, ck.parent) for r in _tracker_runs(cand)]
        if len(found) == 1:
            return found[0]
        if found:
            raise InputError(
                f"several trackers' runs beside {checkpoint} ({_listed(found)}): pass --logdir with the one that trained it"
            )
    raise InputError(
        f"no TensorBoard event files found for {checkpoint} (looked in {ck.parent.parent} and "
        f"{ck.parent}); pass --logdir"
    )


def _run_events(run_dir: Path) -> Any:
    """``read_run(run_dir)``, read once per replay: the loss-tag pick and the logged loss both need it.
    Keyed by the event files' names, sizes and mtimes, so a run still being written is read again."""
    from adamdiag.io.events import read_run, run_files

    try:
        files = run_files(Path(run_dir)) if Path(run_dir).exists() else []
        signature = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    except OSError:  # a file vanished under us: read without the cache (read_run says what is wrong)
        return read_run(Path(run_dir))
    if not files:
        return read_run(Path(run_dir))  # raises the one-line InputError
    return _read_run_once(str(Path(run_dir).resolve()), signature)


@lru_cache(maxsize=1)
def _read_run_once(run_dir: str, signature: tuple[tuple[str, int, int], ...]) -> Any:
    """The events of ``run_dir`` as its files were when ``signature`` (names, sizes, mtimes) was taken."""
    from adamdiag.io.events import read_run

    return read_run(Path(run_dir))


def default_loss_tag(checkpoint: Path, logdir: Path | None) -> str:
    """The loss tag scan would use for the checkpoint's run (one auto-pick for scan, check and replay);
    ``train/loss`` when nothing looks like a loss (the error then lists the run's tags)."""
    from adamdiag.analysis.tags import pick_loss_tag

    try:
        scalars = _run_events(find_run_dir(checkpoint, logdir)).scalars
    except InputError:
        return "train/loss"  # the replay itself reports what is wrong with the run
    return pick_loss_tag(sorted(set(map(str, scalars["tag"].unique())))) or "train/loss"


def read_logged_loss(run_dir: Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``tag`` as the run really went (restarts resolved). Keras' per-epoch running
    mean (``batch_loss`` beside ``epoch_loss``) is turned back into per-batch losses first, as scan
    does (AD603): the replay's losses are per batch. Logged every N batches (``update_freq=N``) it
    gives N-batch means, which no replayed step equals: refused with what to log instead."""
    import numpy as np

    from adamdiag.analysis.evidence import loss_series

    ev = _run_events(run_dir)
    scalars = ev.scalars
    tags = sorted(set(map(str, scalars["tag"].unique())))
    if tag not in tags:
        shown = ", ".join(tags[:15]) + (f", ... ({len(tags)} tags)" if len(tags) > 15 else "")
        raise InputError(f"no scalar tag {tag!r} in {run_dir}; available: {shown or 'none'} (use --loss-tag)")
    rebuilt: list[dict[str, Any]] = []
    steps, values = loss_series(scalars, tag, tags, rebuilt, ev.running_means)
    if rebuilt and rebuilt[0]["reconstructed"] and len(steps) > 1 and int(np.diff(steps).max()) > 1:
        raise InputError(
            f"{tag!r} in {run_dir} is Keras' running mean logged every {int(np.diff(steps).min())} batches "
            "(TensorBoard update_freq): per-batch losses cannot be recovered from it, so a replay cannot be "
            "compared with the log; replay a run logged with update_freq=1"
        )
    return steps, values


# --------------------------------------------------------------------------------------------
# Running the variants


@dataclass
class Plan:
    """Everything every rank resolves identically before replaying."""

    checkpoint: Path
    ckpt: ReplayCheckpoint
    spec: ReplaySpec | NeutralSpec  # NeutralSpec: the entry replays in its own framework (neutral.py)
    run_dir: Path
    logged_steps: Any
    logged_values: Any
    rule: SpikeRule | None
    steps: int
    variants: list[Variant]
    warnings: list[str] = field(default_factory=list)
    judge: BlowupJudge | None = None
    horizon: dict[str, Any] = field(default_factory=dict)
    named: list[str] = field(default_factory=list)  # tensors judged on their own for at_risk
    deadline: float | None = None  # time.monotonic() after which the replay stops (a budget)


def _original(ckpt: ReplayCheckpoint) -> Variant:
    g = ckpt.param_groups[0]
    return Variant("original", float(g["eps"]), float(g["betas"][1]), float(g["lr"]))


def log_step_offset(value: str | int | None, ckpt: ReplayCheckpoint) -> tuple[int, str | None]:
    """The logged step of update t's loss is t + offset. ``auto``: -1 for a PyTorch Lightning checkpoint
    (Lightning logs in ``training_step``, before the optimizer step that increments ``global_step``:
    the loss of update t is logged at step t-1), else 0 (the protocol's convention). Returns the offset
    and a note for the report when it is not 0."""
    raw = str("auto" if value is None else value).strip().lower()
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


def _stderr(msg: str) -> None:
    """A notice or warning (never an error: those are raised) on stderr; nothing with ``--quiet``."""
    from adamdiag import console

    if not console.QUIET:
        print(f"adamdiag: {msg}", file=sys.stderr, flush=True)


def _stderr_info(msg: str) -> None:
    """A progress note ("wrote x.png") on stderr; nothing with ``--quiet``."""
    from adamdiag import console

    if not console.QUIET:
        print(msg, file=sys.stderr)


def _quiet(msg: str) -> None:
    """Ranks other than 0 under torchrun: rank 0 already said it."""


def _check_named(names: list[str] | None, model: Any) -> list[str]:
    """Named tensors must be parameters of the entry's model (its named_parameters() names)."""
    out = list(dict.fromkeys(names or []))
    have = dict(model.named_parameters())
    bad = [n for n in out if n not in have]
    if bad:
        shown = ", ".join(list(have)[:12]) + (", ..." if len(have) > 12 else "")
        raise InputError(f"--tensor: no parameter {bad[0]!r} in the entry's model (parameters: {shown})")
    return out


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
    log_offset: str | int | None = "auto",
    grid: bool = False,
    named: list[str] | None = None,
    variants: list[Variant] | None = None,
    run_dir: Path | None = None,
    require_trust: bool = False,
    notify: Callable[[str], None] | None = _stderr,
    assume: Assumptions | None = None,
) -> Plan:
    """Read and check every input; InputError with one line on the first problem.

    ``variants`` (library callers) replaces the --eps/--beta2/--lr options: the original settings are
    put first when missing. ``run_dir`` replaces the --logdir search. ``assume`` (``--assume-*``):
    the original lr/β2/eps where the checkpoint does not store them (a stored value wins)."""
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise InputError(f"--steps must be between 1 and {MAX_STEPS}, got {steps}")
    ckpt, spec, warns = _checkpoint_and_spec(checkpoint, entry, trust_checkpoint, notify, require_trust, assume)
    original = _original(ckpt)
    if variants is None:
        variants = make_variants(original, eps, beta2, lr, grid=grid)
    else:
        same = [v for v in variants if (v.eps, v.beta2, v.lr) == (original.eps, original.beta2, original.lr)]
        rest = [v for v in variants if v not in same]
        variants = [original] + [
            v for i, v in enumerate(rest) if all((v.eps, v.beta2, v.lr) != (u.eps, u.beta2, u.lr) for u in rest[:i])
        ]
    run_dir = run_dir if run_dir is not None else find_run_dir(checkpoint, logdir)
    lsteps, lvals = read_logged_loss(run_dir, loss_tag)
    offset, offset_note = log_step_offset(log_offset, ckpt)
    lsteps = lsteps - offset  # from here on, steps are update numbers
    judge = BlowupJudge(lsteps, lvals, ckpt.step)
    if judge.logged_blowup is not None and judge.logged_blowup <= ckpt.step:
        raise InputError(
            f"{checkpoint}: the checkpoint (step {ckpt.step}) is not before the logged blowup at step "
            f"{judge.logged_blowup}; replay from a checkpoint saved before it"
        )
    if spec is None:  # a torch checkpoint: the entry is imported only after the inputs checked out
        spec = load_spec(checkpoint, entry, notify=notify, require_trust=require_trust)
    warns = ([offset_note] if offset_note else []) + warns
    if isinstance(spec, ReplaySpec):
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
        named = _check_named(named, spec.model)
    else:
        named = list(dict.fromkeys(named or []))  # checked against the tensors the entry reports
    rule, _ = reference_rule(lsteps, lvals, ckpt.step)
    if steps is None:
        last = int(lsteps.max()) if len(lsteps) else None
        n, why = default_horizon(ckpt.step, judge.logged_blowup, last, [v.beta2 for v in variants])
        if n is None:
            raise InputError(f"{checkpoint}: {why}")
        if isinstance(spec, ReplaySpec) and spec.lr_schedule is not None:
            after = judge.logged_blowup if judge.logged_blowup is not None else ckpt.step
            n, rising = schedule_horizon(ckpt.step, after, n, spec.lr_schedule, [v.beta2 for v in variants])
            why = f"{why}; {rising}" if rising else why
        n = min(n, MAX_STEPS)
        horizon = {"steps": n, "why": why, "source": "default"}
    else:
        n = steps
        horizon = {"steps": n, "why": "--steps", "source": "--steps"}
    return Plan(
        checkpoint=checkpoint,
        ckpt=ckpt,
        spec=spec,
        run_dir=run_dir,
        logged_steps=lsteps,
        logged_values=lvals,
        rule=rule,
        steps=n,
        variants=variants,
        warnings=warns,
        judge=judge,
        horizon=horizon,
        named=named,
    )


def _checkpoint_and_spec(
    checkpoint: Path,
    entry: str | None,
    trust_checkpoint: bool,
    notify: Callable[[str], None] | None,
    require_trust: bool,
    assume: Assumptions | None = None,
) -> tuple[ReplayCheckpoint, ReplaySpec | NeutralSpec | None, list[str]]:
    """The start checkpoint, and the entry when it had to be loaded to read the checkpoint.

    A torch checkpoint is read first (the entry, which runs user code, is imported later, once every
    input checked out). A TF/Keras checkpoint, or a file no reader knows, can only be replayed by a
    framework-neutral entry: it is loaded here, and the step and original hyperparameters come from
    adamdiag's own readers (no TensorFlow) or the entry's ``original`` (:mod:`adamdiag.replay.neutral`)."""
    from adamdiag.errors import UntrustedCheckpointError
    from adamdiag.replay.checkpoint import load_replay_checkpoint
    from adamdiag.replay.neutral import NEUTRAL_ENTRY_HINT, foreign_checkpoint, neutral_checkpoint

    foreign = foreign_checkpoint(checkpoint, assume)
    base, unreadable = None, None
    if foreign is None:
        try:
            base = load_replay_checkpoint(checkpoint, trust=trust_checkpoint, assume=assume)
        except UntrustedCheckpointError:
            raise
        except InputError as e:
            if not Path(checkpoint).exists():
                raise
            unreadable = e  # maybe a checkpoint only the user's framework reads: ask the entry
    if base is not None:
        return base, None, list(base.notes)
    what = f"{checkpoint} is a {foreign.layout} checkpoint" if foreign is not None else None
    try:
        spec = load_spec(checkpoint, entry, notify=notify, require_trust=require_trust)
    except NoEntry:
        if what is None:
            assert unreadable is not None
            raise unreadable from None
        raise NoNeutralEntry(f"{what}: replaying it needs a framework-neutral entry: {NEUTRAL_ENTRY_HINT}") from None
    if isinstance(spec, ReplaySpec):
        if what is None:
            assert unreadable is not None
            raise unreadable
        raise InputError(
            f"{what}; entry {spec.entry} is a PyTorch entry (model, batch, loss) and cannot replay it: "
            f"{NEUTRAL_ENTRY_HINT}"
        )
    ckpt, warns = neutral_checkpoint(checkpoint, foreign, spec)
    return ckpt, spec, warns


def choose_sequential(mode: str, plan: Plan, device: torch.device) -> bool:
    """--mode auto: batch on CUDA, and on CPU for models up to CPU_BATCH_MAX_PARAMS parameters."""
    if mode not in MODES:
        raise InputError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(plan.spec, NeutralSpec):
        return True  # the entry runs the variants itself, one call each
    if mode != "auto":
        return mode == "sequential"
    n = sum(p.numel() for p in plan.spec.model.parameters())
    return device.type == "cpu" and n > CPU_BATCH_MAX_PARAMS


def replay_variants(
    plan: Plan,
    indices: list[int],
    device: torch.device,
    *,
    sequential: bool,
    warnings: list[str],
    progress: bool = True,
    notify: Callable[[str], None] | None = _stderr,
) -> tuple[list[Curve], str]:
    """Curves of ``plan.variants[i]`` for ``i`` in ``indices``, and how the alternates ran.

    The original settings (index 0) always run on the reference path, the real torch.optim.Adam
    exactly as in training: the fidelity check compares them with the log, and near a blowup the
    dynamics amplify even rounding-level differences (batched matmuls sum in another order), so only
    the reference can be expected to reproduce the log to the last bit. The alternates run batched
    (vmap) unless ``sequential`` or the model cannot be batched. A variant stops once its blowup is
    settled; all stop at ``plan.deadline``.
    """
    from adamdiag.replay.engine import LazyProgress, StopRule, replay_one, replay_sequential

    if isinstance(plan.spec, NeutralSpec):
        from adamdiag.replay.neutral import replay_neutral

        with LazyProgress(plan.steps * len(indices), f"replaying {len(indices)} variants", enabled=progress) as pb:
            curves = replay_neutral(
                plan.spec,
                plan.checkpoint,
                [plan.variants[i] for i in indices],
                plan.variants[0],
                plan.steps,
                named=plan.named,
                deadline=plan.deadline,
                warnings=warnings,
                advance=pb.advance,
            )
        return curves, "entry"
    from adamdiag.replay.sweep import VmapUnsupported, replay_batched

    out: dict[int, Curve] = {}
    rest = [i for i in indices if i != 0]
    mode = "sequential" if sequential or len(rest) < 2 else "batched"
    stop = StopRule(stop_after=plan.judge.stop_after if plan.judge else None, deadline=plan.deadline)
    kw: dict[str, Any] = {"named": plan.named, "stop": stop}
    total = plan.steps * len(indices)
    with LazyProgress(total, f"replaying {len(indices)} variants × {plan.steps} steps", enabled=progress) as bar:
        if 0 in indices:
            out[0] = replay_one(plan.spec, plan.ckpt, plan.variants[0], plan.steps, device, bar, **kw)
        alts = [plan.variants[i] for i in rest]
        if mode == "batched":
            try:
                with _warnings.catch_warnings():
                    _warnings.simplefilter("ignore")  # vmap/functional_call chatter; our own fallback warns
                    curves = replay_batched(plan.spec, plan.ckpt, alts, plan.steps, device, bar, **kw)
            except VmapUnsupported as e:
                msg = f"the model/loss cannot be batched with torch.func.vmap ({e}); replaying the variants one by one"
                warnings.append(msg)
                if notify is not None:
                    notify(f"warning: {msg}")
                mode = "sequential"
                bar.done = plan.steps if 0 in indices else 0
        if mode == "sequential":
            curves = replay_sequential(plan.spec, plan.ckpt, alts, plan.steps, device, bar, **kw)
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
    """Fidelity, blowups, outcomes and the verdict from the gathered curves (rank 0)."""
    import numpy as np

    from adamdiag import __version__

    ck = plan.ckpt
    if isinstance(plan.spec, NeutralSpec):
        device = "entry"  # it chose where to run; adamdiag's --device played no part
    judge = plan.judge or BlowupJudge(plan.logged_steps, plan.logged_values, ck.step)
    rule, warn = reference_rule(plan.logged_steps, plan.logged_values, ck.step, fallback=np.asarray(curves[0].losses))
    if warn and rule is None:
        warnings.append(warn)
    end = ck.step + plan.steps
    orig_losses = curves[0].losses
    fid = check_fidelity(
        ck.step,
        orig_losses,
        plan.logged_steps,
        plan.logged_values,
        end,
        logged_blowup=judge.logged_blowup,
        replayed_blowup=judge.blowup_step(orig_losses),
    )
    outcomes = [
        summarize_variant(
            v.name,
            v.eps,
            v.beta2,
            v.lr,
            ck.step,
            c.losses,
            c.update_rms,
            c.sqrt_vhat,
            c.frac_eps,
            judge,
            scopes=c.moments,
            truncated=c.truncated,
        )
        for v, c in zip(plan.variants, curves)
    ]
    conclusion, code, summary = conclude(outcomes, ck.step)
    if force and not fid.reproduced:  # --force shows the table, but a replay that is not the run proves nothing
        conclusion, code = "not_reproduced", 2
        summary = "not concluded: the replay does not reproduce the log, so the variants prove nothing about the run"
    if judge.logged_blowup is not None and judge.logged_blowup > end:
        warnings.append(
            f"the replay ends at step {end}, before the logged blowup at step {judge.logged_blowup}: it cannot "
            "tell whether a variant avoids it (leave out --steps for the default horizon)"
        )
    if any(o.truncated for o in outcomes):
        warnings.append(
            "the time budget ran out before the horizon: "
            + ", ".join(o.name for o in outcomes if o.truncated)
            + " cut short (at_risk, truncated)"
        )
    lo = ck.step - 2 * (rule.points if rule else 0)
    keep = (plan.logged_steps > lo) & (plan.logged_steps <= end)
    frac = [o for o in outcomes[1:] if o.max_frac_eps_dominated >= 0.99 and o.blowup_step is None]
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
        horizon=dict(plan.horizon),
        named_tensors=list(plan.named),
        findings=outcome_findings(outcomes, ck.step),
    )


def verify_checkpoint(
    checkpoint: Path,
    variants: list[Variant],
    *,
    run_dir: Path,
    loss_tag: str = "train/loss",
    log_offset: str | int = "auto",
    device: str = "auto",
    budget_s: float | None = None,
    named_tensors: list[str] | None = None,
    entry: str | None = None,
    trust_entry: bool = False,
    trust_checkpoint: bool = False,
    steps: int | None = None,
    mode: str = "auto",
    on_import: Callable[[str], None] | None = _stderr,
    assume: Assumptions | None = None,
) -> ReplayResult:
    """Replay ``variants`` from ``checkpoint`` and return the result with outcomes (``scan --verify``).

    - ``variants``: what to try (:class:`Variant`: name, eps, beta2, lr of param group 0, other groups
      keep their ratio); the checkpoint's own settings are put first as "original" (dropped from the
      list if given), duplicates dropped. Build single changes with
      ``make_variants(original, ["1e-3"], None, ["3.3e-4"])`` or by hand.
    - ``run_dir``: the directory whose event files hold ``loss_tag``; ``log_offset``: the loss of update
      t is logged at step t+N ("auto": -1 for Lightning, else 0).
    - ``budget_s``: wall-clock seconds for the replay itself (None: no limit); variants not finished
      by then are ``at_risk`` with ``truncated: true`` (``fidelity.reproduced`` may then be False for
      lack of steps). The horizon is the default (:func:`default_horizon`) unless ``steps`` is given.
    - ``named_tensors``: parameter names (the entry model's ``named_parameters()``) judged on their own
      for at_risk besides the global moments (e.g. the tensors the report named).
    - ``entry``: as ``--entry`` (always trusted). Otherwise the entry is discovered from the
      checkpoint's directory upward, then the current directory; a discovered entry runs only when it
      comes from the current directory's config (:func:`adamdiag.replay.protocol.cwd_config`) or with
      ``trust_entry`` -- else :class:`~adamdiag.replay.protocol.UntrustedEntry` (an InputError) is
      raised before anything is imported. No entry at all: :class:`~adamdiag.replay.protocol.NoEntry`.

    Never prints to stdout; the only stderr line is the mandatory "importing entry X from FILE" notice
    (``on_import`` routes it elsewhere, None = stderr; it is called before the import runs).
    ``assume``: scan's ``--assume-*``, for an lr/β2/eps the checkpoint does not store. Raises
    :class:`~adamdiag.errors.InputError` (one line) for bad input: unreadable checkpoint, no loss tag,
    checkpoint at/after the logged blowup, an entry that fails. A replay that does not reproduce the
    log is *returned* (``result.fidelity.reproduced`` False, its ``message`` says why): the caller
    decides (``confirms: null``). Outcomes: ``result.variants[i].outcome`` in avoided/at_risk/blowup,
    ``blowup_step``, ``truncated``; ``result.conclusion`` in no_blowup/fixed/postponed/not_fixed (not_reproduced when the replay is not the run).
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if budget_s is not None and not budget_s > 0:
        raise InputError(f"--verify-budget must be a positive number of seconds, got {budget_s}")
    world = World(1, 0, 0, 1)
    dev = resolve_device(device, world)
    t0 = time.monotonic()
    plan = plan_replay(
        checkpoint,
        eps=None,
        beta2=None,
        lr=None,
        steps=steps,
        entry=entry,
        logdir=None,
        trust_checkpoint=trust_checkpoint,
        loss_tag=loss_tag,
        log_offset=log_offset,
        named=named_tensors,
        variants=list(variants),
        run_dir=Path(run_dir),
        require_trust=not trust_entry,
        notify=on_import,
        assume=assume,
    )
    if budget_s is not None:
        plan.deadline = t0 + float(budget_s)
    warns = list(plan.warnings)
    curves, used = replay_variants(
        plan,
        list(range(len(plan.variants))),
        dev,
        sequential=choose_sequential(mode, plan, dev),
        warnings=warns,
        progress=False,
        notify=None,
    )
    return analyse(plan, curves, device=str(dev), mode=used, force=True, warnings=warns, loss_tag=loss_tag)


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
    grid: bool = False,
    named: list[str] | None = None,
    budget_s: float | None = None,
    assume: Assumptions | None = None,
) -> int:
    """The ``replay`` command. Prints the result (rank 0 only) and returns the exit code:
    0 only when some variant is ``avoided`` (an alternate, or the original itself: nothing to fix),
    1 when none is (``postponed``: the best is at_risk; ``not_fixed``: all blow up); InputError
    (exit 2) for bad input or when the replay does not reproduce the log (unless ``force``)."""
    if budget_s is not None and not budget_s > 0:
        raise InputError(f"--budget must be a positive number of seconds, got {budget_s}")
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}")
    if mode not in MODES:
        raise InputError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    world = world_from_env()
    dev = resolve_device(device, world)

    def planned(notify: Callable[[str], None] = _stderr) -> Plan:
        """The plan of these inputs, its --budget deadline counted from the end of planning: the one
        planning of the single-process replay and of every torchrun rank (``notify``: who says what)."""
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
            grid=grid,
            named=named,
            assume=assume,
            notify=notify,
        )
        if budget_s is not None:
            plan.deadline = time.monotonic() + budget_s
        return plan

    if not world.distributed:
        plan = planned()
        warns = list(plan.warnings)
        curves, used = replay_variants(
            plan, list(range(len(plan.variants))), dev, sequential=choose_sequential(mode, plan, dev), warnings=warns
        )
        return _finish(
            plan, curves, dev=str(dev), mode=used, fmt=fmt, plot=plot, force=force, warnings=warns, loss_tag=loss_tag
        )
    return _run_distributed(world, dev, planned, fmt=fmt, plot=plot, force=force, mode=mode, loss_tag=loss_tag)


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
        _stderr_info(f"wrote {path}")
    return result.exit_code


def _run_distributed(
    world: World,
    dev: torch.device,
    planned: Callable[[Callable[[str], None]], Plan],
    *,
    fmt: str,
    plot: Path | None,
    force: bool,
    mode: str,
    loss_tag: str,
) -> int:
    """Every rank plans (identically: ``planned``, run_replay's planning, told who speaks), replays its
    share; rank 0 gathers, reports and decides the code."""
    import traceback

    group = Group(world, dev.type)
    try:
        plan, err = None, None
        try:
            plan = planned(_stderr if world.rank == 0 else _quiet)
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
                    loss_tag=loss_tag,
                )
            finally:
                group.broadcast(code)
            return code
        return int(group.broadcast(code))
    finally:
        group.close()
