"""TensorBoard event-file reader: every scalar and histogram event, at full resolution.

Reads the TFRecord framing directly (:mod:`adamdiag.io.tfrecord`) and decodes ``Event`` protos from
every writer in use: torch ``SummaryWriter``, tensorboardX, TF1 ``simple_value`` summaries, TF2
tensor summaries (plugin ``scalars``; float/double/half/int, ``tensor_content`` or ``*_val``) and
histograms (``HistogramProto``, and TF2 ``[k, 3]`` bucket tensors of plugin ``histograms``).
Values of other plugins (images, text, ...) are skipped and counted.

Unlike TensorBoard's default ``EventAccumulator`` nothing is sampled away: a run with several event files
keeps every event with its ``segment`` (file index ordered by first wall time) and ``source_file``;
:func:`adamdiag.analysis.frames.series` gives the value per step as the run really went. A restart that
says where it resumed (``SessionLog.START`` at step N: torch ``SummaryWriter(purge_step=N)``, TF1's
Supervisor) is purged as TensorBoard purges it — the folder's values logged before it at steps >= N are
dropped; in files of the format before SessionLog restarts (``file_version`` ``brain.Event:1`` or none)
TensorBoard's other purge applies instead: a tag whose step goes back loses its values logged before at
that step or later (:func:`_purge_orphans`, a note in ``RunEvents.notes``).

Two paths produce the same result: the reference (``read_file(..., fast=False)``: the plain-loop
framing of :func:`adamdiag.io.tfrecord.read_records_ref` and the protobuf classes, record by record)
and the fast path (speculative vectorized framing, one bulk CRC check per chunk and a numpy decoder
for the common scalar layouts, ``_decode_chunk``; whatever it does not recognise goes through the
reference decoder, in file order). Tests check them against each other on every test file.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from adamdiag.errors import InputError, missing_path
from adamdiag.io.detectron2_log import METRICS_JSON, is_metrics_json
from adamdiag.io.dvclive_log import is_dvclive_dir
from adamdiag.io.framework_logs import framework_writer, is_framework_log, read_framework_log
from adamdiag.io.mlflow_log import is_database_run, is_file_store_run, keras_optimizer_config
from adamdiag.io.mmcv_log import SUFFIX as MMCV_SUFFIX
from adamdiag.io.mmcv_log import is_mmcv_log
from adamdiag.io.mmengine_log import SCALARS_JSON, is_scalars_json
from adamdiag.io.sacred_log import is_sacred_metrics
from adamdiag.io.torchtune_log import is_disk_log, is_log_name
from adamdiag.io.wandb_log import is_wandb_file
from adamdiag.printable import printable

if TYPE_CHECKING:  # pandas/numpy are imported lazily: the CLI imports this module's callers at start-up
    import pandas as pd

EVENT_GLOB = "events.out.tfevents.*"
SCALAR_COLUMNS = ["run", "tag", "step", "wall_time", "value", "segment", "source_file"]
HISTOGRAM_COLUMNS = [
    "run",
    "tag",
    "step",
    "wall_time",
    "min",
    "max",
    "num",
    "sum",
    "sum_squares",
    "segment",
    "source_file",
    "approx",
]
# Hugging Face Trainer's state file, read as a log where a run has no event files (io/trainer_state.py)
TRAINER_STATE = "trainer_state.json"
TRAINER_STATE_VERSION = "hf-trainer-state"
# Lightning's CSVLogger file, read as a log where a run has no event files (io/csv_log.py)
METRICS_CSV = "metrics.csv"
CSV_VERSION = "lightning-csv"
# Weights & Biases' run file (wandb/run-<date>-<id>/run-<id>.wandb), read as a log where a run has no event files
# (io/wandb_log.py)
WANDB_VERSION = "wandb-run"
# the link wandb keeps to its newest run folder (the folder itself is read under its own name)
WANDB_LATEST = "latest-run"
# MLflow's local stores (io/mlflow_log.py): a file-store run folder (meta.yaml + metrics/), an mlflow.db database
MLFLOW_VERSION = "mlflow"
# DVCLive's folder (dvclive/plots/metrics/*.tsv), read as a log where a run has no event files (io/dvclive_log.py)
DVCLIVE_VERSION = "dvclive"
# mmengine's LocalVisBackend file (work_dir/<timestamp>/vis_data/scalars.json), read as a log where a run has no
# event files (io/mmengine_log.py)
MMENGINE_VERSION = "mmengine-scalars"
# Detectron2's JSONWriter file (output_dir/metrics.json), read as a log where a run has no event files
# (io/detectron2_log.py)
DETECTRON2_VERSION = "detectron2-metrics"
# torchtune's DiskLogger files (<output_dir>/logs/log_<time>.txt), read as a log where a run has no event files
# (io/torchtune_log.py)
TORCHTUNE_VERSION = "torchtune-disklogger"
# mmcv 1.x's TextLoggerHook json log (work_dir/<timestamp>.log.json), read as a log where a run has no event files
# (io/mmcv_log.py)
MMCV_VERSION = "mmcv-json-log"
# Sacred's FileStorageObserver metrics.json (<basedir>/<run id>/metrics.json beside run.json), read as a log where a
# run has no event files (io/sacred_log.py)
SACRED_VERSION = "sacred-metrics"
# A tag with at least this many points all at one step was logged without a step (add_scalar without global_step)
UNSTEPPED_MIN_POINTS = 3
MAX_UNSTEPPED_NAMED = 4  # tags named in its note
# The file a run's writer arguments came from, when not an event file's text summary (training_args.bin)
ARGS_SOURCE = "__source__"
# Run several files in worker processes only when there is enough to read to pay for the start-up.
PARALLEL_MIN_BYTES = 64 << 20


@dataclass
class RunEvents:
    """Everything read from one run (a directory of event files, or a single file)."""

    run: str  # the run's path as given/found
    scalars: pd.DataFrame  # SCALAR_COLUMNS; run/tag/source_file categorical
    histograms: pd.DataFrame  # HISTOGRAM_COLUMNS; ``approx`` marks TF2 bucket tensors (sums estimated)
    warnings: list[str]  # damage etc., one line each naming file and byte offset
    # plugin name -> count of skipped summary values (images, text, ...); damage is counted here too:
    # crc_mismatch, corrupt_header, truncated, undecodable, empty_record
    skipped: dict[str, int]
    files: list[str]  # event files in segment order
    file_info: list[dict[str, Any]] = field(default_factory=list)  # per file: size, records, writer, ...
    # how the reader read the run where a writer's convention needed it (information, not damage)
    notes: list[str] = field(default_factory=list)
    # how it read the run where the writer left out what it needed and the reader had to assume it (AD901 warnings:
    # a writer given no step)
    warning_notes: list[str] = field(default_factory=list)
    # file path -> the configuration a framework log held (FileData.arguments), read with the file
    arguments: dict[str, dict[str, Any]] = field(default_factory=dict)
    # FileData.running_means of the run's files (tag -> finished epochs or None)
    running_means: dict[str, int | None] = field(default_factory=dict)


def is_event_file(path: Path) -> bool:
    """Name test used when searching directories (TensorBoard's own rule: contains 'tfevents'),
    plus a sniff of the first record header for files not named like a writer's
    (``events.out.tfevents.*``): a ``tfevents.md`` next to the logs is not an event file."""
    return "tfevents" in path.name and path.is_file() and not_event_file(path) is None


def not_event_file(path: Path) -> str | None:
    """Why a file with 'tfevents' in its name is not read as an event file, or None if it is one.

    A file named like a writer's (``events.out.tfevents.*``) is always read, so damage in it is
    reported record by record; any other name must start with a verifying TFRecord header.
    """
    if path.name.startswith("events.out.tfevents"):
        return None
    from adamdiag.io import tfrecord

    try:
        with open(path, "rb") as f:
            head = f.read(tfrecord.HEADER)
    except OSError as e:
        return f"cannot read it ({e.strerror or e})"
    if not head:
        return None  # an empty file: a writer that has just opened it
    if not tfrecord.starts_like_tfrecord(head):
        return "not a TensorBoard event file (no TFRecord header)"
    return None


# Sibling split directories that TensorBoard users write: Keras ``logs/train`` + ``logs/validation``,
# Estimator ``model_dir/`` + ``model_dir/eval/`` (``eval_<name>`` for named evaluations), fairseq's
# ``--tensorboard-logdir`` ``train_inner/`` (every --log-interval updates) + ``train/`` (per epoch) + ``valid/``.
# Only the names these writers use: a run a user called `test` or `val` must not lose its diagnosis.
TRAIN_SPLITS = frozenset({"train", "training", "train_inner"})
EVAL_SPLITS = frozenset({"validation", "eval", "evaluation", "valid"})


def split_of(name: str) -> str | None:
    """``"train"`` or ``"eval"`` for a split directory name (or a tag's first component), else None."""
    low = name.lower()
    if low in TRAIN_SPLITS:
        return "train"
    if low in EVAL_SPLITS or low.startswith("eval_"):
        return "eval"
    return None


def is_eval_tag(tag: str) -> bool:
    """A tag read from an evaluation split directory (``validation/epoch_loss``, ``eval/loss``)."""
    return "/" in tag and split_of(tag.split("/", 1)[0]) == "eval"


class Problem(NamedTuple):
    """Something passed over while finding or reading runs (one line for the user)."""

    path: str
    message: str
    # "skipped": a folder or file left out (damage to report); "run": a whole run unreadable;
    # "note": nothing lost (a link loop cut, a path given twice)
    kind: str = "skipped"


@dataclass
class Discovery:
    """The runs under some paths, and what was passed over while finding them."""

    runs: list[Path]
    # folders that could not be listed, symlink loops, stray files, overlapping arguments
    problems: list[Problem] = field(default_factory=list)


def _event_names(dirpath: str, filenames: list[str], problems: list[Problem]) -> list[str]:
    """The event files among ``filenames``; stray 'tfevents' files become problems."""
    out = []
    from adamdiag.errors import missing_path
    from adamdiag.io.checkpoints import non_regular

    for f in filenames:
        full = os.path.join(dirpath, f)
        if "tfevents" not in f:
            continue
        if not os.path.isfile(full):
            kind = non_regular(Path(full))
            if kind is not None:  # opening a FIFO would block: named, never opened
                problems.append(Problem(full, f"{full}: a {kind}, not an event file (not opened); skipped"))
            elif os.path.islink(full):  # a link that leads nowhere: ls shows it, so say why it is not read
                problems.append(Problem(full, f"{missing_path(full)}; skipped"))
            continue
        why = not_event_file(Path(full))
        if why is None:
            out.append(f)
        else:
            problems.append(Problem(full, f"{full}: {why}; skipped"))
    return out


def _walk(root: Path, problems: list[Problem], framework_logs: list[Path] | None = None) -> list[Path]:
    """Directories under ``root`` that directly hold event files; symlinked folders are followed
    (TensorBoard does) but each real directory is entered once, so a link loop ends. With
    ``framework_logs``, the frameworks' own log files met on the way (Hugging Face's trainer_state.json,
    Lightning's metrics.csv) are appended there."""
    found: list[Path] = []
    visited: set[str] = set()

    def onerror(e: OSError) -> None:
        problems.append(Problem(str(e.filename), f"cannot read directory {e.filename}: {e.strerror or e}; skipped"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:  # reached again through a link: its runs are already found
            dirnames[:] = []
            problems.append(
                Problem(dirpath, f"{dirpath}: link to a directory already searched ({real}); skipped", "note")
            )
            continue
        visited.add(real)
        dirnames.sort()
        if WANDB_LATEST in dirnames and os.path.islink(os.path.join(dirpath, WANDB_LATEST)):
            dirnames.remove(WANDB_LATEST)  # wandb's link to its newest run folder, also found by its own name
        if ".trash" in dirnames and any(os.path.isfile(os.path.join(dirpath, d, "meta.yaml")) for d in dirnames):
            dirnames.remove(".trash")  # an MLflow file store's deleted runs (beside its experiment folders)
        if _event_names(dirpath, filenames, problems):
            found.append(Path(dirpath))
        if framework_logs is not None:
            framework_logs += [Path(dirpath) / name for name in (TRAINER_STATE, METRICS_CSV) if name in filenames]
            framework_logs += [Path(dirpath) / n for n in (SCALARS_JSON, METRICS_JSON) if n in filenames]
            framework_logs += [Path(dirpath) / name for name in sorted(filenames) if is_wandb_file(name)]
            framework_logs += [Path(dirpath) / name for name in sorted(filenames) if is_log_name(name)]
            framework_logs += [Path(dirpath) / name for name in sorted(filenames) if name.endswith(MMCV_SUFFIX)]
            if "meta.yaml" in filenames and "metrics" in dirnames:  # an MLflow file-store run
                framework_logs.append(Path(dirpath) / "meta.yaml")
            framework_logs += [Path(dirpath) / n for n in ("mlflow.db",) if n in filenames]
            if "plots" in dirnames and is_dvclive_dir(Path(dirpath)):
                framework_logs.append(Path(dirpath) / "plots" / "metrics")
    return found


def _log_of_its_folder(name: str) -> bool:
    """Whether a framework log of this name makes the folder it lies in the run (Lightning's metrics.csv, mmengine's
    scalars.json, Detectron2's or Sacred's metrics.json, torchtune's log_<time>.txt, mmcv's <timestamp>.log.json)."""
    return name in (METRICS_CSV, SCALARS_JSON, METRICS_JSON) or is_log_name(name) or name.endswith(MMCV_SUFFIX)


def _autolog_tb_copy(run: Path, event_dirs: set[Path]) -> tuple[str, Path] | None:
    """(how MLflow's Keras callback logged ``run``: "batch" or "epoch", its artifacts folder) when event folders
    found lie in that folder — the TensorBoard log autolog copies there at the end of fit (per epoch unless the
    user's own callback logged more) — and, for a file-store run, no other event folder lies inside the run; None
    otherwise. A run logged per batch is read from its metrics and the copy is no run of its own; one logged per
    epoch is read from the copy (the same epochs), as a file-store run with events inside always was."""
    from adamdiag.io.mlflow_log import artifacts_dir, keras_callback_mode

    if not event_dirs:
        return None
    art = artifacts_dir(run)
    if art is None:
        return None
    where = art.resolve()
    in_art = [d for d in event_dirs if where in d.resolve().parents]
    if not in_art or any(run in d.parents and d not in in_art for d in event_dirs):
        return None
    mode = keras_callback_mode(run)
    return (mode, art) if mode else None


def _framework_log_runs(
    root: Path, logs: list[Path], event_dirs: list[Path], problems: list[Problem]
) -> tuple[list[Path], list[Path]]:
    """Runs under ``root`` known only by a framework's own log file: Hugging Face Trainer output dirs by their
    trainer_state.json, Lightning CSVLogger folders by their metrics.csv, Weights & Biases run folders by their
    run-<id>.wandb — those with no event files in or around them (a run that logged to TensorBoard is read from
    its events). The folders of one wandb run id (a resumed run) are one run, named by its first folder; one
    whose history was copied from TensorBoard files found here (``sync_tensorboard``) is read from those.
    Returns (those runs, the artifacts folders whose event files are MLflow's copy of one of them: no runs)."""
    from adamdiag.io.csv_log import has_step_column
    from adamdiag.io.mlflow_log import is_deleted, is_file_store_run, is_sqlite_store, sqlite_runs
    from adamdiag.io.trainer_state import output_dir_of
    from adamdiag.io.wandb_log import first_folder_of_run

    logged = set(event_dirs)
    around = logged | {a for d in event_dirs for a in d.parents}  # event dirs and every folder above one
    out: list[Path] = []
    copies: list[Path] = []
    seen: set[Path] = set()
    for f in logs:
        if f.name == METRICS_CSV and not has_step_column(f):
            continue  # some other metrics.csv
        if f.name == SCALARS_JSON and not is_scalars_json(f):
            continue  # some other scalars.json
        if f.name == METRICS_JSON and not is_metrics_json(f) and not is_sacred_metrics(f):
            continue  # some other metrics.json (DVCLive's summary, an evaluation's results)
        if is_log_name(f.name) and not is_disk_log(f):
            continue  # some other log_<number>.txt
        if f.name.endswith(MMCV_SUFFIX) and not is_mmcv_log(f):
            continue  # some other *.log.json
        if f.name == "mlflow.db":
            # (its folder is often the training's working directory, above the event files of other loggers: the
            # database's runs are read all the same, and one logged to both is diagnosed once, scan's same_log)
            if not is_sqlite_store(f):
                continue
            try:
                for r in sqlite_runs(f):
                    copy = _autolog_tb_copy(r, logged) if r not in seen else None
                    if copy is not None and copy[0] == "epoch":
                        continue  # read from the copy
                    if copy is not None:
                        copies.append(copy[1])
                    if r not in seen:
                        out.append(r)
            except InputError as e:
                problems.append(Problem(str(f), f"{e}; skipped"))
            continue
        if f.name == "meta.yaml":
            if not is_file_store_run(f.parent):
                continue
            if is_deleted(f.parent):
                problems.append(Problem(str(f.parent), f"{f.parent}: an MLflow run marked deleted; not read", "note"))
                continue
            run = f.parent
        elif f.name == TRAINER_STATE:
            run = output_dir_of(f, root)
        elif _log_of_its_folder(f.name):
            run = f.parent  # (torchtune: the logs folder; a resumed run's files are in it too)
        elif f.name == "metrics" and f.parent.name == "plots":  # a DVCLive folder's plots/metrics
            run = f.parent.parent
        else:
            run = first_folder_of_run(f.parent)
        inside_event_run = (f.name == TRAINER_STATE or _log_of_its_folder(f.name)) and any(
            a in logged for a in run.parents
        )
        if f.name == "meta.yaml" and run in around and (copy := _autolog_tb_copy(run, logged)) and copy[0] == "batch":
            seen.add(run)  # logged per batch: read from its metrics (its note says so), not from autolog's copy
            out.append(run)
            copies.append(copy[1])
            continue
        if run in around or inside_event_run or run in seen:
            # a run logged to TensorBoard is read from its events (wandb's synced copy of them lies inside its run
            # folder); a wandb or MLflow run below another run's event files is read (scan's same_log: once)
            continue
        if logged and is_wandb_file(f) and (synced := _synced_runs_found(f, logged)):
            problems.append(
                Problem(str(run), f"{run}: wandb synced it from TensorBoard; read from {synced[0]} instead", "note")
            )
            seen.add(run)
            continue
        seen.add(run)
        out.append(run)
    return out, copies


def _synced_runs_found(wandb_file: Path, event_dirs: set[Path]) -> list[Path]:
    """The event-file runs among ``event_dirs`` that a wandb run file's history was copied from."""
    from adamdiag.io.wandb_log import synced_tensorboard_dirs

    out = []
    for d in synced_tensorboard_dirs(wandb_file):
        tail = d.parts[-2:]  # the path is absolute: a tree copied or moved since keeps the folder and its parent
        for e in sorted(event_dirs):
            here = e.resolve()
            pairs = {here.parts[i : i + 2] for i in range(len(here.parts) - 1)}
            if here == d or d in here.parents or tail in pairs:
                out.append(e)
    return out


def discover(paths: Sequence[Path]) -> Discovery:
    """Runs under ``paths``, with what was skipped on the way.

    Each path: a directory (searched recursively; every directory that directly holds event files
    is a run) or an event file itself. A split directory (``train``, ``validation``, ``eval``...) found
    below a given path belongs to its parent's run (its tags get the split as a prefix). Runs given
    twice (a folder and one of its own files, a folder and its parent) are read once. Raises
    :class:`InputError` for a missing path, or when no event files are found under a path.
    """
    runs: list[Path] = []
    problems: list[Problem] = []
    for raw in paths:
        p = Path(raw)
        if is_database_run(p):  # a run of an MLflow database, as scan names it
            runs.append(p)
            continue
        if not p.exists():
            raise missing_path(raw)
        if p.is_file() and is_framework_log(p):
            runs.append(p)
            continue
        if p.is_file() and p.name == "mlflow.db":
            from adamdiag.io.mlflow_log import sqlite_runs

            got = sqlite_runs(p)
            if not got:
                raise InputError(f"{p}: an MLflow database without runs")
            runs += got
            continue
        if p.is_file():
            from adamdiag.io.filekind import not_an_event_file

            wrong = not_an_event_file(p)  # a checkpoint given here would read as "corrupt at byte 0"
            if wrong:
                raise InputError(wrong)
            runs.append(p)
            continue
        if not p.is_dir():
            from adamdiag.io.checkpoints import non_regular

            raise InputError(
                f"{p}: a {non_regular(p) or 'special file'}, not an event file or a directory (not opened)"
            )
        if not os.access(p, os.R_OK | os.X_OK):
            problems.append(Problem(str(p), f"cannot read directory {p}: permission denied; skipped"))
            continue
        found = []
        logs: list[Path] = []
        dirs = _walk(p, problems, logs)
        have = set(dirs)
        for d in dirs:
            # A split folder joins its parent's run when the parent logs too (Estimator: model_dir/ +
            # eval/) or has a sibling split (Keras: train/ + validation/); alone it stays its own run.
            siblings = sum(1 for x in dirs if x.parent == d.parent and split_of(x.name))
            grouped = d != p and split_of(d.name) and (d.parent in have or siblings >= 2)
            run = d.parent if grouped else d
            if run not in found:
                found.append(run)
        extra, copies = _framework_log_runs(p, logs, dirs, problems)
        if copies:
            where = [c.resolve() for c in copies]
            found = [r for r in found if not any(c == r.resolve() or c in r.resolve().parents for c in where)]
        found += extra
        if not found:
            stray = [q.message for q in problems if q.path.startswith(str(p))]
            detail = f" ({stray[0]})" if stray else ""
            raise InputError(
                f"no TensorBoard event files (events.out.tfevents.*) nor Hugging Face trainer_state.json, Lightning "
                f"metrics.csv, wandb run files (run-*.wandb), MLflow runs (mlruns/, mlflow.db), DVCLive folders, "
                f"mmengine scalars.json, Detectron2 or Sacred metrics.json, torchtune logs (log_*.txt) or mmcv json logs "
                f"(*.log.json) under {p}{detail}"
            )
        runs.extend(found)
    # Read every file once: the run with more files claims first (a folder before one of its own files).
    files = {i: {f.resolve() for f in run_files(r)} for i, r in enumerate(runs)}
    claimed: dict[Path, Path] = {}
    keep = []
    for i in sorted(range(len(runs)), key=lambda i: -len(files[i])):
        mine = files[i]
        if mine and mine <= claimed.keys():
            owner = claimed[next(iter(mine))]
            if owner.resolve() != runs[i].resolve():
                problems.append(Problem(str(runs[i]), f"{runs[i]}: already read as part of {owner}; read once", "note"))
            continue
        for f in mine:
            claimed.setdefault(f, runs[i])
        keep.append(i)
    out = [runs[i] for i in sorted(keep)]
    if not out:
        raise InputError(
            problems[0].message if problems else "no TensorBoard event files (events.out.tfevents.*) given"
        )
    return Discovery(runs=out, problems=problems)


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """Runs under ``paths`` (see :func:`discover`; what it skipped is not reported here)."""
    return discover(paths).runs


def run_files(run: Path) -> list[Path]:
    """The event files of one run: the file itself, or those directly in the directory and in its
    split subdirectories (``train/``, ``validation/``, ``eval/``...: when the directory logs itself or
    has two of them, as :func:`discover` groups them), by name."""
    if run.is_file() or is_database_run(run):
        return [run]
    out = []
    try:
        entries = sorted(run.iterdir())
    except OSError as e:
        raise InputError(f"cannot read directory {run}: {e.strerror or e}") from None
    for f in entries:
        if is_event_file(f):
            out.append(f)
    split_files = []
    for sub in entries:
        if sub.is_dir() and split_of(sub.name):
            try:
                files = sorted(f for f in sub.iterdir() if is_event_file(f))
            except OSError:
                continue  # reported by the directory walk
            if files:
                split_files.append(files)
    if out or len(split_files) >= 2:  # else a lone split folder is a run of its own (see discover)
        out += [f for files in split_files for f in files]
    if not out:
        from adamdiag.io.mmcv_log import log_files as mmcv_log_files
        from adamdiag.io.torchtune_log import log_files
        from adamdiag.io.trainer_state import newest_state
        from adamdiag.io.wandb_log import files_of_run

        state = newest_state(run)  # a Trainer run that logged nowhere else
        if state is not None:
            out.append(state)
        elif (run / METRICS_CSV).is_file():  # a Lightning CSVLogger run
            out.append(run / METRICS_CSV)
        elif is_scalars_json(run / SCALARS_JSON):  # an mmengine LocalVisBackend folder
            out.append(run / SCALARS_JSON)
        elif is_metrics_json(run / METRICS_JSON):  # a Detectron2 output_dir whose event files are gone
            out.append(run / METRICS_JSON)
        elif is_sacred_metrics(run / METRICS_JSON):  # a Sacred FileStorageObserver run folder
            out.append(run / METRICS_JSON)
        elif torchtune_logs := log_files(run):  # a torchtune logs folder: a resumed run's files too, in start order
            out += torchtune_logs
        elif mmcv_logs := mmcv_log_files(run):  # an mmcv 1.x work_dir: a resumed run's json logs too, in start order
            out += mmcv_logs
        elif is_file_store_run(run):  # an MLflow file-store run: its meta.yaml stands for its metric files
            out.append(run / "meta.yaml")
        elif is_dvclive_dir(run):  # a DVCLive folder: its plots/metrics directory stands for its metric files
            out.append(run / "plots" / "metrics")
        else:
            out += files_of_run(run)  # a wandb run folder: its file, and a resumed run's later folders' files
    return out


def tag_prefix(run: str, file: str) -> str:
    """``"validation/"`` for a file of a run's split subdirectory, ``""`` for the run's own files."""
    parent = os.path.dirname(file)
    if os.path.isfile(run) or os.path.normpath(parent) == os.path.normpath(run):
        return ""
    return os.path.relpath(parent, run).replace(os.sep, "/") + "/"


# --------------------------------------------------------------------------------------------
# Per-file decoding. A file is decoded on its own (picklable result) so files can go to workers.


@dataclass
class FileData:
    """Rows decoded from one event file, as plain columns (no pandas), plus its diagnostics."""

    path: str
    size: int
    tags: list[str]  # scalar tag vocabulary; ``s_tag`` holds indices into it
    # Scalar columns as lists of numpy chunks (file order), concatenated once per run.
    s_tag: list  # int32
    s_step: list  # int64
    s_wall: list  # float64
    s_value: list  # float64
    h_rows: list[tuple]  # (tag, step, wall, min, max, num, sum, sum_squares, approx)
    warnings: list[str]
    skipped: Counter
    records: int = 0
    file_version: str = ""
    first_wall_time: float = float("inf")
    kinds: set[str] = field(default_factory=set)  # simple_value, tensor, histo, ...
    readable: bool = True  # False: not a single valid record in a non-empty file
    # SessionLog START events (a restart) where the file's own file_version does not rule them out: (step, scalar
    # rows before it, histogram rows before it, inherited: before the file's first file_version event, so
    # whether it purges depends on the folder's earlier files) in file order
    purges: list[tuple[int, int, int, bool]] = field(default_factory=list)
    grouped: bool = False  # a writer's child folder folded into its run: the tags are already final
    # The events TensorBoard's out-of-order purge needs (file_version events always; every event where the file
    # has no version >= 2 in force), see :class:`Trace`; ``trace_tags`` names its tag codes (prefixed like ``tags``)
    trace: Trace | None = None
    trace_tags: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # steps logged twice with different values (_finish)
    notes: list[str] = field(default_factory=list)  # a framework log's reader on where its rows come from
    warning_notes: list[str] = field(default_factory=list)  # ... and on what it had to leave as logged (AD901 warning)
    # the training's configuration a framework log holds (wandb.config, MLflow/DVCLive params, HF's
    # training_args.bin), read with its rows (ARGS_SOURCE says where); None for event files (logged_arguments)
    arguments: dict[str, Any] | None = None
    # tags its writer is known to log as Keras' per-epoch running means with no epoch_* values beside them
    # (MLflow's Keras callback per batch) -> the number of finished epochs when the log tells it, else None
    running_means: dict[str, int | None] = field(default_factory=dict)


class Trace(NamedTuple):
    """Events of one file in file order, as ``EventAccumulator``'s out-of-order purge sees them (files with
    ``file_version`` < 2 or none): every event of the stretches the file's own version does not rule out, and the
    file_version events. ``kind``: ``_EV_OTHER`` (no summary: its step becomes the most recent step), ``_EV_SUMMARY``,
    ``_EV_V1`` / ``_EV_V2`` (a file_version event switching to the out-of-order / the SessionLog rule).
    ``s_before``/``h_before``: the file's scalar/histogram rows before the event. ``tag_ev``/``tag_code``: one
    entry per summary value, the event's index and the tag's code in ``FileData.trace_tags``."""

    step: Any  # int64
    kind: Any  # int8
    s_before: Any  # int64
    h_before: Any  # int64
    tag_ev: Any  # int64
    tag_code: Any  # int64


_SESSION_START = 1  # SessionLog.START (tensorboard.compat.proto.event_pb2)
# Trace kinds (see Trace)
_EV_OTHER, _EV_SUMMARY, _EV_V1, _EV_V2 = 0, 1, 2, 3


def restarts_by_session_log(file_version: str) -> bool:
    """Whether TensorBoard's ``EventAccumulator``, from a ``file_version`` event on, finds restarts by
    ``SessionLog.START`` (version >= 2, every current writer's ``brain.Event:2``) rather than by steps going back
    (version < 2, ``brain.Event:1`` of TensorFlow before 0.12, or a version it cannot parse). Mirrors
    ``event_util.ParseFileVersion`` (a float, -1 when unparsable) and ``_MaybePurgeOrphanedData`` (``if
    file_version and file_version >= 2``; no file_version event at all is the out-of-order rule too).

    >>> [restarts_by_session_log(v) for v in ("brain.Event:2", "brain.Event:1", "brain.Event:0", "x", "")]
    [True, False, False, False, False]
    """
    try:
        version = float(file_version.split("brain.Event:")[-1])
    except ValueError:
        version = -1.0
    return bool(version) and version >= 2


_DT_FLOAT, _DT_DOUBLE, _DT_INT32, _DT_INT64, _DT_BFLOAT16, _DT_HALF = 1, 2, 3, 9, 14, 19


def tensor_scalar(t: Any) -> float | None:
    """The single number in a TensorProto (TF2 scalar summary), or None if it is not one number."""
    import numpy as np

    n_elems = 1
    for d in t.tensor_shape.dim:
        n_elems *= d.size
    if n_elems != 1:
        return None
    if t.dtype == _DT_FLOAT:
        if t.tensor_content:
            return float(np.frombuffer(t.tensor_content[:4], "<f4")[0]) if len(t.tensor_content) >= 4 else None
        return float(t.float_val[0]) if t.float_val else 0.0
    if t.dtype == _DT_DOUBLE:
        if t.tensor_content:
            return float(np.frombuffer(t.tensor_content[:8], "<f8")[0]) if len(t.tensor_content) >= 8 else None
        return float(t.double_val[0]) if t.double_val else 0.0
    if t.dtype in (_DT_HALF, _DT_BFLOAT16):
        if t.tensor_content:
            bits = int.from_bytes(t.tensor_content[:2], "little") if len(t.tensor_content) >= 2 else None
        else:
            bits = t.half_val[0] if t.half_val else 0
        if bits is None:
            return None
        if t.dtype == _DT_HALF:
            return float(np.array([bits], np.uint16).view(np.float16)[0])
        return float(np.array([bits << 16], np.uint32).view(np.float32)[0])
    if t.dtype == _DT_INT32:
        if t.tensor_content:
            return float(np.frombuffer(t.tensor_content[:4], "<i4")[0]) if len(t.tensor_content) >= 4 else None
        return float(t.int_val[0]) if t.int_val else 0.0
    if t.dtype == _DT_INT64:
        if t.tensor_content:
            return float(np.frombuffer(t.tensor_content[:8], "<i8")[0]) if len(t.tensor_content) >= 8 else None
        return float(t.int64_val[0]) if t.int64_val else 0.0
    return None


def tensor_histogram(t: Any) -> tuple[float, float, float, float, float] | None:
    """(min, max, num, sum, sum_squares) of a TF2 ``[k, 3]`` histogram tensor (left, right, count).

    TF2 keeps only buckets, so sum and sum_squares are estimated from bucket centres.
    """
    import numpy as np

    dims = [d.size for d in t.tensor_shape.dim]
    if len(dims) != 2 or dims[1] != 3:
        return None
    k = dims[0]
    if t.dtype == _DT_DOUBLE:
        arr = np.frombuffer(t.tensor_content, "<f8") if t.tensor_content else np.array(t.double_val, "f8")
    elif t.dtype == _DT_FLOAT:
        arr = np.frombuffer(t.tensor_content, "<f4") if t.tensor_content else np.array(t.float_val, "f4")
    else:
        return None
    if arr.size != 3 * k:
        return None
    b = arr.astype(np.float64).reshape(k, 3)
    return bucket_moments(b[:, 0], b[:, 1], b[:, 2])


def bucket_moments(left: Any, right: Any, count: Any) -> tuple[float, float, float, float, float]:
    """(min, max, num, sum, sum_squares) of a histogram kept as buckets only — TF2's bucket tensors, wandb's
    ``wandb.Histogram`` — each value taken at its bucket's centre. Measured on the gradients of a small MLP (64
    equal buckets over [min, max], as wandb.watch makes them): mean g² within 3% of the exact one (median 0.1%). A
    tensor of mostly exact zeros (an embedding's rows not in the batch) reads high: the zeros count at their
    bucket's centre.

    >>> bucket_moments([-1.0, 0.0], [0.0, 1.0], [1, 3])
    (-1.0, 1.0, 4.0, 1.0, 1.0)
    """
    import numpy as np

    left, right = np.asarray(left, np.float64), np.asarray(right, np.float64)
    cnt = np.asarray(count, np.float64)
    if len(cnt) == 0:
        return (0.0, 0.0, 0.0, 0.0, 0.0)
    with np.errstate(all="ignore"):  # edges near the float limits overflow: non-finite sums, said by the caller
        centre = (left + right) / 2
        return (
            float(left[0]),
            float(right[-1]),
            float(cnt.sum()),
            float((cnt * centre).sum()),
            float((cnt * centre * centre).sum()),
        )


class _Sink:
    """Collects decoded rows of one file; shared by the reference and the fast decoders.

    Scalars arrive either one at a time (reference path: Python lists) or as whole numpy chunks
    (fast path); ``parts`` keeps them in file order so the frame is built with one concatenate.
    """

    def __init__(self) -> None:
        self.tag_index: dict[str, int] = {}
        self.parts: list[tuple] = []  # (tag codes int32, step int64, wall float64, value float64)
        self._reset_lists()
        self.h_rows: list[tuple] = []
        self.skipped: Counter = Counter()
        self.plugins: dict[str, str] = {}  # tag -> plugin, from the first value that carried metadata
        self.kinds: set[str] = set()
        self.file_version = ""
        self.first_wall = float("inf")
        self.first_wall_idx = 1 << 62  # record index of first_wall: fast and slow rows may arrive out of order
        self.warnings: list[str] = []
        self.records = 0
        # SessionLog START: [step, scalar rows before it in the file, histogram rows before it, record index,
        # inherited (1: before the file's first file_version event)]
        self.purges: list[list[int]] = []
        # The out-of-order purge's trace (Trace). Until the file's first file_version event the rule in force is
        # the folder's (region 0: unknown here, so traced), then the event's (1: steps going back, traced;
        # 2: SessionLog START, not traced).
        self.region = 0
        self.tracing = True
        self.switches: list[tuple[int, bool]] = []  # (record index, tracing after it) at file_version events
        # reference-decoded events: [record index, step, kind, scalar rows before, histogram rows before]
        self.tr: list[list[int]] = []
        self.tr_tags: list[tuple[int, str]] = []  # (record index, tag) per value of those that are summaries
        # the fast path's: ((rec, step, s_before, h_before) arrays, row recs, tag codes, tag names)
        self.tr_fast: list[tuple] = []

    def _reset_lists(self) -> None:
        self.s_tag: list[int] = []
        self.s_step: list[int] = []
        self.s_wall: list[float] = []
        self.s_value: list[float] = []

    def tag_id(self, tag: str) -> int:
        idx = self.tag_index.get(tag)
        if idx is None:
            idx = self.tag_index[tag] = len(self.tag_index)
        return idx

    def scalar(self, tag: str, step: int, wall: float, value: float) -> None:
        self.s_tag.append(self.tag_id(tag))
        self.s_step.append(step)
        self.s_wall.append(wall)
        self.s_value.append(value)

    def note_wall(self, idx: int, wall: float) -> None:
        if wall and idx < self.first_wall_idx:
            self.first_wall, self.first_wall_idx = wall, idx

    def take_lists(self) -> tuple:
        """The rows appended one at a time since the last call, as numpy arrays."""
        import numpy as np

        out = (
            np.asarray(self.s_tag, np.int32),
            np.asarray(self.s_step, np.int64),
            np.asarray(self.s_wall, np.float64),
            np.asarray(self.s_value, np.float64),
        )
        self._reset_lists()
        return out

    def flush(self) -> None:
        if self.s_tag:
            self.parts.append(self.take_lists())

    def rows_now(self) -> int:
        """Scalar rows of the file so far, as the reference decoder has them."""
        return sum(len(p[1]) for p in self.parts) + len(self.s_tag)

    def restart(self, step: int, idx: int) -> None:
        """A SessionLog START at ``step`` (record ``idx``): TensorBoard drops the events read before it at
        steps >= ``step`` (where the SessionLog rule is in force). The scalar rows before it are counted here as
        the reference decoder has them; the fast path adds its own rows before the record when it merges
        (:func:`_decode_chunk`)."""
        self.purges.append([step, self.rows_now(), len(self.h_rows), idx, int(self.region == 0)])

    def trace_event(self, idx: int, step: int, kind: int, tags: Sequence[str] = ()) -> None:
        """One event for the out-of-order purge (:class:`Trace`); rows counted as in :meth:`restart`."""
        self.tr.append([idx, step, kind, self.rows_now(), len(self.h_rows)])
        self.tr_tags.extend((idx, t) for t in tags)

    def file_version_event(self, idx: int, step: int, version: str) -> None:
        """A file_version event: it sets the purge rule for what follows (until the next one), in this file and
        in the folder's later files that have none."""
        self.file_version = version
        by_session_log = restarts_by_session_log(version)
        self.region, self.tracing = (2, False) if by_session_log else (1, True)
        self.switches.append((idx, self.tracing))
        self.trace_event(idx, step, _EV_V2 if by_session_log else _EV_V1)

    def trace(self) -> tuple[Trace, list[str]]:
        """The file's :class:`Trace` (reference and fast events merged in file order) and its tag names."""
        import numpy as np

        names: dict[str, int] = {}
        rec = [np.asarray([e[0] for e in self.tr], np.int64)]
        cols = [[np.asarray([e[c] for e in self.tr], np.int64)] for c in (1, 3, 4)]
        kind = [np.asarray([e[2] for e in self.tr], np.int8)]
        t_rec = [np.asarray([r for r, _ in self.tr_tags], np.int64)]
        t_code = [np.asarray([names.setdefault(t, len(names)) for _, t in self.tr_tags], np.int64)]
        for (f_rec, f_step, f_s, f_h), row_rec, row_code, tag_names in self.tr_fast:
            rec.append(f_rec)
            for c, a in zip(cols, (f_step, f_s, f_h)):
                c.append(a)
            kind.append(np.full(len(f_rec), _EV_SUMMARY, np.int8))
            t_rec.append(row_rec)
            t_code.append(np.asarray([names.setdefault(t, len(names)) for t in tag_names] or [0], np.int64)[row_code])

        def order_of(keys: Any) -> Any:
            """The stable order of ``keys``; None when they are in order already (no copies then)."""
            return None if len(keys) < 2 or bool((keys[1:] >= keys[:-1]).all()) else np.argsort(keys, kind="stable")

        all_rec = np.concatenate(rec)
        step, s_before, h_before = (np.concatenate(c) for c in cols)
        kinds = np.concatenate(kind)
        order = order_of(all_rec)
        if order is not None:
            all_rec, step, s_before, h_before, kinds = (a[order] for a in (all_rec, step, s_before, h_before, kinds))
        tags_rec, codes = np.concatenate(t_rec), np.concatenate(t_code)
        t_order = order_of(tags_rec)  # (stable: the values in order within an event)
        if t_order is not None:
            tags_rec, codes = tags_rec[t_order], codes[t_order]
        one_each = len(tags_rec) == len(all_rec) and bool((tags_rec == all_rec).all())  # one value per event
        tag_ev = np.arange(len(all_rec)) if one_each else np.searchsorted(all_rec, tags_rec)
        return Trace(step, kinds, s_before, h_before, tag_ev, codes), list(names)


_PROTO: tuple | None = None


def _proto() -> tuple:
    """(Event parser, DecodeError), imported once: an import statement per record costs ~1 us."""
    global _PROTO
    if _PROTO is None:
        from google.protobuf.message import DecodeError
        from tensorboard.compat.proto import event_pb2

        _PROTO = (event_pb2.Event.FromString, DecodeError)
    return _PROTO


def _decode_ref(payload: bytes, sink: _Sink, name: str, offset: int, idx: int = 0) -> None:
    """Reference decoder: one Event payload through the protobuf classes into ``sink``.

    ``offset`` is the record's byte offset (for messages), ``idx`` its index among the file's records.
    """
    parse, DecodeError = _proto()
    if not payload:
        sink.warnings.append(f"{name}: empty record (zero-length payload) at byte {offset}; ignored")
        sink.skipped["empty_record"] += 1
        if sink.tracing:  # EventAccumulator parses it as an empty Event: no summary, step 0
            sink.trace_event(idx, 0, _EV_OTHER)
        return
    try:
        ev = parse(payload)
    except (DecodeError, RuntimeError, ValueError) as e:
        sink.warnings.append(f"{name}: record at byte {offset} is not a valid Event ({e.__class__.__name__}); skipped")
        sink.skipped["undecodable"] += 1
        return
    sink.note_wall(idx, ev.wall_time)
    which = ev.WhichOneof("what")
    if which == "file_version":
        sink.file_version_event(idx, ev.step, ev.file_version)
        return
    if which != "summary":
        if sink.tracing:  # under the out-of-order rule any event without a summary sets the most recent step
            sink.trace_event(idx, ev.step, _EV_OTHER)
        # A restart (torch SummaryWriter(purge_step=N), TF1 Supervisor/FileWriter.add_session_log): TensorBoard
        # purges what was logged before it at steps >= N (EventAccumulator._CheckForRestartAndMaybePurge) --
        # where a file_version >= 2 is in force (region 1: this file's is < 2, START means nothing there).
        if which == "session_log" and ev.session_log.status == _SESSION_START and sink.region != 1:
            sink.restart(ev.step, idx)
        return
    if sink.tracing:
        sink.trace_event(idx, ev.step, _EV_SUMMARY, [v.tag or v.node_name for v in ev.summary.value])
    for v in ev.summary.value:
        tag = v.tag or v.node_name
        kind = v.WhichOneof("value")
        if v.HasField("metadata") and v.metadata.plugin_data.plugin_name:
            plugin = v.metadata.plugin_data.plugin_name
            sink.plugins.setdefault(tag, plugin)
        else:
            plugin = sink.plugins.get(tag, "")
        if kind == "simple_value":
            sink.kinds.add("simple_value")
            sink.scalar(tag, ev.step, ev.wall_time, float(v.simple_value))
        elif kind == "histo":
            h = v.histo
            sink.kinds.add("histo")
            sink.h_rows.append((tag, ev.step, ev.wall_time, h.min, h.max, h.num, h.sum, h.sum_squares, False))
        elif kind == "tensor" and plugin == "scalars":
            x = tensor_scalar(v.tensor)
            if x is None:
                sink.skipped["scalars (not one number)"] += 1
            else:
                sink.kinds.add("tensor")
                sink.scalar(tag, ev.step, ev.wall_time, x)
        elif kind == "tensor" and plugin == "histograms":
            hh = tensor_histogram(v.tensor)
            if hh is None:
                sink.skipped["histograms (bad tensor)"] += 1
            else:
                sink.kinds.add("tensor")
                sink.h_rows.append((tag, ev.step, ev.wall_time, *hh, True))
        elif kind == "image":
            sink.skipped["images"] += 1
        elif kind == "audio":
            sink.skipped["audio"] += 1
        else:
            sink.skipped[plugin or (kind or "empty")] += 1


# --------------------------------------------------------------------------------------------
# Fast path: decode the common single-value scalar events of a whole chunk with numpy.
#
# Layout of such an Event (protobuf writes fields in number order; every writer here does):
#   09 <f64 wall_time>  10 <varint step>  2a <len> Summary{ 0a <len> Value{ 0a <len> <tag>
#       ( 15 <f32 simple_value> | 42 <len> TensorProto{08 <dtype> [12 00] (2a|22) 04 <f32>
#                                                      | (32|22) 08 <f64>} )
#       [ 4a <len> SummaryMetadata{ 0a <len> PluginData{ 0a 07 "scalars" ... } } ] } }
# (wall_time/step are absent when zero). A record that deviates in any way -- histograms, images,
# several values in one summary, other plugins, damage -- goes through the reference decoder,
# in file order, so the result is identical to decoding everything with the reference.

_PAD = 32  # zero bytes after every buffer: vectorized reads may run a few bytes past the end


def _varint(a, pos):
    """Vectorized protobuf varint at ``pos``: (value uint64, byte length int64, valid bool)."""
    import numpy as np

    b = a[pos]
    val = (b & 0x7F).astype(np.uint64)
    ln = np.ones(len(pos), np.int64)
    idx = np.flatnonzero(b >= 0x80)
    i = 1
    while idx.size and i < 10:
        b = a[pos[idx] + i]
        val[idx] |= (b & 0x7F).astype(np.uint64) << np.uint64(7 * i)
        ln[idx] += 1
        idx = idx[b >= 0x80]
        i += 1
    valid = np.ones(len(pos), bool)
    valid[idx] = False
    return val, ln, valid


def _take_len(a, c, pe, ok):
    """Read a varint length at ``c``: returns (start of the field body, its length) and narrows ``ok``
    to records whose field fits before ``pe``. Positions stay clamped to the payload."""
    import numpy as np

    val, ln, valid = _varint(a, c)
    body = np.minimum(c + ln, pe)
    room = (pe - body).astype(np.uint64)
    ok &= valid & (val <= room)
    length = np.where(ok, val, 0).astype(np.int64)
    return body, length


_MASKS = [(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1]


def _factorize_spans(v, start, length):
    """Codes of equal byte strings ``a[start:start+length]``: (codes, first index per code, exact).

    Hashes 8-byte words (masked to the span) and factorizes the hash; then checks every span
    against its code's first member, so ``exact`` is False only where a hash collided.
    """
    import numpy as np
    import pandas as pd

    n = len(start)
    masks = np.asarray(_MASKS, np.uint64)
    h = length.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    words = []
    nw = int(-(-int(length.max()) // 8)) if n else 0
    for w in range(nw):
        # Spans shorter than this word read their own start (masked to 0): never past the buffer.
        word = v.u64[np.where(length > 8 * w, start + 8 * w, start)] & masks[np.clip(length - 8 * w, 0, 8)]
        words.append(word)
        h = h * np.uint64(0x100000001B3) + word
    codes, uniq = pd.factorize(h)
    first = np.empty(len(uniq), np.int64)
    first[codes[::-1]] = np.arange(n - 1, -1, -1)
    rep = first[codes]
    exact = length == length[rep]
    for word in words:
        exact &= word == word[rep]
    return codes.astype(np.int64), first, exact


_VARINT_PACK = (
    (0x007F007F007F007F, 0x7F007F007F007F00, 1),
    (0x00003FFF00003FFF, 0x3FFF00003FFF0000, 2),
    (0x000000000FFFFFFF, 0x0FFFFFFF00000000, 4),
)


# Value tails after the tag that the templates know: (length, fixed bytes before the number as a
# little-endian u64 with its mask, number dtype). simple_value; TF2 float32 and float64 scalar
# tensors (dtype, empty shape, tensor_content).
_TAILS = {
    "sv": (5, 0x15000000, 0xFF000000, "<f4"),  # 15 <f32>, checked in the u64 ending at the payload end
    "f32": (12, 0x0422001201080A42, (1 << 64) - 1, "<f4"),  # 42 0a 08 01 12 00 22 04 <f32>
    "f64": (16, 0x0822001202080E42, (1 << 64) - 1, "<f8"),  # 42 0e 08 02 12 00 22 08 <f64>
}


def _parse_template(v, ps, pe, tail: str = "sv") -> dict:
    """The commonest events in a few gathers each: wall_time, a 1..7-byte step and one value with
    a short tag (every length fits one byte, so all offsets follow from the step's varint length and
    the payload length) whose tail is ``_TAILS[tail]``."""
    import numpy as np

    u64 = np.uint64
    tail_len, tail_bits, tail_mask, dtype = _TAILS[tail]
    ok = v.u8[ps] == 0x09
    wall = v.f64[ps + 1]
    x = v.u64[ps + 9]  # byte 9 is the step's field tag 0x10, then up to 7 varint bytes
    ok &= (x & u64(0xFF)) == u64(0x10)
    x >>= u64(8)
    stop_bits = ~x & u64(0x80808080808080)  # 0x80 of every byte that ends the varint
    ok &= stop_bits != 0
    lowest = stop_bits & (~stop_bits + u64(1))  # 2**(8k+7) for a (k+1)-byte varint
    nbytes = ((lowest.astype(np.float64).view(np.int64) >> 52) - (1023 + 7)) // 8 + 1
    nbytes[~ok] = 1
    x &= np.asarray(_MASKS, u64)[nbytes]
    for lo, hi, shift in _VARINT_PACK:  # squeeze out the continuation bits, 7 payload bits per byte
        x = (x & u64(lo)) | ((x & u64(hi)) >> u64(shift))
    step = x.view(np.int64)
    c = ps + 10 + nbytes
    tl = pe - c - 6 - tail_len  # payload = 9 + 1+n + 2 + 2 + 2+tag + tail
    ok &= (tl >= 0) & (tl < 124 - tail_len)
    tl[~ok] = 0
    # 2a <tag+4+tail> 0a <tag+2+tail> 0a <tag>: Summary, Value and tag headers in one 6-byte compare.
    t = tl.astype(u64)
    expect = (
        u64(0x000A000A002A + ((4 + tail_len) << 8) + ((2 + tail_len) << 24)) + (t << u64(24)) + (t * u64(0x10000000100))
    )
    ok &= (v.u64[np.minimum(c, pe)] & u64(0xFFFFFFFFFFFF)) == expect
    if tail == "sv":
        y = v.u64[np.maximum(pe - 8, ps)]
        ok &= (y & u64(tail_mask)) == u64(tail_bits)
        value = (y >> u64(32)).astype(np.uint32).view(np.float32).astype(np.float64)
    else:
        ok &= v.u64[np.maximum(pe - tail_len, ps)] == u64(tail_bits)
        value = (v.f32 if dtype == "<f4" else v.f64)[np.maximum(pe - tail_len + 8, ps)].astype(np.float64)
    return {"ok": ok, "step": step, "wall": wall, "value": value, "ts": c + 6, "tl": tl}


def _parse_value(v, c, end, ok) -> dict:
    """Vectorized parse of Summary.Value bodies at ``c`` (ending at ``end``): tag, then a simple
    value or a float/double scalar tensor, then optionally metadata of plugin 'scalars'. Narrows
    ``ok`` (in place) to the values that have exactly this layout."""
    import numpy as np

    a = v.u8
    ok &= a[c] == 0x0A
    ts, tl = _take_len(a, c + 1, end, ok)
    c = ts + tl
    b = a[c]
    is_sv = ok & (b == 0x15)
    value = v.f32[c + 1].astype(np.float64)
    is_t = ok & (b == 0x42)
    tc, tlen = _take_len(a, c + 1, end, is_t)
    tend = tc + tlen
    dtype = a[tc + 1]
    is_t &= (a[tc] == 0x08) & ((dtype == 1) | (dtype == 2))
    shape = (a[tc + 2] == 0x12) & (a[tc + 3] == 0)  # tensor_shape {} (rank 0)
    vc = tc + 2 + 2 * shape
    kb, nb = a[vc], a[vc + 1]
    is_f = (dtype == 1) & ((kb == 0x2A) | (kb == 0x22)) & (nb == 4) & (vc + 6 == tend)
    is_d = (dtype == 2) & ((kb == 0x32) | (kb == 0x22)) & (nb == 8) & (vc + 10 == tend)
    is_t &= is_f | is_d
    if is_t.any():
        value = np.where(is_d, v.f64[vc + 2], value)
        value = np.where(is_f, v.f32[vc + 2].astype(np.float64), value)
    c = np.where(is_sv, c + 5, tend)
    ok &= is_sv | is_t
    has_meta = ok & (a[c] == 0x4A)
    if has_meta.any():
        mc, mlen = _take_len(a, c + 1, end, has_meta)
        pdok = has_meta & (a[mc] == 0x0A)
        pc, pdlen = _take_len(a, mc + 1, end, pdok)
        pdok &= (a[pc] == 0x0A) & (a[pc + 1] == 7) & (pc + 2 + 7 <= pc + pdlen)
        word = v.u64[pc + 2] & np.uint64(_MASKS[7])
        pdok &= word == np.uint64(int.from_bytes(b"scalars", "little"))
        ok &= ~has_meta | pdok
        c = np.where(has_meta, mc + mlen, c)
    ok &= c == end
    return {"value": value, "ts": ts, "tl": tl, "is_t": is_t, "has_meta": has_meta}


_MAX_VALUES = (1 << 16) - 1  # values per Summary handled vectorized (more: the reference decodes it)


def _parse_general(v, ps, pe) -> tuple[dict, dict]:
    """Field-by-field vectorized parse of the layout above, any varint sizes, any number of values
    per Summary (TF1 merged summaries). Returns per-record (ok, step, wall) and per-value rows
    (rec: index into ``ps``, k: value index, ok, value, ts, tl, is_t, has_meta), in round order."""
    import numpy as np

    a = v.u8
    ok = pe > ps
    c = ps
    # Event.wall_time (fixed64) and step (varint), both optional.
    has = (a[c] == 0x09) & (c + 9 <= pe)
    wall = np.where(has, v.f64[c + 1], 0.0)
    c = c + 9 * has
    has = a[c] == 0x10
    x, ln, valid = _varint(a, c + 1)
    step = np.where(has, x.view(np.int64), 0)
    ok &= ~has | valid
    c = np.minimum(c + has * (1 + ln), pe)
    # Event.summary must be the last field; it holds one or more Values.
    ok &= a[c] == 0x2A
    c, ln = _take_len(a, c + 1, pe, ok)
    ok &= (c + ln == pe) & (ln > 0)
    rows: list[dict] = []
    active = np.flatnonzero(ok)
    cur = c
    k = 0
    while active.size:
        if k == _MAX_VALUES:
            ok[active] = False
            break
        c0, e0 = cur[active], pe[active]
        vok = a[c0] == 0x0A
        body, blen = _take_len(a, c0 + 1, e0, vok)
        vend = body + blen
        r = _parse_value(v, body, vend, vok)
        r.update(rec=active, k=np.full(active.size, k, np.int64), ok=vok)
        rows.append(r)
        ok[active[~vok]] = False
        cur[active] = vend
        active = active[vok & (vend < e0)]
        k += 1
    keys = ("rec", "k", "ok", "value", "ts", "tl", "is_t", "has_meta")
    if rows:
        out = {key: np.concatenate([r[key] for r in rows]) for key in keys}
    else:
        out = {
            key: np.zeros(0, dt)
            for key, dt in zip(keys, (np.int64,) * 2 + (bool, np.float64) + (np.int64,) * 2 + (bool, bool))
        }
    return {"ok": ok, "step": step, "wall": wall}, out


_KSHIFT = 16  # row position key = record index << _KSHIFT | value index (orders values within a record)


def _decode_chunk(buf: bytearray, offsets, lengths, sink: _Sink, name: str, base: int, idx0: int) -> None:
    """Decode the records at ``offsets`` (payload ``lengths``) of ``buf`` into ``sink``, vectorized.

    ``buf`` has at least ``_PAD`` zero bytes after the last record; ``base`` is where ``buf`` starts
    in the file; ``idx0`` is the index of the first record among the file's records. Works on
    *rows* (one per scalar value; a record may hold several) and *records*: a record is decoded
    here only if all its values have a recognised layout, else by the reference decoder.
    """
    import numpy as np

    from adamdiag.io.tfrecord import HEADER, Views

    n = len(offsets)
    if n == 0:
        return
    v = Views(buf)
    ps = np.asarray(offsets, np.int64) + HEADER
    pe = ps + np.asarray(lengths, np.int64)
    with np.errstate(all="ignore"):  # garbage bytes may decode as signalling NaNs: not an error here
        f = _parse_template(v, ps, pe)
        rest = np.flatnonzero(~f["ok"])
        f["is_t"] = None
        for tail in ("f32", "f64"):  # TF2 scalar tensors
            if rest.size:
                t2 = _parse_template(v, ps[rest], pe[rest], tail)
                hit = t2["ok"]
                if hit.any():
                    if f["is_t"] is None:
                        f["is_t"] = np.zeros(n, bool)
                    for key in ("ok", "step", "wall", "value", "ts", "tl"):
                        f[key][rest[hit]] = t2[key][hit]
                    f["is_t"][rest[hit]] = True
                    rest = rest[~hit]
        rec_ok = f["ok"].copy()
        if rest.size == 0:  # the usual case: every record matched a template
            rows = {
                "rec": None,
                "k": None,
                "step": f["step"],
                "wall": f["wall"],
                "value": f["value"],
                "ts": f["ts"],
                "tl": f["tl"],
                "is_t": f["is_t"],
                "has_meta": None,
            }
        else:
            hdr, g = _parse_general(v, ps[rest], pe[rest])
            rec_ok[rest] = hdr["ok"]
            t_idx = np.flatnonzero(f["ok"])
            g_keep = hdr["ok"][g["rec"]]
            g_rec = g["rec"][g_keep]
            rows = {
                "rec": np.concatenate([t_idx, rest[g_rec]]),
                "k": np.concatenate([np.zeros(t_idx.size, np.int64), g["k"][g_keep]]),
                "step": np.concatenate([f["step"][t_idx], hdr["step"][g_rec]]),
                "wall": np.concatenate([f["wall"][t_idx], hdr["wall"][g_rec]]),
            }
            for key in ("value", "ts", "tl"):
                rows[key] = np.concatenate([f[key][t_idx], g[key][g_keep]])
            t_is_t = f["is_t"][t_idx] if f["is_t"] is not None else np.zeros(t_idx.size, bool)
            rows["is_t"] = np.concatenate([t_is_t, g["is_t"][g_keep]])
            rows["has_meta"] = np.concatenate([np.zeros(t_idx.size, bool), g["has_meta"][g_keep]])
            order = np.argsort(rows["rec"], kind="stable")  # file order; values in order in a record
            rows = {key: arr[order] for key, arr in rows.items()}
    m = len(rows["step"])
    if rows["rec"] is None:
        rows["rec"], rows["k"] = np.arange(n), np.zeros(n, np.int64)
        rows["has_meta"] = np.zeros(n, bool)
        if rows["is_t"] is None:
            rows["is_t"] = np.zeros(n, bool)
    # Tags: identical byte strings -> one code.
    tag_names: list[str] = []
    tag_of = np.zeros(m, np.int64)
    if m:
        tag_of, first, exact = _factorize_spans(v, rows["ts"], rows["tl"])
        names: list[str | None] = []
        for j in first:
            s, ln = int(rows["ts"][j]), int(rows["tl"][j])
            try:
                names.append(bytes(buf[s : s + ln]).decode("utf-8"))
            except UnicodeDecodeError:
                names.append(None)
        good = exact & np.asarray([nm is not None for nm in names], bool)[tag_of]
        tag_names = [nm or "" for nm in names]
        if not good.all():  # a collision or invalid UTF-8: the reference decodes the whole record
            rec_ok[rows["rec"][~good]] = False
            keep = rec_ok[rows["rec"]]
            rows = {key: arr[keep] for key, arr in rows.items()}
            tag_of = tag_of[keep]
            m = len(tag_of)
    key = ((idx0 + rows["rec"]) << _KSHIFT) | rows["k"]  # position of each row in the file
    # Every value of the fast records, kept or not, for the out-of-order purge's trace (it purges by tag).
    ev_rows = (rows["rec"], rows["step"], tag_of)
    # Plugin state (TF2 writes metadata only with a tag's first value): the first metadata-bearing
    # value of a tag decides its plugin, in file order over fast and slow records alike.
    prior = dict(sink.plugins)
    meta_rows = np.flatnonzero(rows["has_meta"])
    fast_first: list[tuple[int, str]] = []
    if meta_rows.size:
        u, i_first = np.unique(tag_of[meta_rows], return_index=True)
        fast_first = sorted((int(key[meta_rows[i]]), tag_names[int(t)]) for t, i in zip(u, i_first))
        fast_first = [(i, t) for i, t in fast_first if t not in prior]
    slow = np.flatnonzero(~rec_ok)
    purges_before = len(sink.purges)
    trace_before, switches_before, tracing0 = len(sink.tr), len(sink.switches), sink.tracing
    slow_first: dict[str, int] = {}
    slow_keys: list[int] = []
    slow_h: list[int] = []  # histogram rows after each slow record (the fast events' h_before)
    ptr = 0
    sink.flush()
    rows0, h0 = sink.rows_now(), len(sink.h_rows)
    for i in slow.tolist():
        r = (idx0 + i) << _KSHIFT
        while ptr < len(fast_first) and fast_first[ptr][0] < r:
            sink.plugins.setdefault(fast_first[ptr][1], "scalars")
            ptr += 1
        before_rows, before_tags = len(sink.s_tag), len(sink.plugins)
        _decode_ref(bytes(buf[ps[i] : pe[i]]), sink, name, base + int(offsets[i]), idx0 + i)
        if len(sink.plugins) != before_tags:
            for t in list(sink.plugins)[before_tags:]:
                slow_first[t] = r
        slow_keys.extend(r + min(j, (1 << _KSHIFT) - 1) for j in range(len(sink.s_tag) - before_rows))
        slow_h.append(len(sink.h_rows))
    for _, t in fast_first[ptr:]:
        sink.plugins.setdefault(t, "scalars")
    first_meta = dict(slow_first)
    for i, t in fast_first:
        if i < first_meta.get(t, 1 << 62):
            first_meta[t] = i
    # Simple values always count; tensor values only where the tag's plugin is 'scalars' by then.
    keep = None
    is_t = rows["is_t"]
    if m and is_t.any():
        keep = np.ones(m, bool)
        for code, tname in enumerate(tag_names):
            sel = is_t & (tag_of == code)
            if not sel.any():
                continue
            if tname in prior:
                plugin = np.full(int(sel.sum()), prior[tname], object)
            else:
                known = key[sel] >= first_meta.get(tname, 1 << 62)
                plugin = np.where(known, sink.plugins.get(tname, ""), "")
            is_scalar = plugin == "scalars"
            keep[np.flatnonzero(sel)[~is_scalar]] = False
            for p, cnt in Counter(plugin[~is_scalar].tolist()).items():
                sink.skipped["histograms (bad tensor)" if p == "histograms" else (p or "tensor")] += cnt
        if (is_t & keep).any():
            sink.kinds.add("tensor")
    if m and not is_t.all():
        sink.kinds.add("simple_value")
    if m and sink.first_wall_idx > idx0:
        # The reference notes the wall time of every decoded record, whatever its values became.
        nz = np.flatnonzero(rows["wall"] != 0)
        if nz.size:
            sink.note_wall(idx0 + int(rows["rec"][nz[0]]), float(rows["wall"][nz[0]]))
    if keep is not None and not keep.all():
        rows = {k2: arr[keep] for k2, arr in rows.items()}
        tag_of, key = tag_of[keep], key[keep]
    for p in sink.purges[purges_before:]:  # a restart among the slow records: count the fast rows before it
        p[1] += int(np.searchsorted(key, p[3] << _KSHIFT))
    for e in sink.tr[trace_before:]:  # the same for the slow records' trace events
        e[3] += int(np.searchsorted(key, e[0] << _KSHIFT))
    if tracing0 or len(sink.switches) > switches_before:  # (not in a file_version 2 file after its first record)
        _trace_fast(sink, ev_rows, tag_names, idx0, tracing0, switches_before, key, slow_keys, rows0, slow, slow_h, h0)
    # Register only tags that keep rows (a tag whose values were all skipped is not a scalar tag).
    used = np.bincount(tag_of, minlength=len(tag_names)) if len(tag_of) else np.zeros(len(tag_names), int)
    remap = np.asarray([sink.tag_id(t) if u else -1 for t, u in zip(tag_names, used)] or [0], np.int32)
    f_rows = (remap[tag_of], rows["step"], rows["wall"], rows["value"])
    if not sink.s_tag:
        sink.parts.append(f_rows)
        return
    # Merge the reference-decoded rows back into file order.
    s_rows = sink.take_lists()
    order = np.argsort(np.concatenate([key, np.asarray(slow_keys, np.int64)]), kind="stable")
    sink.parts.append(tuple(np.concatenate([fr, sr])[order] for fr, sr in zip(f_rows, s_rows)))


def _trace_fast(
    sink: _Sink,
    ev_rows: tuple,
    tag_names: list[str],
    idx0: int,
    tracing0: bool,
    switches_before: int,
    key: Any,
    slow_keys: list[int],
    rows0: int,
    slow: Any,
    slow_h: list[int],
    h0: int,
) -> None:
    """Add the fast records of a chunk to the out-of-order purge's trace (:class:`Trace`), those where it is
    on: before the file's first file_version event and after one < 2 (``sink.switches``, from the slow records).

    ``ev_rows``: every value of the fast records (rec relative to ``idx0``, step, tag code into ``tag_names``);
    ``key``/``slow_keys``: the kept rows' positions (fast, slow), ``rows0``/``h0`` the rows before the chunk,
    ``slow``/``slow_h`` the slow records and the histogram rows after each."""
    import numpy as np

    rec, step, code = ev_rows
    rec = rec + idx0
    sw = sink.switches[switches_before:]
    state = np.asarray([tracing0, *(on for _, on in sw)], bool)
    on = state[np.searchsorted(np.asarray([r for r, _ in sw], np.int64), rec)]  # the last switch before it
    if not on.any():
        return
    rec, step, code = rec[on], step[on], code[on]
    first: Any
    if len(rec) < 2 or bool((rec[1:] > rec[:-1]).all()):  # one value per record (the usual): no unique needed
        ev_rec, first = rec, slice(None)
    else:
        ev_rec, first = np.unique(rec, return_index=True)
    kept = np.sort(np.concatenate([key, np.asarray(slow_keys, np.int64)])) if slow_keys else key
    if len(kept) == len(ev_rec) and bool(((kept >> _KSHIFT) == ev_rec).all()):  # each event one kept row
        s_before = rows0 + np.arange(len(ev_rec))
    else:
        s_before = rows0 + np.searchsorted(kept, ev_rec << _KSHIFT)
    j = np.searchsorted(slow + idx0, ev_rec)
    h_before = np.where(j > 0, np.asarray([h0, *slow_h], np.int64)[j], h0)
    sink.tr_fast.append(((ev_rec, step[first], s_before, h_before), rec, code, tag_names))


CHUNK_BYTES = 4 << 20  # bytes read and decoded at a time: bounds the temporaries of the fast path


def _padded(data: bytes | bytearray | memoryview) -> bytearray:
    buf = bytearray(len(data) + _PAD)
    buf[: len(data)] = data
    return buf


def _read_ref(path: Path, sink: _Sink, *, check_crc: bool, fast_decode: bool = False) -> tuple[int, int]:
    """Reference framing over the whole file: (file size, number of valid records)."""
    buf = path.read_bytes()
    records = _scan_tail(buf, 0, 0, sink, str(path), check_crc=check_crc, fast_decode=fast_decode) if buf else 0
    return len(buf), records


def _scan_tail(data: bytes, base: int, idx0: int, sink: _Sink, name: str, *, check_crc: bool, fast_decode: bool) -> int:
    """Reference framing of ``data`` (the file from byte ``base`` on); decodes what verifies.

    Returns the number of valid records found."""
    import numpy as np

    from adamdiag.io import tfrecord

    scan = tfrecord.read_records_ref(data, check_crc=check_crc, name=name, base=base)
    sink.warnings.extend(scan.warnings)
    # Damage is counted beside the skipped plugins: records lost to it are skipped values too.
    if scan.bad_records:
        sink.skipped["crc_mismatch"] += scan.bad_records
    if scan.resyncs:
        sink.skipped["corrupt_header"] += scan.resyncs
    if scan.truncated_at is not None:
        sink.skipped["truncated"] += 1
    if fast_decode:
        _decode_chunk(
            _padded(data),
            np.asarray(scan.offsets, np.int64),
            np.asarray(scan.lengths, np.int64),
            sink,
            name,
            base,
            idx0,
        )
    else:
        for k, (off, ln) in enumerate(zip(scan.offsets, scan.lengths)):
            _decode_ref(data[off + tfrecord.HEADER : off + tfrecord.HEADER + ln], sink, name, base + off, idx0 + k)
    return len(scan.offsets)


def _read_fast(path: Path, sink: _Sink, *, check_crc: bool, chunk_bytes: int | None = None) -> tuple[int, int]:
    """Fast framing chunk by chunk; any irregularity hands the rest of the file to the reference
    framing (which says exactly what is wrong). Returns (file size, number of valid records)."""
    from adamdiag.io import tfrecord

    chunk_bytes = chunk_bytes or CHUNK_BYTES
    name = str(path)
    records = 0
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        base = 0  # file offset of buf[0]
        kept = 0  # bytes of an incomplete record carried over at the front of buf
        buf = bytearray(min(chunk_bytes, size) + _PAD)
        while True:
            want = min(chunk_bytes, max(size - base - kept, 0))
            if len(buf) < kept + want + _PAD:  # (decoded arrays are copies: buf can be reused)
                bigger = bytearray(kept + want + _PAD)
                bigger[:kept] = buf[:kept]
                buf = bigger
            got = f.readinto(memoryview(buf)[kept : kept + want])
            n = kept + got
            buf[n : n + _PAD] = bytes(_PAD)
            at_eof = base + n >= size or got == 0
            w = tfrecord.walk_records(buf, n, check_crc=check_crc)
            if len(w.offsets) and check_crc and not tfrecord.verify_crcs(buf, w.offsets, w.lengths):
                w.stop, w.damaged = 0, True  # damage somewhere in this chunk: the reference finds it
            elif len(w.offsets):
                _decode_chunk(buf, w.offsets, w.lengths, sink, name, base, records)
                records += len(w.offsets)
            pending = n - w.stop
            need = 0
            if not w.damaged and pending >= tfrecord.HEADER:
                need = int.from_bytes(buf[w.stop : w.stop + 8], "little") + tfrecord.HEADER + tfrecord.FOOTER
            if w.damaged or (at_eof and pending) or base + w.stop + need > size:
                f.seek(base + w.stop)
                records += _scan_tail(
                    f.read(), base + w.stop, records, sink, name, check_crc=check_crc, fast_decode=True
                )
                break
            if at_eof:
                break
            buf[:pending] = buf[w.stop : n]
            kept = pending
            base += w.stop
            if need > chunk_bytes:  # one record larger than a chunk: read it whole next time
                chunk_bytes = need
    return size, records


def _warning_offset(message: str) -> float:
    import re

    m = re.search(r" at byte (\d+)", message)
    return int(m.group(1)) if m else float("inf")


def read_file(path: Path | str, *, check_crc: bool = True, fast: bool = True) -> FileData:
    """Decode one event file. ``fast=False`` uses the plain-loop reference readers only. The path that stands
    for a framework's own log is read as that log (:func:`adamdiag.io.framework_logs.read_framework_log`)."""
    import numpy as np

    path = Path(path)
    logged = read_framework_log(path, fast=fast)
    if logged is not None:
        return logged
    name = str(path)
    sink = _Sink()
    try:
        if fast:
            size, records = _read_fast(path, sink, check_crc=check_crc)
        else:
            size, records = _read_ref(path, sink, check_crc=check_crc)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    sink.flush()
    # Framing and decoding warnings arrive in different orders on the two paths: list them in file order.
    sink.warnings.sort(key=_warning_offset)
    readable = True
    if size == 0:
        sink.warnings.append(f"{name}: empty event file (0 bytes)")
    elif records == 0:
        readable = False
        sink.warnings.append(f"{name}: no readable records; not a TensorBoard event file?")
    parts = sink.parts or [(np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0), np.zeros(0))]
    trace, trace_tags = sink.trace()
    return FileData(
        path=name,
        size=size,
        tags=list(sink.tag_index),
        s_tag=[p[0] for p in parts],
        s_step=[p[1] for p in parts],
        s_wall=[p[2] for p in parts],
        s_value=[p[3] for p in parts],
        h_rows=sink.h_rows,
        warnings=sink.warnings,
        skipped=sink.skipped,
        records=records,
        file_version=sink.file_version,
        first_wall_time=sink.first_wall,
        kinds=sink.kinds,
        readable=readable,
        purges=[(p[0], p[1], p[2], bool(p[4])) for p in sink.purges],
        trace=trace,
        trace_tags=trace_tags,
    )


# --------------------------------------------------------------------------------------------
# Assembling runs.


def _assemble(run: str, datas: list[FileData]) -> RunEvents:
    """Order files by (first wall time, name), assign segments and build the two frames once."""
    import numpy as np
    import pandas as pd

    datas = sorted(datas, key=lambda d: (d.first_wall_time, os.path.basename(d.path)))
    files = [printable(d.path) for d in datas]
    # Sorted tag categories: the same frame whichever decoder (or file order) met a tag first.
    all_tags = sorted({t for d in datas for t in d.tags})
    tag_pos = {t: i for i, t in enumerate(all_tags)}
    parts_tag, parts_seg = [], []
    for seg, d in enumerate(datas):
        remap = np.asarray([tag_pos[t] for t in d.tags] or [0], np.int32)
        for codes in d.s_tag:
            parts_tag.append(remap[codes])
            parts_seg.append(np.full(len(codes), seg, np.int32))

    def cat(parts: list, dtype) -> Any:
        return np.concatenate(parts) if parts else np.zeros(0, dtype)

    seg = cat(parts_seg, np.int32)
    n = len(seg)
    n_scalars = [sum(len(c) for c in d.s_tag) for d in datas]  # rows per file, for the restarts' purges
    columns = {
        "run": pd.Categorical.from_codes(np.zeros(n, np.int8), categories=[printable(run)]),
        "tag": pd.Categorical.from_codes(cat(parts_tag, np.int32), categories=all_tags),
    }
    del parts_tag
    # One column at a time, dropping the per-chunk parts as we go, keeps the peak memory low.
    columns["step"] = cat([p for d in datas for p in d.s_step], np.int64)
    for d in datas:
        d.s_step = []
    columns["wall_time"] = cat([p for d in datas for p in d.s_wall], np.float64)
    for d in datas:
        d.s_wall = []
    columns["value"] = cat([p for d in datas for p in d.s_value], np.float64)
    for d in datas:
        d.s_value = []
    columns["segment"] = seg
    columns["source_file"] = pd.Categorical.from_codes(seg, categories=files) if files else pd.Categorical([])
    scalars = pd.DataFrame(columns, copy=False)
    histograms = _histogram_frame(run, datas, files)
    notes: list[str] = []
    s_keep = h_keep = None
    if _needs_replay(datas):  # (a file_version 2 run without a SessionLog START: no)
        s_keep, h_keep, notes = _purge_orphans(datas, n_scalars, scalars, histograms)
    duplicates = [d.duplicates for d in datas]
    if s_keep is not None and not s_keep.all():
        # Steps logged twice in a file with different values, among the rows that stay: a purge drops re-logged
        # steps, so the files it touched are counted again (the others keep what _finish found).
        s_start = np.cumsum([0, *n_scalars])
        codes = scalars["tag"].cat.codes.to_numpy()
        steps, values = scalars["step"].to_numpy(), scalars["value"].to_numpy()
        for k, d in enumerate(datas):
            rows = slice(s_start[k], s_start[k + 1])
            if not s_keep[rows].all():
                keep = s_keep[rows]
                duplicates[k] = _duplicate_step_warnings(
                    d.path, all_tags, codes[rows][keep], steps[rows][keep], values[rows][keep]
                )
        scalars = scalars[s_keep].reset_index(drop=True)
    if h_keep is not None and not h_keep.all():
        histograms = histograms[h_keep].reset_index(drop=True)
    warnings = [w for d, dup in zip(datas, duplicates) for w in (*d.warnings, *dup)]
    skipped: Counter = Counter()
    for d in datas:
        skipped.update(d.skipped)
    info = [
        {
            "path": d.path,
            "segment": i,
            "size": d.size,
            "records": d.records,
            "file_version": d.file_version,
            "first_wall_time": None if d.first_wall_time == float("inf") else d.first_wall_time,
            "kinds": sorted(d.kinds),
            "readable": d.readable,
            "skipped": dict(d.skipped),  # plugin -> values not read (hparams, images, text, ...)
            # a framework's own log names its writer here (an event file's is told from its kinds: results.tags)
            **({"writer": w} if (w := framework_writer(d.kinds)) else {}),
        }
        for i, d in enumerate(datas)
    ]
    return RunEvents(
        run=run,
        scalars=scalars,
        histograms=histograms,
        warnings=warnings,
        skipped=dict(skipped),
        files=files,
        file_info=info,
        notes=notes,
    )


def _needs_replay(datas: list[FileData]) -> bool:
    """Whether any file of the run may purge: a SessionLog START, or events under the out-of-order rule (a
    file_version 2 file's trace is its file_version event alone)."""
    return any(d.purges or (d.trace is not None and (d.trace.kind != _EV_V2).any()) for d in datas)


def _purge_orphans(
    datas: list[FileData], n_scalars: list[int], scalars: pd.DataFrame, histograms: pd.DataFrame
) -> tuple[Any, Any, list[str]]:
    """What TensorBoard's ``EventAccumulator`` (``purge_orphaned_data=True``, its default) drops as orphaned by
    a restart, replayed per folder (one TensorBoard run: split folders and ``add_scalars`` children are runs of
    their own) over its files in segment order. Returns keep masks of the two frames and one note per purge.

    The rule in force is the last ``file_version`` event read in the folder (kept across files; none yet counts as
    < 2):

    * version >= 2 (every current writer): a ``SessionLog.START`` at step N (torch
      ``SummaryWriter(purge_step=N)``, TF1's Supervisor) drops every value read before it at step >= N, whatever
      its tag (``_CheckForRestartAndMaybePurge``, ``_Purge(by_tags=False)``).
    * version < 2 or none (TensorFlow before 0.12, hand-made files): a summary event whose step is below the most
      recent step drops, for each tag it holds, that tag's values read before it at steps >= its step
      (``_CheckForOutOfOrderStepAndMaybePurge``, ``_Purge(by_tags=True)``). The most recent step is that of the
      last event that did not purge — *any* event: a file_version, graph or SessionLog event (step 0 for most)
      sets it too, so a restart written to a new file with a version-1 header purges nothing.

    Both purges drop scalars (``simple_value`` and plugin-'scalars' tensors alike: they are one frame here) and
    histograms; the legacy ``EventAccumulator`` keeps tensor summaries out of its purges (TensorBoard's
    current readers hold every summary as a tensor and purge them all).
    """
    import numpy as np

    s_start = np.cumsum([0, *n_scalars])
    h_start = np.cumsum([0, *(len(d.h_rows) for d in datas)])
    s_step = scalars["step"].to_numpy()
    h_step = histograms["step"].to_numpy(np.int64)
    s_codes = scalars["tag"].cat.codes.to_numpy()
    s_names = {t: i for i, t in enumerate(scalars["tag"].cat.categories)}
    h_codes = histograms["tag"].cat.codes.to_numpy()
    h_names = {t: i for i, t in enumerate(histograms["tag"].cat.categories)}
    folders = [os.path.dirname(d.path) for d in datas]
    folder_id = np.asarray([folders.index(f) for f in folders], np.int32)
    s_folder = np.repeat(folder_id, np.diff(s_start))
    h_folder = np.repeat(folder_id, np.diff(h_start))
    s_keep = np.ones(len(s_step), bool)
    h_keep = np.ones(len(h_step), bool)
    state: dict[str, tuple[bool, int]] = {}  # folder -> (out-of-order rule in force, most recent step)
    notes = []
    for k, d in enumerate(datas):
        fk = folder_id[k]
        out_of_order, recent = state.get(folders[k], (True, -1))
        for step, s_before, h_before, inherited in d.purges:
            if inherited and out_of_order:
                continue  # no file_version >= 2 read yet in this folder: START means nothing to TensorBoard
            s_end, h_end = s_start[k] + s_before, h_start[k] + h_before
            s_sel = (s_folder[:s_end] == fk) & (s_step[:s_end] >= step)
            h_sel = (h_folder[:h_end] == fk) & (h_step[:h_end] >= step)
            dropped_s, dropped_h = int((s_sel & s_keep[:s_end]).sum()), int((h_sel & h_keep[:h_end]).sum())
            s_keep[:s_end] &= ~s_sel
            h_keep[:h_end] &= ~h_sel
            if dropped_s or dropped_h:
                notes.append(
                    f"{printable(d.path)}: a restart (SessionLog START at step {step}: SummaryWriter(purge_step=…), "
                    f"TF1's Supervisor) drops the {_counted(dropped_s, dropped_h)} logged before it at steps ≥ {step}, "
                    "as TensorBoard does"
                )
        tr = d.trace
        if tr is None or not len(tr.kind):
            continue
        versions = np.flatnonzero(tr.kind >= _EV_V1)
        first = 0 if out_of_order else (versions[0] if versions.size else len(tr.kind))  # the inherited stretch
        kind, step = tr.kind[first:], tr.step[first:]
        if versions.size:
            out_of_order = bool(tr.kind[versions[-1]] == _EV_V1)
        if not len(kind):
            state[folders[k]] = (out_of_order, recent)
            continue
        # The most recent step before each event: a running maximum that every non-summary event restarts at
        # its own step (a summary below it does not raise it; one at or above it becomes it). Segmented cummax
        # over (segment, rank of the step); the inherited stretch starts from the folder's most recent step.
        vals = np.concatenate([[recent], step]).astype(np.int64)
        starts = np.flatnonzero(np.concatenate([[True], kind != _EV_SUMMARY]))
        if len(starts) <= 64:  # few non-summary events (headers, SessionLogs): a running max per segment
            running = np.concatenate([np.maximum.accumulate(v) for v in np.split(vals, starts[1:])])
        else:  # one pass: cummax over (segment, rank of the step)
            seg = np.cumsum(np.concatenate([[True], kind != _EV_SUMMARY])) - 1
            by_value = np.argsort(vals, kind="stable")
            rank = np.empty(len(vals), np.int64)
            rank[by_value] = np.arange(len(vals))
            n = len(vals)
            running = vals[by_value[np.maximum.accumulate(seg * n + rank) - seg * n]]
        purging = np.flatnonzero((kind == _EV_SUMMARY) & (step < running[:-1])) + first
        recent = int(running[-1])  # (unused under the SessionLog rule: a file_version < 2 event resets it)
        state[folders[k]] = (out_of_order, recent)
        if not purging.size:
            continue
        ent = np.isin(tr.tag_ev, purging)
        ev, names = tr.tag_ev[ent], [d.trace_tags[c] for c in tr.tag_code[ent]]
        pos_s, pos_h, at = s_start[k] + tr.s_before[ev], h_start[k] + tr.h_before[ev], tr.step[ev]
        dropped_s = _drop_by_tag(names, s_names, s_codes, s_folder == fk, s_step, pos_s, at, s_keep)
        dropped_h = _drop_by_tag(names, h_names, h_codes, h_folder == fk, h_step, pos_h, at, h_keep)
        if dropped_s or dropped_h:
            e0 = purging[0]
            version = f"file_version '{printable(d.file_version)}'" if d.file_version else "no file_version"
            notes.append(
                f"{printable(d.path)}: steps go back (from {int(running[e0 - first])} to {int(tr.step[e0])}) in a file "
                f"of the event format before SessionLog restarts ({version}), which TensorBoard reads as a restart: "
                f"drops the {_counted(dropped_s, dropped_h)} of the tags logged again that were logged before at "
                "steps ≥ the step they resume at, as TensorBoard does"
            )
    return s_keep, h_keep, notes


def _counted(n_scalars: int, n_histograms: int) -> str:
    return f"{n_scalars} scalar" + (f" and {n_histograms} histogram" if n_histograms else "") + " value(s)"


def _drop_by_tag(
    names: list[str], vocab: dict[str, int], codes: Any, folder: Any, steps: Any, pos: Any, at: Any, keep: Any
) -> int:
    """Apply by-tag purges to one frame: purge ``j`` drops the rows of tag ``names[j]`` in this folder before
    row ``pos[j]`` at steps >= ``at[j]``. A row before several purges of its tag goes if its step reaches the
    smallest of their steps (suffix minimum over the purges in file order). Updates ``keep``; returns the
    number of rows it newly dropped."""
    import numpy as np

    dropped = 0
    by_tag: dict[int, list[int]] = {}
    for j, t in enumerate(names):
        c = vocab.get(t)
        if c is not None:
            by_tag.setdefault(c, []).append(j)
    for c, js in by_tag.items():
        sel = np.asarray(js)
        p, lowest = pos[sel], np.minimum.accumulate(at[sel][::-1])[::-1]  # p is non-decreasing (file order)
        rows = np.flatnonzero((codes[: p[-1]] == c) & folder[: p[-1]])
        nxt = np.searchsorted(p, rows, side="right")  # the first purge after the row
        go = rows[steps[rows] >= lowest[nxt]]
        dropped += int(keep[go].sum())
        keep[go] = False
    return dropped


def _histogram_frame(run: str, datas: list[FileData], files: list[str]) -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    rows = [(*r, seg) for seg, d in enumerate(datas) for r in d.h_rows]
    cols = ["tag", "step", "wall_time", "min", "max", "num", "sum", "sum_squares", "approx", "segment"]
    df = pd.DataFrame.from_records(rows, columns=cols) if rows else pd.DataFrame({c: [] for c in cols})
    n = len(df)
    seg = df["segment"].to_numpy(np.int32) if n else np.zeros(0, np.int32)
    out = pd.DataFrame(
        {
            "run": pd.Categorical.from_codes(np.zeros(n, np.int8), categories=[printable(run)]),
            "tag": pd.Categorical(df["tag"].astype(str) if n else []),
            "step": df["step"].to_numpy(np.int64) if n else np.zeros(0, np.int64),
            "wall_time": df["wall_time"].to_numpy(np.float64) if n else np.zeros(0),
            "min": df["min"].to_numpy(np.float64) if n else np.zeros(0),
            "max": df["max"].to_numpy(np.float64) if n else np.zeros(0),
            "num": df["num"].to_numpy(np.float64) if n else np.zeros(0),
            "sum": df["sum"].to_numpy(np.float64) if n else np.zeros(0),
            "sum_squares": df["sum_squares"].to_numpy(np.float64) if n else np.zeros(0),
            "segment": seg,
            "source_file": pd.Categorical.from_codes(seg, categories=files) if files else pd.Categorical([]),
            "approx": df["approx"].to_numpy(bool) if n else np.zeros(0, bool),
        }
    )
    return out[HISTOGRAM_COLUMNS]


def _read_file_task(args: tuple[str, bool]) -> FileData:
    return read_file(args[0], check_crc=args[1])


def _scalars_key(rel: str, tag: str) -> str | None:
    """The ``add_scalars`` key of a child folder at ``rel`` (relative to its run, "/"-separated) whose only
    tag is ``tag``: torch writes ``<main_tag, "/" → "_">_<key>/``, tensorboardX (2.x) ``<main_tag>/<key>/``."""
    stem = tag.replace("/", "_") + "_"
    if "/" not in rel and rel.startswith(stem) and len(rel) > len(stem):
        return rel[len(stem) :]
    if rel.startswith(tag + "/") and len(rel) > len(tag) + 1:
        return rel[len(tag) + 1 :]
    return None


# HF Trainer's TensorBoardCallback writes its TrainingArguments as JSON in one text summary at the start
# of training; only the head of a file is searched for it.
WRITER_ARGS_TAG = "args/text_summary"
# Writers that log each argument as a text summary of its own (Megatron-LM): tag -> argument
WRITER_ARG_TAGS = {
    "clip_grad/text_summary": "clip_grad",
    "adam_beta2/text_summary": "adam_beta2",
    "adam_eps/text_summary": "adam_eps",
    "optimizer/text_summary": "optimizer",
}
# fairseq opens each of its writers with add_text("sys.argv", the command line): read as "argv"
WRITER_ARGV_TAG = "sys.argv/text_summary"
WRITER_ARGS_HEAD = 1 << 20


def fairseq_clip_norm(argv: str) -> float | None:
    """``--clip-norm`` (``fairseq-train``) or ``optimization.clip_norm=`` (``fairseq-hydra-train``) from a
    command line; fairseq's default is 0 (no clipping), so None when absent or not a number.

    >>> fairseq_clip_norm("fairseq-train data --clip-norm 0.1 --lr 5e-4"), fairseq_clip_norm("x optimization.clip_norm=25")
    (0.1, 25.0)
    """
    m = re.search(r"(?:--clip-norm|optimization\.clip_norm)[= ]+['\"]?([-+0-9.eE]+)", argv)
    try:
        return float(m.group(1)) if m else None
    except ValueError:
        return None


def writer_arguments(path: str | Path) -> dict[str, Any]:
    """The training arguments a writer logged as text (HF Trainer's ``args``: its TrainingArguments as
    JSON; Megatron-LM's one text summary per argument, the known ones: WRITER_ARG_TAGS, as strings), from the
    head of one event file with the reference decoder; {} when there are none."""
    import json

    from adamdiag.io.tfrecord import iter_payloads_ref

    parse, decode_error = _proto()
    try:
        with open(path, "rb") as fh:
            buf = fh.read(WRITER_ARGS_HEAD)
    except OSError:
        return {}
    found: dict[str, Any] = {}
    for _, payload in iter_payloads_ref(buf, name=str(path)):
        try:
            ev = parse(payload)
        except (decode_error, RuntimeError, ValueError):
            continue
        if ev.WhichOneof("what") != "summary":
            continue
        for v in ev.summary.value:
            if not (v.HasField("tensor") and v.tensor.string_val):
                continue
            try:
                text = v.tensor.string_val[0].decode("utf-8")
            except UnicodeDecodeError:
                continue
            if v.tag == WRITER_ARGS_TAG:
                try:
                    doc = json.loads(text)
                except ValueError:
                    continue
                if isinstance(doc, dict):
                    return doc
            elif v.tag in WRITER_ARG_TAGS:
                # Megatron-LM: one text summary per argument (write_args_to_tensorboard: add_text(arg, str(value)))
                found[WRITER_ARG_TAGS[v.tag]] = text
            elif v.tag == WRITER_ARGV_TAG:
                found["argv"] = text
    return found


def logged_arguments(events: RunEvents) -> list[dict[str, Any]]:
    """:func:`writer_arguments` of each of the run's event files that holds a text summary (the others are not
    opened): read once, for :func:`writer_clip_norm` and :func:`writer_adam_hyperparameters` alike."""
    return [
        events.arguments[i["path"]] if i["path"] in events.arguments else writer_arguments(i["path"])
        for i in events.file_info
        if i["path"] in events.arguments or (i.get("skipped") or {}).get("text")
    ]


def _args_source(args: dict[str, Any]) -> str:
    """Where HF Trainer's arguments were read: its TensorBoard ``args`` text summary, or training_args.bin."""
    return str(args.get(ARGS_SOURCE) or f"the '{WRITER_ARGS_TAG}' summary")


def writer_clip_norm(events: RunEvents, arguments: list[dict[str, Any]] | None = None) -> tuple[float | None, str]:
    """The gradient-clipping norm the training used, when its writer logged it, and where from: HF
    Trainer's ``max_grad_norm`` (its ``train/grad_norm`` is the norm *before* clipping, while Adam steps
    with the clipped gradient), Megatron-LM's ``clip_grad``, fairseq's ``--clip-norm``. ``arguments``: the
    run's :func:`logged_arguments`, when the caller has them. (None, "") otherwise.

    >>> writer_clip_norm(RunEvents("r", None, None, [], {}, [], []))
    (None, '')
    """
    for args in logged_arguments(events) if arguments is None else arguments:
        c = args.get("max_grad_norm")
        if isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) and c > 0:
            return float(c), f"max_grad_norm in {_args_source(args)} (HF Trainer's arguments)"
        # Megatron-LM's --clip-grad (default 1.0; 0 turns clipping off); its 'grad-norm' is the norm before
        c = _floats({"clip": args.get("clip_grad")}).get("clip")
        if c is not None:
            return c, "clip_grad in the 'clip_grad' text summary (Megatron-LM's arguments)"
        # fairseq: --clip-norm in the command line it logs (its 'gnorm' is the norm before clipping)
        c = _floats({"clip": fairseq_clip_norm(str(args.get("argv", "")))}).get("clip")
        if c is not None:
            return c, "--clip-norm in the 'sys.argv' text summary (fairseq's command line)"
        # mmcv 1.x: optimizer_config.grad_clip.max_norm in the config its json log's meta line holds
        c = _mmcv_config(args).get("clip")
        if c is not None and c > 0:
            return c, f"optimizer_config's grad_clip in {_args_source(args)} (mmcv's config)"
        # torchtune: clip_grad_norm in its recipe config (its 'grad_norm' is what clip_grad_norm_ returned, before)
        c = _floats({"clip": args.get("clip_grad_norm")}).get("clip") if "optimizer._component_" in args else None
        if c is not None and math.isfinite(c):
            return c, f"clip_grad_norm in {_args_source(args)} (torchtune's recipe config)"
    return None, ""


# the optimizer types of an mmcv config that are Adam (torch's, registered by name in mmcv's OPTIMIZERS)
MMCV_ADAM_TYPES = ("Adam", "AdamW", "Adamax", "NAdam", "RAdam", "SparseAdam")
# HF Trainer ``optim`` values with "adam" in the name whose step is not Adam's lr·m̂/(√v̂+eps), and what bounds it: a
# collapsed v cannot blow such a step up — the mechanism adamdiag diagnoses is clipped away, and an eps fix is no advice
# for it. StableAdamW (optimi) divides each tensor's lr by max(1, RMS(g²/v)); APOLLO (apollo-torch, also the layer-wise
# variant) scales the raw gradient by the norm ratio of its low-rank Adam step and, by default, its norm-growth limiter
# (Fira's) lets that update grow at most 1.01x from one step to the next (a v-collapse blowup's step grows ~100x in a
# few steps).
HF_BOUNDED_ADAM_OPTIMS = {
    "stable_adamw": "its per-tensor update clipping bounds the step",
    "apollo_adamw": "its norm-growth limiter caps the update's growth at 1.01x per step",
    "apollo_adamw_layerwise": "its norm-growth limiter caps the update's growth at 1.01x per step",
}


def hf_optim_is_adam(optim: str) -> bool:
    """Whether HF Trainer's ``optim`` names an Adam whose step is Adam's (torch, fused, 8-bit, paged, GaLore,
    schedule-free ...), not one that bounds it (:data:`HF_BOUNDED_ADAM_OPTIMS`).

    >>> names = ("adamw_torch_fused", "paged_adamw_8bit", "stable_adamw", "apollo_adamw", "adafactor")
    >>> [hf_optim_is_adam(o) for o in names]
    [True, True, False, False, False]
    """
    name = optim.strip().lower()
    return "adam" in name and name not in HF_BOUNDED_ADAM_OPTIMS


# Adam-family optimizers a torchtune config may name (its _component_), with the defaults of β2 and eps they apply:
# torch's, bitsandbytes' (8-bit, paged) and torchao's (8-bit, 4-bit, fp8) all default to betas (0.9, 0.999), eps 1e-8
_TORCHTUNE_ADAM = re.compile(r"(?:^|\.)(?:Paged)?Adam(?:W)?(?:8bit|4bit|Fp8|32bit)?$")


def torchtune_adam_hyperparameters(args: dict[str, Any]) -> dict[str, float] | None:
    """β2 and eps of a torchtune recipe config's Adam-family optimizer (``optimizer.betas``, ``optimizer.eps``, else
    the defaults they apply); {} when its optimizer is no Adam; None when ``args`` is no torchtune config.

    >>> torchtune_adam_hyperparameters({"optimizer._component_": "torch.optim.AdamW", "optimizer.betas": [0.9, 0.95]})
    {'beta2': 0.95, 'eps': 1e-08}
    >>> torchtune_adam_hyperparameters({"optimizer._component_": "bitsandbytes.optim.PagedAdamW8bit"})
    {'beta2': 0.999, 'eps': 1e-08}
    >>> torchtune_adam_hyperparameters({"optimizer._component_": "torch.optim.SGD"}), torchtune_adam_hyperparameters({})
    ({}, None)
    """
    component = args.get("optimizer._component_")
    if not isinstance(component, str):
        return None
    if not _TORCHTUNE_ADAM.search(component.strip()):
        return {}
    betas = args.get("optimizer.betas")
    beta2 = betas[1] if isinstance(betas, list) and len(betas) == 2 else 0.999
    return _floats({"beta2": beta2, "eps": args.get("optimizer.eps", 1e-8)})


def fairseq_adam_hyperparameters(argv: str) -> dict[str, float]:
    """Adam's β2 and eps from a fairseq command line (``--adam-betas '(0.9, 0.98)' --adam-eps 1e-6``, or
    fairseq-hydra-train's ``optimizer.adam_betas=... optimizer.adam_eps=...``); fairseq's defaults, (0.9, 0.999)
    and 1e-8, where not given. {} when the optimizer is not Adam (``--optimizer``) or nothing says it is.

    >>> fairseq_adam_hyperparameters("fairseq-train d --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-06")
    {'beta2': 0.98, 'eps': 1e-06}
    >>> fairseq_adam_hyperparameters("fairseq-train d --optimizer nag"), fairseq_adam_hyperparameters("x optimizer=adam")
    ({}, {'beta2': 0.999, 'eps': 1e-08})
    """
    opt = re.search(r"(?:--optimizer[= ]+|(?:^|\s)optimizer(?:\._name)?=)['\"]?(\w+)", argv)
    if opt is None or opt.group(1).lower() not in ("adam", "cpu_adam", "adam8bit"):
        return {}
    out = {"beta2": 0.999, "eps": 1e-8}
    betas = re.search(r"adam[-_]betas[= ]+['\"]?[(\[]?\s*[-+0-9.eE]+\s*,\s*([-+0-9.eE]+)", argv)
    eps = re.search(r"adam[-_]eps[= ]+['\"]?([-+0-9.eE]+)", argv)
    try:
        if betas:
            out["beta2"] = float(betas.group(1))
        if eps:
            out["eps"] = float(eps.group(1))
    except ValueError:
        return {}
    return out


def writer_adam_hyperparameters(
    events: RunEvents, arguments: list[dict[str, Any]] | None = None
) -> tuple[dict[str, float], str]:
    """Adam's β2 and eps as the training's writer logged its configuration: HF Trainer's ``adam_beta2`` /
    ``adam_epsilon`` (its ``args`` text summary), Megatron-LM's ``adam_beta2`` / ``adam_eps`` text summaries,
    fairseq's ``--adam-betas`` / ``--adam-eps`` (its command line). For a run without optimizer checkpoints,
    whose v is rebuilt from the logged gradient norm with β2's memory: LLM recipes use 0.95-0.98, not the
    0.999 a default would assume. ``arguments``: the run's :func:`logged_arguments`, when the caller has them.
    ({}, "") when none is logged or the logged optimizer is not Adam.

    >>> writer_adam_hyperparameters(RunEvents("r", None, None, [], {}, [], []))
    ({}, '')
    """
    for args in logged_arguments(events) if arguments is None else arguments:
        if "adam_beta2" in args and "adam_epsilon" in args:  # HF TrainingArguments
            if not hf_optim_is_adam(str(args.get("optim", "adamw"))):
                return {}, ""
            got = _floats({"beta2": args["adam_beta2"], "eps": args["adam_epsilon"]})
            if got:
                return got, f"HF Trainer's arguments ({_args_source(args)})"
        if "adam_beta2" in args or "adam_eps" in args:  # Megatron-LM, one text summary per argument
            if str(args.get("optimizer", "adam")).strip().lower() != "adam":
                return {}, ""
            got = _floats({"beta2": args.get("adam_beta2"), "eps": args.get("adam_eps")})
            if got:
                return got, "Megatron-LM's adam_beta2/adam_eps text summaries"
        if "argv" in args:
            got = _floats(fairseq_adam_hyperparameters(str(args["argv"])))
            if got:
                return got, "fairseq's command line (the 'sys.argv' text summary)"
        mmcv = _mmcv_config(args)
        if "type" in mmcv:
            if mmcv["type"] not in MMCV_ADAM_TYPES:
                return {}, ""
            got = _floats({"beta2": mmcv.get("beta2", 0.999), "eps": mmcv.get("eps", 1e-8)})
            return got, f"mmcv's config ({_args_source(args)})"
        tune = torchtune_adam_hyperparameters(args)
        if tune is not None:
            return (tune, f"torchtune's recipe config ({_args_source(args)})") if tune else ({}, "")
        keras = keras_optimizer_config(args)  # MLflow's Keras callback: optimizer.get_config() as params
        if keras is not None and "beta_2" in keras and "epsilon" in keras:
            if not re.fullmatch(r"adamw?(_\d+)?", str(keras.get("name", "")).strip().lower()):
                return {}, ""  # Adamax, Nadam, a renamed optimizer: not known to be Adam
            got = _floats({"beta2": keras["beta_2"], "eps": keras["epsilon"]})
            if got:
                return got, f"the Keras optimizer's config in {_args_source(args)}"
    return {}, ""


def _mmcv_config(args: dict[str, Any]) -> dict[str, Any]:
    """What the mmcv config text of a run's writer arguments says of its optimizer ({} without one)."""
    from adamdiag.io.mmcv_log import CONFIG_KEY, config_optimizer

    text = args.get(CONFIG_KEY)
    return (config_optimizer(text) or {}) if isinstance(text, str) else {}


def writer_non_adam_optimizer(events: RunEvents, arguments: list[dict[str, Any]] | None = None) -> str | None:
    """The optimizer the training's writer logged when it is not an Adam (a torchtune or mmcv config naming SGD,
    HF Trainer's ``optim`` adafactor/sgd/lion...), as "<what> (<where>)"; None when it is Adam or not logged.

    >>> hf = {"optim": "adafactor", "adam_beta2": 0.999, ARGS_SOURCE: "x"}
    >>> writer_non_adam_optimizer(RunEvents("r", None, None, [], {}, [], []), [hf])
    "HF Trainer's optim 'adafactor' (x)"
    """
    for args in logged_arguments(events) if arguments is None else arguments:
        mmcv = _mmcv_config(args).get("type")
        if mmcv is not None:
            return None if mmcv in MMCV_ADAM_TYPES else f"mmcv's config optimizer '{mmcv}' ({_args_source(args)})"
        if torchtune_adam_hyperparameters(args) == {}:
            return f"torchtune's optimizer '{args.get('optimizer._component_')}' ({_args_source(args)})"
        optim = args.get("optim")
        if "adam_beta2" in args and isinstance(optim, str) and optim.strip():
            if hf_optim_is_adam(optim):
                return None
            why = HF_BOUNDED_ADAM_OPTIMS.get(optim.strip().lower())
            bounded = f" ({why})" if why else ""
            return f"HF Trainer's optim '{optim}'{bounded} ({_args_source(args)})"
    return None


def _floats(d: dict[str, Any]) -> dict[str, float]:
    """The entries that are finite positive numbers (text summaries hold strings), as floats."""
    out = {}
    for k, v in d.items():
        try:
            x = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(x) and x > 0:
            out[k] = x
    return out


def writer_child(rel: str, datas: Sequence[FileData]) -> str | None:
    """How a folder's event files belong to the run of a folder above it (``rel``: the folder relative to
    that run, "/"-separated), or None (a run of its own).

    ``"scalars"``: ``add_scalars(main_tag, {key: value})`` writes each key into a folder of its own, one
    file whose only tag is ``main_tag`` — torch ``<logdir>/<main_tag, "/" → "_">_<key>/``, tensorboardX
    ``<logdir>/<main_tag>/<key>/`` (TensorBoard shows them as runs; they are curves of the writer's run).
    ``"hparams"``: ``add_hparams`` writes ``<logdir>/<time.time() or run_name>/`` with the hparams plugin's
    records and the metric scalars.

    >>> d = FileData("x", 1, ["Loss"], [], [], [], [], [], [], Counter(), records=2)
    >>> writer_child("Loss_train", [d]), writer_child("Loss/val", [d]), writer_child("seed_1", [d])
    ('scalars', 'scalars', None)
    """
    live = [d for d in datas if d.records]
    if not live or any(d.h_rows for d in live):
        return None
    if all(d.skipped.get("hparams") for d in live):
        return "hparams"
    tags = {t for d in live for t in d.tags}
    if len(tags) == 1 and _scalars_key(rel, next(iter(tags))) is not None:
        return "scalars"
    return None


def fold_writer_child(rel: str, datas: Sequence[FileData], kind: str) -> None:
    """Name a writer child's tags as the run sees them: ``add_scalars``' ``main_tag`` becomes
    ``main_tag/key`` (``Loss`` in ``Loss_train/`` → ``Loss/train``, a name the loss-tag pick knows);
    add_hparams' metric tags stay as written."""
    for d in datas:
        if kind == "scalars" and d.tags:
            renamed = {t: f"{t}/{_scalars_key(rel, t)}" for t in d.tags}
            d.tags = [renamed[t] for t in d.tags]
            d.trace_tags = [renamed.get(t, t) for t in d.trace_tags]
        d.grouped = True


def adopt_writer_child(child: Path, run: Path, datas: Sequence[FileData]) -> bool:
    """Fold ``child``'s decoded files into ``run`` when they are a writer child of it (:func:`writer_child`,
    :func:`fold_writer_child`); False, untouched, when the folder is a run of its own."""
    rel = os.path.relpath(child, run).replace(os.sep, "/")
    kind = writer_child(rel, datas)
    if kind is None:
        return False
    fold_writer_child(rel, datas, kind)
    return True


def _child_runs(run_dir: Path) -> list[Path]:
    """Folders below ``run_dir`` (split folders excluded) that hold event files: writer-child candidates."""
    out = []
    for dirpath, dirnames, filenames in os.walk(run_dir):
        here = Path(dirpath)
        if here == run_dir:
            dirnames[:] = sorted(d for d in dirnames if not split_of(d))
            continue
        dirnames.sort()
        if any("tfevents" in f and is_event_file(here / f) for f in filenames):
            out.append(here)
    return out


def read_run(
    run_dir: Path,
    *,
    check_crc: bool = True,
    progress: Callable[[int], None] | None = None,
) -> RunEvents:
    """All event files directly in ``run_dir`` (or the single file), every event kept.

    Files are ordered by (first wall_time, name); ``segment`` is the index in that order.
    ``progress``, if given, is called with the number of bytes just read after each file.
    Raises :class:`InputError` when files exist but not one valid record could be read from any.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists() and not is_database_run(run_dir):
        raise missing_path(run_dir)
    paths = run_files(run_dir)
    if not paths:
        raise InputError(f"no TensorBoard event files (events.out.tfevents.*) under {run_dir}")
    datas = []
    for p in paths:
        d = read_file(p, check_crc=check_crc)
        datas.append(d)
        if progress is not None:
            progress(d.size)
    if run_dir.is_dir():
        for child in _child_runs(run_dir):
            try:
                kids = [read_file(f, check_crc=check_crc) for f in run_files(child)]
            except InputError:
                continue  # a damaged child stays out here; scan reports it as a run of its own
            if adopt_writer_child(child, run_dir, kids):
                datas.extend(kids)
    return _finish(str(run_dir), datas)


def _finish(run: str, datas: list[FileData]) -> RunEvents:
    import numpy as np

    if datas and not any(d.records for d in datas) and any(d.size for d in datas):
        first = next((w for d in datas for w in d.warnings), "no record could be read")
        raise InputError(f"nothing readable in {run}: {first}")
    unstepped = [note for d in datas if (note := _unstepped_to_logging_order(d))]
    for d in datas:
        prefix = "" if d.grouped else tag_prefix(run, d.path)
        if prefix:  # a split subdirectory's tags: `validation/epoch_loss` beside `train/epoch_loss`
            d.tags = [prefix + t for t in d.tags]
            d.h_rows = [(prefix + r[0], *r[1:]) for r in d.h_rows]
            d.trace_tags = [prefix + t for t in d.trace_tags]
        if d.s_tag and d.tags:
            d.duplicates = _duplicate_step_warnings(
                d.path, d.tags, np.concatenate(d.s_tag), np.concatenate(d.s_step), d.s_value
            )
    events = _assemble(run, datas)
    events.warning_notes += unstepped
    for d in datas:
        events.notes += [n for n in d.notes if n not in events.notes]
        events.warning_notes += [n for n in d.warning_notes if n not in events.warning_notes]
        if d.arguments is not None:
            events.arguments[d.path] = d.arguments
        events.running_means.update(d.running_means)
    samples_axis_to_steps(events)
    micro_batch_axis_to_steps(events)
    concurrent_writers_note(events)
    return events


def _unstepped_to_logging_order(d: FileData) -> str | None:
    """Give the points of a tag that a writer logged without a step their logging order, in place: torch's and
    tensorboardX's ``add_scalar(tag, value)`` without ``global_step`` write every value at step 0, and TensorBoard
    stacks them at x = 0. The records of a file are in the order they were written, so the k-th point of such a
    tag (at least :data:`UNSTEPPED_MIN_POINTS`, all at one step) is read at step k — a count of logged points,
    which is the optimizer step only where one point was logged per step. Returns the warning note, or None.

    This runs on every file read: the common case (each tag's first and last step differ) is ruled out with two
    scatter passes over the chunks as they are, no concatenation, no sort, no count.
    """
    import numpy as np

    if not d.s_tag or not d.tags:
        return None
    n_tags = len(d.tags)
    first = np.zeros(n_tags, np.int64)
    last = np.zeros(n_tags, np.int64)
    seen = np.zeros(n_tags, bool)
    for c, st in zip(d.s_tag, d.s_step):  # a scatter keeps the last write: forward, the last row of each tag
        last[c] = st
        seen[c] = True
    for c, st in zip(reversed(d.s_tag), reversed(d.s_step)):  # reversed, the first row
        first[c[::-1]] = st[::-1]
    maybe = np.flatnonzero(seen & (first == last))
    if not len(maybe):
        return None
    codes = np.concatenate(d.s_tag)
    steps = np.concatenate(d.s_step)
    flat = []
    for code in maybe:
        mine = codes == code
        if int(mine.sum()) >= UNSTEPPED_MIN_POINTS and bool((steps[mine] == first[code]).all()):
            steps[mine] = np.arange(1, int(mine.sum()) + 1)
            flat.append(int(code))
    if not flat:
        return None
    d.s_tag, d.s_step = [codes], [steps]
    d.s_wall, d.s_value = [np.concatenate(d.s_wall)], [np.concatenate(d.s_value)]
    names = [d.tags[c] for c in flat]
    shown = ", ".join(f"'{t}'" for t in names[:MAX_UNSTEPPED_NAMED]) + (
        " …" if len(names) > MAX_UNSTEPPED_NAMED else ""
    )
    return (
        f"every point of {shown} in {os.path.basename(d.path)} is at step {int(first[flat[0]])}: the "
        "writer was given no step (add_scalar(tag, value) without global_step, MLflow's log_metric without step); "
        "read in logging order, the k-th "
        "point at step k — steps here count logged points (optimizer steps only if one point was logged per step, "
        "and checkpoints are placed by their optimizer step); log the step with each value"
    )


def _tag_names(frame: pd.DataFrame) -> list[str]:
    """The tags of a scalar frame: its categories (O(tags), not O(rows)), or the distinct values."""
    import pandas as pd

    col = frame["tag"]
    return [str(t) for t in (col.cat.categories if isinstance(col.dtype, pd.CategoricalDtype) else col.unique())]


# DeepSpeed's own monitor logs its tags against the samples seen (``global_samples``), not the step.
SAMPLES_PREFIX = "Train/Samples/"


def samples_axis_to_steps(events: RunEvents) -> None:
    """Put DeepSpeed's ``Train/Samples/*`` tags on the optimizer-step axis, in place: they are logged once
    per optimizer step against ``global_samples`` = step · train_batch_size, so the spacing of their points
    is the batch size and step = samples / spacing — the axis of the checkpoints (``global_stepN``) and of
    every other tag. Left as logged (no note) unless every point is a multiple of the spacing.

    >>> import pandas as pd
    >>> ev = RunEvents("r", pd.DataFrame({"tag": pd.Categorical(["Train/Samples/train_loss"] * 3),
    ...     "step": [32, 64, 96], "value": [1.0, 0.5, 0.4]}), None, [], {}, [], [])
    >>> samples_axis_to_steps(ev); ev.scalars["step"].tolist()
    [1, 2, 3]
    """
    import numpy as np

    s = events.scalars
    if s is None or not len(s):
        return
    tags = [t for t in _tag_names(s) if t.startswith(SAMPLES_PREFIX)]
    if not tags:
        return
    mask = s["tag"].isin(tags).to_numpy()
    steps = s["step"].to_numpy(np.int64)
    seen = np.unique(steps[mask])
    gaps = np.diff(seen)
    if not len(gaps) or gaps.min() <= 1:
        return
    spacing = int(gaps.min())
    if np.any(seen % spacing):
        return
    new = steps.copy()
    new[mask] //= spacing
    events.scalars = s.assign(step=new)
    events.notes.append(
        f"DeepSpeed's {SAMPLES_PREFIX}* tags are logged against the samples seen: read as optimizer steps = "
        f"samples / {spacing} (the spacing of their points: the train batch size)"
    )


def concurrent_writers_note(events: RunEvents) -> None:
    """Say so, in place, when event files of one folder were written at the same time and log the same tag at
    the same steps: several processes — every rank of a distributed run without a rank-0 guard, or two runs —
    writing into one folder (TensorBoard draws their curves as one zigzag). A restart's files follow each other
    in time; another writer logging other tags (adamdiag's monitor, an eval process) shares no tag. The curves
    are read as for a restart: the later file's values from its first step on.

    Costs one pass over the wall times when a run has several files; tags are compared only for files whose
    wall-time spans overlap.
    """
    import numpy as np

    s = events.scalars
    if s is None or len(events.files) < 2 or not len(s):
        return
    seg = s["segment"].to_numpy()
    if np.any(np.diff(seg) < 0):  # rows are in file order; anything else is not what _assemble builds
        return
    wall = s["wall_time"].to_numpy(np.float64)
    codes = s["tag"].cat.codes.to_numpy()
    steps = s["step"].to_numpy(np.int64)
    present = np.unique(seg)
    bounds = np.asarray(np.searchsorted(seg, np.r_[present, present[-1] + 1]))
    spans: dict[int, tuple[float, float, int, int]] = {
        int(k): (float(wall[a:b].min()), float(wall[a:b].max()), int(a), int(b))
        for k, a, b in zip(present.tolist(), bounds[:-1].tolist(), bounds[1:].tolist())
    }
    folder = {k: os.path.dirname(events.files[k]) for k in spans}
    shared: dict[str, set[int]] = {}
    for i in spans:
        for j in spans:
            if j <= i or folder[i] != folder[j]:
                continue
            (lo_i, hi_i, a_i, b_i), (lo_j, hi_j, a_j, b_j) = spans[i], spans[j]
            if not (lo_j < hi_i and lo_i < hi_j):
                continue
            for code in np.intersect1d(codes[a_i:b_i], codes[a_j:b_j]):
                st_i, st_j = steps[a_i:b_i][codes[a_i:b_i] == code], steps[a_j:b_j][codes[a_j:b_j] == code]
                if len(np.intersect1d(st_i, st_j)) >= 2:
                    shared.setdefault(folder[i], set()).update((i, j))
                    break
    for d, segs in shared.items():
        names = [os.path.basename(events.files[k]) for k in sorted(segs)]
        events.notes.append(
            f"{len(names)} event files in {d or '.'} were written at the same time and log the same tags at the same "
            f"steps ({', '.join(names)}): several processes — every rank of a distributed run, or two runs — "
            f"writing into one folder; each curve is read from the later file from its first step on ({names[-1]}); "
            "log from rank 0 only, or give each process its own folder"
        )


# Scalars some loops log beside the loss that count optimizer steps while the event axis counts something finer.
STEP_COUNTER_TAGS = ("step", "global_step", "train/global_step", "trainer/global_step", "train/step")


def micro_batch_axis_to_steps(events: RunEvents) -> None:
    """Put a run whose event axis counts micro-batches on the optimizer-step axis, in place.

    litgpt (pretrain and finetune, over Lightning Fabric) logs every metric at ``step=iter_num - 1`` — micro-batch
    iterations, ``gradient_accumulation_iters`` per optimizer step — and logs the optimizer step itself as a
    scalar named ``step``. Read as logged, the β2 memory and every span would be ``gradient_accumulation_iters``
    times too short and the checkpoints (``step-00000100``, whose Adam state counts optimizer steps) would sit
    ``k`` times too early on the log's axis. When a counter tag (:data:`STEP_COUNTER_TAGS`) has ≥ 3 strictly
    increasing integer values and its logged step is exactly ``k·value + c`` at every point with one integer
    ``k ≥ 2`` (and |c| < k), every scalar and histogram written to the same event file(s) as that tag is read at
    optimizer step ``(logged step - c) // k``. Anything else (a counter equal to the axis, a ratio that
    changes, a resumed counter) is left as logged.

    >>> import pandas as pd
    >>> ev = RunEvents("r", pd.DataFrame({"tag": pd.Categorical(["step", "loss"] * 3), "step": [3, 3, 7, 7, 11, 11],
    ...     "value": [1.0, 0.9, 2.0, 0.8, 3.0, 0.7], "source_file": pd.Categorical(["f"] * 6)}), None, [], {}, [], [])
    >>> micro_batch_axis_to_steps(ev); ev.scalars["step"].tolist()
    [1, 1, 2, 2, 3, 3]
    """
    import numpy as np

    s = events.scalars
    if s is None or not len(s) or "source_file" not in s.columns:
        return
    names = set(_tag_names(s))
    counter = next((t for t in STEP_COUNTER_TAGS if t in names), None)
    if counter is None:
        return
    rows = s[(s["tag"] == counter).to_numpy()].sort_values("step", kind="stable")
    logged = rows["step"].to_numpy(np.int64)
    values = rows["value"].to_numpy(np.float64)
    if len(values) < 3 or not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
        return
    dv, dl = np.diff(values), np.diff(logged)
    if np.any(dv <= 0) or np.any(dl % dv.astype(np.int64)):
        return
    ratios = dl // dv.astype(np.int64)
    k = int(ratios[0])
    offset = logged - k * values.astype(np.int64)
    if k < 2 or np.any(ratios != k) or np.any(offset != offset[0]) or abs(int(offset[0])) >= k:
        return
    c = int(offset[0])
    files = set(rows["source_file"].astype(str))
    events.scalars = _on_optimizer_steps(s, files, k, c)
    if events.histograms is not None and len(events.histograms) and "source_file" in events.histograms.columns:
        events.histograms = _on_optimizer_steps(events.histograms, files, k, c)
    shift = f"(logged step {'+' if c < 0 else '-'} {abs(c)}) / {k}" if c else f"logged step / {k}"
    events.notes.append(
        f"tag '{counter}' counts optimizer steps and the events are logged every {k} steps of the axis (micro-batches "
        f"of gradient accumulation, as litgpt logs at iter_num - 1): every tag of its event file read at optimizer "
        f"step = {shift}"
    )


def _on_optimizer_steps(frame: pd.DataFrame, files: set[str], k: int, c: int) -> pd.DataFrame:
    import numpy as np

    steps = frame["step"].to_numpy(np.int64)
    mine = frame["source_file"].astype(str).isin(files).to_numpy()
    new = steps.copy()
    new[mine] = (steps[mine] - c) // k
    return frame.assign(step=new)


def _duplicate_step_warnings(path: str, tags: Sequence[str], codes: Any, steps: Any, values: Any) -> list[str]:
    """One warning per tag that logged a step more than once inside one file *with different values*.

    ``codes``/``steps``/``values``: the file's rows (those a restart's purge left). Every row stays in the frame
    (``tags`` counts them, ``export`` writes them); the diagnosis and
    the plots use the last value logged for a step (:func:`adamdiag.analysis.frames.series`). A step
    repeated with the same value loses nothing and is no warning: Lightning logs ``epoch`` with every
    ``self.log`` call (twice a step with ``on_step`` and ``on_epoch``).
    """
    import numpy as np

    if len(codes) < 2:
        return []
    # Group by tag with a stable sort (radix sort for 16-bit codes: linear, cheap on 10^7 rows);
    # within a tag the steps of a healthy file strictly increase, so one comparison clears it.
    small = len(tags) < (1 << 15)
    order = np.argsort(codes.astype(np.int16) if small else codes, kind="stable")
    c, s = codes[order], steps[order]
    suspect = (c[1:] == c[:-1]) & (s[1:] <= s[:-1])
    if not suspect.any():
        return []
    values = (np.concatenate(values) if isinstance(values, list) else values)[order]  # (parts: joined only here)
    out = []
    for code in np.unique(c[1:][suspect]):
        mine = c == code
        # one sort by step: the repeated steps whose values differ (NaN never equals itself: a repeated
        # NaN counts), and the extra rows logged at them
        by_step = np.argsort(s[mine], kind="stable")
        ss, vs = s[mine][by_step], values[mine][by_step]
        differ = np.unique(ss[1:][(ss[1:] == ss[:-1]) & ~(vs[1:] == vs[:-1])])
        if not len(differ):
            continue
        extra = int(np.isin(ss, differ).sum()) - len(differ)
        out.append(
            f"{path}: tag '{tags[code]}' logs {len(differ)} step(s) more than once with different values "
            f"({extra} extra row(s), first at step {int(differ[0])}); all rows are kept (tags counts them, export "
            "writes them), scan/check/plot use the last value logged for a step"
        )
    return out


def idle_cpus() -> int:
    """CPUs this process may use that are not already busy (1-minute load average).

    Decoding is CPU-bound: on a machine whose cores are all taken, worker processes only time-share
    them and add start-up and transfer costs (measured: 2 workers on a loaded 2-core box were 2x
    slower than one process), so they are used only where there are idle cores.
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        busy = 0.0
    return max(1, min(usable, int(usable - busy + 1)))  # +1: this process counts in the load


def read_runs(
    paths: Sequence[Path],
    *,
    check_crc: bool = True,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
    problems: list[Problem] | None = None,
    run_progress: Callable[[int, int], None] | None = None,
) -> list[RunEvents]:
    """Find the runs under ``paths`` and read them all.

    With more than one run, enough bytes to pay for it and idle CPUs (``workers`` overrides the
    count), files are decoded in worker processes.
    ``progress(done_bytes, total_bytes)`` is called as files finish, ``run_progress(done_runs,
    total_runs)`` as runs finish. With ``problems`` given, a run that cannot be read is left out
    and a ``Problem(run, reason, "run")`` appended there, as is everything :func:`discover` skipped;
    without it, the first unreadable run raises :class:`InputError`.
    """
    found = discover(paths)
    if problems is not None:
        problems.extend(found.problems)
    runs = found.runs
    files: dict[Path, list[Path]] = {}
    for r in runs:
        try:
            files[r] = run_files(r)
        except InputError as e:
            if problems is None:
                raise
            problems.append(Problem(str(r), str(e), "run"))
    runs = [r for r in runs if r in files]
    sizes: dict[Path, int] = {}
    for fs in files.values():
        for f in fs:
            try:
                sizes[f] = f.stat().st_size
            except OSError:
                sizes[f] = 0  # read_file says why it cannot be read
    total = sum(sizes.values())
    done = 0
    results: dict[Path, FileData | InputError] = {}
    n_workers = workers if workers is not None else min(len(sizes), idle_cpus())
    if progress is not None:
        progress(0, total)
    if run_progress is not None:
        run_progress(0, len(runs))

    def read_one(f: Path) -> FileData | InputError:
        try:
            return read_file(f, check_crc=check_crc)
        except InputError as e:
            return e

    if len(runs) > 1 and total >= PARALLEL_MIN_BYTES and n_workers > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        order = sorted(sizes, key=lambda f: -sizes[f])  # biggest first: better load balance
        with ProcessPoolExecutor(max_workers=n_workers) as pool:
            futs = {pool.submit(_read_file_task, (str(f), check_crc)): f for f in order}
            for fut in as_completed(futs):
                f = futs[fut]
                try:
                    results[f] = fut.result()
                except InputError as e:
                    results[f] = e
                done += sizes[f]
                if progress is not None:
                    progress(done, total)
    else:
        for f in sizes:
            results[f] = read_one(f)
            done += sizes[f]
            if progress is not None:
                progress(done, total)
    # Writer children (add_scalars / add_hparams folders) join the run of the folder above them.
    listed = set(runs)
    for c in list(runs):
        owner = next((a for a in c.parents if a in listed), None)  # the nearest run above it
        if c.is_file() or owner is None:  # (split folders that discover grouped are no runs of their own)
            continue
        kids = [results[f] for f in files[c]]
        if any(isinstance(k, InputError) for k in kids):
            continue
        if adopt_writer_child(c, owner, kids):  # type: ignore[arg-type]
            files[owner] = files[owner] + files[c]
            runs.remove(c)
    out = []
    for i, r in enumerate(runs):
        try:
            datas = []
            for f in files[r]:
                res = results[f]
                if isinstance(res, InputError):
                    raise res
                datas.append(res)
            out.append(_finish(str(r), datas))
        except InputError as e:
            if problems is None:
                raise
            problems.append(Problem(str(r), str(e), "run"))
        if run_progress is not None:
            run_progress(i + 1, len(runs))
    return out
