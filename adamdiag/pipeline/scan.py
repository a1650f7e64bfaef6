"""Glue between readers and the pure diagnosis: paths in, a :class:`Report` out.

This is the only place that knows both the file system and the analysis; the CLI calls it and
renders the result. Progress goes to stderr (rich), only when stderr is a terminal.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamdiag import __version__
from adamdiag.console import stderr_progress
from adamdiag.results.report import Report

if TYPE_CHECKING:
    from adamdiag.io.checkpoints.hyper import Assumptions


def load_checkpoint_summaries(
    root: Path,
    *,
    trust: bool,
    convention: str | None,
    warnings: list[str],
    non_adam: list[str] | None = None,
    assume: Assumptions | None = None,
    jobs: int | None = None,
) -> tuple[list, list[str]]:
    """Summaries of every optimizer checkpoint under ``root``; unreadable ones become warnings
    (a diagnosis from the event files is still honest without them) — a checkpoint that needs
    full unpickling too: one such file must not cost the diagnosis of every run (its message names
    the refused global and --trust-checkpoint). Files that are no regular files are never opened
    (a FIFO would block the scan): skipped with a warning. ``assume``: ``--assume-*``; which values
    were assumed or stay unknown becomes one run warning each (not one per checkpoint). ``jobs``:
    tensors read in parallel (``--jobs``; None: the default)."""
    from adamdiag.errors import InputError, NotAdamError
    from adamdiag.io.checkpoints import find_checkpoints
    from adamdiag.io.checkpoints.hyper import PREFIX
    from adamdiag.pipeline.summary import summarize_checkpoint

    out, paths = [], []
    hyper_lines: dict[str, int] = {}
    for p in find_checkpoints(root, skipped=warnings):
        try:
            out.append(summarize_checkpoint(p, trust=trust, convention=convention, assume=assume, jobs=jobs))
            paths.append(str(p))
            for w in out[-1].warnings:
                if w.startswith(PREFIX):
                    hyper_lines[w] = hyper_lines.get(w, 0) + 1
        except NotAdamError as e:  # another optimizer: a finding of its own (AD903), not an input problem
            (non_adam if non_adam is not None else warnings).append(str(e))
        except InputError as e:  # UntrustedCheckpointError included
            # the readers' messages mostly start with the file already: name it once
            warnings.append(str(e) if str(e).startswith(str(p)) else f"checkpoint {p}: {e}")
    for w, n in hyper_lines.items():
        if w.startswith(f"{PREFIX}unknown") and ("beta2 (" in w or "eps (" in w):
            # the diagnosis still needs a β2 (memory span) and an eps: where no tensor states one
            w += "; where no tensor states β2/eps the diagnosis takes torch's defaults (0.999, 1e-8)"
        warnings.append(w if len(out) == 1 else f"{w} (in {n} of {len(out)} checkpoints)")
    return out, paths


def checkpoint_roots(checkpoints: Path | None, runs: list[Path]) -> dict[Path, Path]:
    """Where each run's checkpoints are searched: under the run itself, or under ``--checkpoints``.

    One ``--checkpoints`` folder for several runs would lend one run's optimizer state to every
    other run's diagnosis; it is accepted only when it maps per run — one subfolder per run, named
    like the run's path relative to the runs' common parent, or like the run's folder name. Raises
    InputError otherwise (naming the runs without a subfolder).
    """
    import os

    from adamdiag.errors import InputError
    from adamdiag.io.mlflow_log import artifacts_dir, is_database_run

    # a run of an MLflow database has no folder of its own: its artifacts folder, where it is a local one
    own = {r: (r if r.is_dir() else (artifacts_dir(r) or r.parent) if is_database_run(r) else r.parent) for r in runs}
    if checkpoints is None:
        return own
    ck = Path(checkpoints)
    if len(runs) == 1:
        return {runs[0]: ck}
    base = Path(os.path.commonpath([str(d.resolve()) for d in own.values()]))
    out, missing = {}, []
    for r, d in own.items():
        rel = d.resolve().relative_to(base) if d.resolve() != base else Path(d.name)
        cands = [ck / rel, ck / d.name]
        hit = next((c for c in cands if c.is_dir()), None)
        if hit is None:
            missing.append(str(rel))
        else:
            out[r] = hit
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise InputError(
            f"--checkpoints {ck} with {len(runs)} runs: one folder cannot hold the checkpoints of every run; "
            f"give it one subfolder per run, named like the run (missing: {shown}), or scan the runs one by one"
        )
    if len(set(out.values())) < len(out):
        raise InputError(f"--checkpoints {ck}: several runs map to the same subfolder (runs with equal names)")
    return out


def checkpoints_beside_logs(paths: Sequence[Path], events: list[Any]) -> dict[str, Path]:
    """Runs whose checkpoints may be searched in a folder above the run's own: the highest folder from the
    one the user named down to the run's parent that holds this training's runs only — one run, or several
    that are one training resumed (``resume_from_checkpoint`` logs into a new ``runs/<stamp>/``:
    :func:`resumed_chain`). HF Trainer writes ``output_dir/checkpoint-N/`` beside ``output_dir/runs/<stamp>/``,
    fairseq ``checkpoints/`` beside its ``--tensorboard-logdir``; ``scan output_dir`` — or ``scan experiments/``
    over many such folders — should find them. A folder that holds another training's runs too could lend
    any of their checkpoints: none is lent from it (the rule of :func:`checkpoint_roots`).
    ``events``: the runs read (RunEvents)."""
    out: dict[str, Path] = {}
    spans: dict[str, tuple[int, int, int]] = {}

    def one_training(runs: list[Any]) -> bool:
        if len(runs) == 1:
            return True
        # the step spans are a pass over each run's steps: only where several runs share a folder
        for e in runs:
            if e.run not in spans:
                spans[e.run] = step_span(e)
        return resumed_chain([spans[e.run] for e in runs])

    for p in paths:
        p = Path(p)
        if not p.is_dir():
            continue
        top = p.resolve()
        # every folder from the named one down to each run's parent, with the runs below it (one pass)
        holds: dict[Path, list[Any]] = {}
        chains: dict[str, list[Path]] = {}
        for e in events:
            run = Path(e.run).resolve()
            if run != top and top not in run.parents:
                continue
            # nearest first, up to top (an MLflow database's runs sit in no folder of their own: the database's is
            # the nearest that exists)
            chain = [a for a in run.parents if (a == top or top in a.parents) and a.is_dir()]
            chains[e.run] = chain[::-1]  # highest first
            for a in chain:
                holds.setdefault(a, []).append(e)
        runs_at = {Path(e.run).resolve() for e in events}
        for e in events:
            if e.run in out or e.run not in chains:
                continue
            # the highest folder holding this training's runs only (a folder that is a run keeps its own)
            for folder in chains[e.run]:
                if folder in runs_at:
                    continue
                if one_training(holds[folder]):
                    out.update({x.run: p if folder == top else folder for x in holds[folder] if x.run not in out})
                    break
    return out


def hf_output_dir_above(run: Path) -> Path | None:
    """HF Trainer's ``output_dir`` when ``run`` is its only ``output_dir/runs/<stamp>/`` and ``output_dir``
    holds ``checkpoint-N/`` folders: the user named the run folder, whose checkpoints HF writes two levels up.
    None otherwise (several stamps — another or a resumed training — leave the choice to ``--checkpoints``)."""
    from adamdiag.io.trainer_state import HF_CHECKPOINT_DIR

    run = Path(run)
    if not run.is_dir() or run.parent.name != "runs":
        return None
    out = run.parent.parent
    try:
        stamps = [d for d in run.parent.iterdir() if d.is_dir()]
        has_ckpt = any(d.is_dir() and HF_CHECKPOINT_DIR.fullmatch(d.name) for d in out.iterdir())
    except OSError:
        return None
    return out if has_ckpt and [d.resolve() for d in stamps] == [run.resolve()] else None


def step_span(events: Any) -> tuple[int, int, int]:
    """(first step, last step, median logging interval) of a run's curves — its scalars but the tags logged
    once: Lightning's ``hp_metric`` placeholder, written at step 0 by every ``fit`` (a resumed one too, which
    would make it look like a fresh start), HF's end-of-training summaries; (0, 0, 1) without any."""
    import numpy as np

    s = events.scalars
    if s is not None and len(s):
        n = s.groupby("tag")["step"].transform("size")
        s = s[n > 1] if (n > 1).any() else s
    if s is None or not len(s):
        return (0, 0, 1)
    steps = np.unique(s["step"].to_numpy(np.int64))
    gap = int(np.median(np.diff(steps))) if len(steps) > 1 else 1
    return (int(steps[0]), int(steps[-1]), max(1, gap))


def resumed_chain(spans: list[tuple[int, int, int]]) -> bool:
    """Runs that are one training resumed from its checkpoints: ordered by their first logged step, each
    starts *after* the previous one started (a fresh run starts again at its first step) and no later
    than one logging interval after the previous one's last step (it went on from a checkpoint the
    previous run wrote).

    >>> resumed_chain([(1, 700, 1), (401, 900, 1)]), resumed_chain([(1, 700, 1), (1, 650, 1)])
    (True, False)
    """
    if len(spans) < 2:
        return False
    order = sorted(spans)
    return all(b[0] > a[0] and b[0] <= a[1] + max(1, a[2]) for a, b in zip(order, order[1:]))


def _under(path: str, run: str) -> bool:
    """``path`` is ``run`` or inside it."""
    return path == run or path.startswith(run.rstrip("/") + "/")


def skipped_file_finding(message: str) -> Any:
    """AD904 for a file of a run that was left out: a warning when data may be lost (unreadable),
    info when the file is no event file at all (a ``tfevents.md`` beside the logs)."""
    from adamdiag.results.report import Finding

    lost = "cannot read" in message
    return Finding("AD904", "warning" if lost else "info", message, evidence={"skipped": message})


def split_eval(events) -> tuple[list[str], bool]:
    """(evaluation tags of a run, whether the run is evaluation only).

    Evaluation tags come from a split subdirectory (``validation/epoch_loss``, ``eval/loss``) or
    from a run directory that is itself a split (``logs/validation`` given on its own). An
    evaluation loss is measured on held-out data, never optimized: a rise in it is no Adam blowup.
    """
    from adamdiag.io.events import is_eval_tag, split_of

    tags = sorted(
        {str(t) for t in events.scalars["tag"].unique()} | {str(t) for t in events.histograms["tag"].unique()}
    )
    run = Path(events.run)
    if run.is_dir() and split_of(run.name) == "eval":
        return tags, bool(tags)
    ev = [t for t in tags if is_eval_tag(t)]
    return ev, bool(ev) and len(ev) == len(tags)


def scan_paths(
    paths: Sequence[Path],
    *,
    checkpoints: Path | None = None,
    convention: str | None = None,
    trust_checkpoint: bool = False,
    loss_tags: list[str] | None = None,
    grad_norm_tag: str | None = None,
    assume: Assumptions | None = None,
    jobs: int | None = None,
    grad_clip: float | None = None,
) -> Report:
    """Diagnose every run found under ``paths``. ``loss_tags``/``grad_norm_tag``: the user's tags
    (``--loss-tag``, repeatable, the total first; ``--grad-norm-tag``), else the shared auto-pick.
    ``assume``: values for hyperparameters a checkpoint does not store (``--assume-*``); ``jobs``:
    tensors of a checkpoint read in parallel (``--jobs``); ``grad_clip``: the gradient-norm clip the
    training used (``--grad-clip``), else what the writer logged (HF Trainer's max_grad_norm).

    Raises :class:`adamdiag.errors.InputError` when a path is missing or holds no event files, or
    when the only run found cannot be read; among several runs an unreadable one becomes an
    ``inconclusive`` entry with AD902 and the others are diagnosed. What the search skipped outside
    any run (unreadable folders, stray files, link loops) is printed as a warning on stderr.
    """
    from adamdiag.analysis.diagnose import RunInputs, diagnose
    from adamdiag.analysis.fastai_logs import logged_adam_hyperparameters
    from adamdiag.analysis.keras_logs import epoch_axis_to_iterations
    from adamdiag.console import warn_all
    from adamdiag.errors import InputError, missing_path
    from adamdiag.io.events import (
        logged_arguments,
        read_runs,
        writer_adam_hyperparameters,
        writer_clip_norm,
        writer_non_adam_optimizer,
    )
    from adamdiag.pipeline.same_log import logged_twice
    from adamdiag.results.report import Finding, RunReport

    if checkpoints is not None and not Path(checkpoints).exists():
        raise missing_path(checkpoints, "--checkpoints")
    report = Report(tool_version=__version__)
    problems: list = []  # adamdiag.io.events.Problem
    with stderr_progress() as prog:
        task = prog.add_task("reading runs", total=None)
        all_events = read_runs(
            [Path(p) for p in paths],
            problems=problems,
            run_progress=lambda done, total: prog.update(task, completed=done, total=total),
        )
        failed = [p for p in problems if p.kind == "run"]
        if not all_events:
            raise InputError(failed[0].message if failed else problems[0].message if problems else "nothing readable")
        for p in failed:
            report.runs.append(
                RunReport(
                    run=p.path,
                    verdict="inconclusive",
                    warnings=[p.message],
                    findings=[Finding("AD902", "warning", f"unreadable: {p.message}")],
                )
            )
        read = [e.run for e in all_events]
        for p in problems:
            if p.kind == "note" or (p.kind == "skipped" and not any(p.path != r and _under(p.path, r) for r in read)):
                report.warnings.append(p.message)
        # report_to="all": the same training in TensorBoard and wandb/MLflow (a run named itself is kept)
        named = {str(Path(p)) for p in paths}
        twice = {dup: kept for dup, kept in logged_twice(all_events).items() if str(Path(dup)) not in named}
        if twice:
            all_events = [e for e in all_events if e.run not in twice]
            report.warnings += [
                f"{dup}: the same loss log as {kept} (equal steps and values): diagnosed once, from the event files"
                for dup, kept in twice.items()
            ]
        warn_all(report.warnings)
        prog.update(task, description="diagnosing", completed=0, total=len(all_events))
        ck_roots = checkpoint_roots(checkpoints, [Path(e.run) for e in all_events])
        beside = checkpoints_beside_logs(paths, all_events) if checkpoints is None else {}
        for events in all_events:
            run_dir = Path(events.run)
            warnings = list(events.warnings)
            # Files of this run's folder left out (a stray tfevents.md, an unreadable file): AD904 each.
            skipped = [
                skipped_file_finding(p.message)
                for p in problems
                if p.kind == "skipped" and p.path != events.run and _under(p.path, events.run)
            ]
            eval_tags, eval_only = split_eval(events)
            if eval_only:
                report.runs.append(
                    RunReport(
                        run=str(run_dir),
                        verdict="inconclusive",
                        sources=["scalars"],
                        warnings=warnings,
                        findings=[
                            *skipped,
                            Finding(
                                "AD905",
                                "info",
                                f"evaluation curve: not diagnosed ({', '.join(eval_tags[:3])}"
                                f"{' ...' if len(eval_tags) > 3 else ''}): an evaluation loss is measured, "
                                "not optimized, so its rise is no Adam blowup; scan the training run",
                                evidence={"tags": eval_tags[:50]},
                            ),
                        ],
                    )
                )
                prog.advance(task)
                continue
            scalars, histograms = events.scalars, events.histograms
            if eval_tags:  # train and eval in one run: only the training curves are diagnosed
                scalars = scalars[~scalars["tag"].isin(eval_tags)]
                histograms = histograms[~histograms["tag"].isin(eval_tags)]
            if len(scalars) == 0 and len(histograms) == 0:
                # Read, but nothing to diagnose (an hparams-only file): an inconclusive run with its
                # reason, like any other undiagnosable run — `check` fails on it, `scan` exits 0.
                warnings.append(f"{run_dir}: the event files hold no scalars or histograms")
            ck_root = ck_roots[run_dir]
            non_adam: list[str] = []
            load = functools.partial(
                load_checkpoint_summaries,
                trust=trust_checkpoint,
                convention=convention,
                warnings=warnings,
                non_adam=non_adam,
                assume=assume,
                jobs=jobs,
            )
            # a run of an MLflow database has no folder of its own (its path is inside the database file)
            summaries, ck_paths = load(ck_root) if ck_root.exists() else ([], [])
            lent = None
            if not summaries and not non_adam and str(run_dir) in beside:
                # HF Trainer's layout: output_dir/checkpoint-N beside output_dir/runs/<stamp>/
                summaries, ck_paths = load(beside[str(run_dir)])
                lent = beside[str(run_dir)] if summaries else None
            above = hf_output_dir_above(run_dir) if checkpoints is None and not summaries and not non_adam else None
            if above is not None:
                # the run folder itself was named: HF's output_dir two levels up holds its checkpoints
                summaries, ck_paths = load(above)
                lent = above if summaries else None
            epoch_axis = None
            if summaries:
                # Keras' epoch_* points sit at the epoch index, its checkpoints at optimizer iterations
                scalars, epoch_axis = epoch_axis_to_iterations(scalars, events.scalars)
            conv = convention or (summaries[0].convention if summaries else "torch")
            # the configuration the writer logged (HF args, Megatron, fairseq's command line), read once
            arguments = logged_arguments(events) if grad_clip is None or not summaries else []
            clip, clip_source = (
                (grad_clip, "--grad-clip") if grad_clip is not None else writer_clip_norm(events, arguments)
            )
            # β2/eps for a run without checkpoints: --assume-* first, else what the writer logged
            hyper, hyper_source = ({}, "") if summaries else writer_adam_hyperparameters(events, arguments)
            if not summaries and not non_adam and (other := writer_non_adam_optimizer(events, arguments)):
                non_adam.append(f"{run_dir}: the logged configuration names {other}")  # no Adam v to rebuild
            if not summaries and not hyper:  # fastai logs its hyperparameters as scalars (sqr_mom_0, eps_0)
                hyper, hyper_source = logged_adam_hyperparameters(scalars)
            given = {k: v for k, v in (assume.given() if assume is not None else {}).items() if k != "lr"}
            if given and not summaries:
                hyper, hyper_source = {**hyper, **given}, "--assume-" + "/--assume-".join(sorted(given))
            inp = RunInputs(
                run=str(run_dir),
                scalars=scalars,
                histograms=histograms,
                checkpoints=summaries,
                warnings=warnings,
                convention=conv,
                checkpoint_paths=ck_paths,
                non_adam=non_adam,
                clip_norm=clip,
                clip_source=clip_source,
                hyper=hyper,
                hyper_source=hyper_source,
                checkpoint_root=str(ck_root) if checkpoints is not None else None,
                epoch_axis=epoch_axis,
                running_means=dict(events.running_means),
            )
            try:
                rep = diagnose(inp, loss_tags=loss_tags, grad_norm_tag=grad_norm_tag)
            except Exception as e:  # noqa: BLE001 - a bug on one run's odd data must not cost the others theirs
                if len(all_events) == 1 or os.environ.get("ADAMDIAG_DEBUG"):
                    raise  # alone, the CLI's one-line internal error (exit 2); the traceback when debugging
                why = f"internal error while diagnosing it: {type(e).__name__}: {e} (set ADAMDIAG_DEBUG=1 for details)"
                report.runs.append(RunReport(run=str(run_dir), verdict="inconclusive", warnings=[*warnings, why]))
                prog.advance(task)
                continue
            rep.findings += [Finding("AD901", "info", note) for note in events.notes]
            rep.findings += [Finding("AD901", "warning", note) for note in events.warning_notes]
            if lent is not None:
                rep.findings.append(
                    Finding(
                        "AD901",
                        "info",
                        f"optimizer checkpoints read from {lent}, beside the run's logs: that folder holds this "
                        "training's runs only — one run, or one training resumed into new run folders (HF Trainer's "
                        "output_dir/checkpoint-N, fairseq's checkpoints/ beside its tensorboard folder); pass "
                        "--checkpoints to choose",
                        evidence={"checkpoints_root": str(lent)},
                    )
                )
            rep.findings.extend(skipped)
            rep.warnings.extend(f.message for f in skipped)
            merge_live_findings(rep, run_dir)
            report.runs.append(rep)
            prog.advance(task)
    return report


def load_series(run: str, tag: str) -> tuple[Any, Any]:
    """(steps, values) of ``tag`` in ``run`` as the diagnosis saw it (restarts resolved), for plots."""
    from adamdiag.analysis.evidence import series_arrays
    from adamdiag.io.events import read_run

    return series_arrays(read_run(Path(run)).scalars, tag)


def merge_live_findings(rep: Any, run_dir: Path) -> None:
    """Findings of the live monitor's ``adamdiag-live.json`` in the run directory (schema
    adamdiag.live/1, written atomically while training) join the run's, so ``check`` gates on what the
    monitor saw even before the event files show it. A finding scan made itself (same id, step and
    tensor) is not repeated; an unreadable live file is one warning."""
    import json

    from adamdiag.monitor import LIVE_FILE, LIVE_SCHEMA
    from adamdiag.results.report import Finding

    path = run_dir / LIVE_FILE
    if not run_dir.is_dir() or not path.is_file():
        return
    try:
        doc = json.loads(path.read_text())
        if doc.get("schema") != LIVE_SCHEMA:
            raise ValueError(f"schema {doc.get('schema')!r}")
        live = [f for r in doc.get("runs", []) for f in r.get("findings", [])]
        seen = {(f.id, f.step, f.tensor) for f in rep.findings}
        new = [
            Finding(
                f["id"],
                f["severity"],
                f["message"],
                step=f.get("step"),
                tensor=f.get("tensor"),
                evidence={**(f.get("evidence") or {}), "source": "live"},
            )
            for f in live
            if (f["id"], f.get("step"), f.get("tensor")) not in seen
            and f.get("severity") in ("error", "warning", "info")
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        rep.findings.append(Finding("AD902", "warning", f"{path}: unreadable live file ({e})"))
        return
    rep.findings += new
    rep.sources.append("live")
