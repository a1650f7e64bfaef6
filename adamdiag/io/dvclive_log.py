"""DVCLive's log (``dvclive/``: DVC's logger, ``Live().log_metric``, HF Trainer's ``report_to="dvclive"``,
Lightning's DVCLiveLogger, accelerate's dvclive tracker) as a log, for runs that logged nowhere else. Read with the
standard library (dvclive is not needed).

A DVCLive folder holds ``metrics.json`` (the latest values), ``params.yaml`` (``log_param``) and one tab-separated
file per metric under ``plots/metrics/`` — a key ``train/loss`` is ``plots/metrics/train/loss.tsv`` — with a header
``[timestamp] step <name>`` and a row per logged step (``timestamp``, in ms, when the metric was logged with
``timestamp=True``). Each file becomes a tag of its path at its steps; the folder's ``plots/metrics`` directory
stands for the run's files. The params are the run's writer arguments, read as the values they were (HF's
DVCLiveCallback logs its TrainingArguments there: ``adam_epsilon``, ``adam_beta2``, ``max_grad_norm``).

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp()) / "dvclive"
>>> (d / "plots" / "metrics" / "train").mkdir(parents=True)
>>> _ = (d / "plots" / "metrics" / "train" / "loss.tsv").write_text("step\\tloss\\n0\\t1.5\\n1\\tnan\\n")
>>> _ = (d / "metrics.json").write_text("{}")
>>> data = read_dvclive(d / "plots" / "metrics")
>>> data.tags, data.s_step[0].tolist(), data.s_value[0].tolist()
(['train/loss'], [0, 1], [1.5, nan])
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adamdiag.io.events import FileData

PLOTS, METRICS = "plots", "metrics"
MARKERS = ("metrics.json", "params.yaml", "dvc.yaml")  # what a DVCLive folder holds beside plots/
PARAMS = "params.yaml"
# One metric's file of 10^8 rows is far beyond one training run.
MAX_BYTES = 1 << 32


def is_dvclive_dir(folder: Path) -> bool:
    """Whether ``folder`` is a DVCLive folder: ``plots/metrics/`` holding a ``.tsv`` table, beside its
    metrics.json, params.yaml or dvc.yaml (a project's own plots/metrics folder of pictures is none)."""
    metrics = folder / PLOTS / METRICS
    if not metrics.is_dir() or not any((folder / m).is_file() for m in MARKERS):
        return False
    return any(n.endswith(".tsv") for _, _, names in os.walk(metrics) for n in names)


def is_metrics_dir(path: Path) -> bool:
    """Whether ``path`` is the ``plots/metrics`` directory of a DVCLive folder (the path that stands for its run)."""
    return path.name == METRICS and path.parent.name == PLOTS and is_dvclive_dir(path.parent.parent)


def read_dvclive(metrics_dir: Path | str) -> FileData:
    """The metrics of one DVCLive folder (its ``plots/metrics`` directory given) as event-file columns. A file that
    is not a DVCLive table (no ``step`` column) or cannot be read is a warning; a row cut short is skipped."""
    from adamdiag.io.events import ARGS_SOURCE, DVCLIVE_VERSION
    from adamdiag.io.framework_logs import LogRows, complete_text, csv_rows, metric_files

    metrics_dir = Path(metrics_dir)
    rows = LogRows()
    warnings: list[str] = []
    files, size, mtime = metric_files(metrics_dir, ".tsv", MAX_BYTES, "DVCLive metric file", warnings)
    for tag, f, text in files:
        # newline="": a stray carriage return inside a line stays data for csv to judge, not a line break it refuses
        table = csv.reader(io.StringIO(complete_text(text, f, warnings), newline=""), delimiter="\t")
        header = next(table, None)
        if not header or "step" not in header or len(header) < 2:
            warnings.append(f"{f}: no 'step' column in its header: not a DVCLive metric file; skipped")
            continue
        at_step, at_value = header.index("step"), len(header) - 1
        at_time = header.index("timestamp") if "timestamp" in header else None
        cut = 0
        for row in csv_rows(table, rows.skipped):
            if not row:
                continue
            try:
                step, value = int(row[at_step]), float(row[at_value])
                wall = int(row[at_time]) / 1000.0 if at_time is not None else float("nan")
            except (ValueError, IndexError):
                cut += 1
                continue
            if len(row) != len(header):
                cut += 1
                continue
            rows.add(tag, step, value, wall)
        if cut:
            rows.skipped["rows that are no metric row"] += cut
            warnings.append(f"{f}: {cut} row(s) that are no '<step> <value>' row skipped (a write cut short?)")
    run = metrics_dir.parent.parent
    if not rows.codes:
        warnings.append(f"{run}: no logged metric (the run stopped before its first log?)")
    how = "each metric at its logged step"
    left: list[str] = []
    prm = params(metrics_dir)
    if all(k in prm for k in HF_ARG_KEYS):
        how, left = _as_hf_tensorboard(rows, prm)
    data = rows.file_data(
        metrics_dir,
        size,
        mtime,
        version=DVCLIVE_VERSION,
        kind="dvclive",
        records=len(rows.codes),
        warnings=warnings,
        note=f"read from DVCLive's {run.name}/plots/metrics ({how}); no TensorBoard event files in this run",
        # HF's DVCLiveCallback logs its TrainingArguments as params
        arguments={**prm, ARGS_SOURCE: "DVCLive's params.yaml"} if prm else None,
    )
    data.warning_notes += left
    return data


# TrainingArguments in params.yaml: the folder was written by HF Trainer's DVCLiveCallback
HF_ARG_KEYS = ("logging_steps", "per_device_train_batch_size", "output_dir")


def _as_hf_tensorboard(rows: Any, prm: dict[str, Any]) -> tuple[str, list[str]]:
    """HF Trainer's DVCLiveCallback calls ``next_step()`` once per Trainer log (training logs every
    ``logging_steps``, evaluations, the final summary), so DVCLive's step counts log calls, and its metric names
    differ from the Trainer's TensorBoard callback's (``loss``, and the summary's ``train_loss`` as ``train/loss``).
    The rows are put at the Trainer's global step — the logged ``epoch`` x steps per epoch, that ratio taken from
    the training logs (the j-th at (j+1) x logging_steps) and checked on every one — and renamed as its TensorBoard
    callback names them. Where the check fails the steps stay log indices, with a warning note. Returns (how the
    note describes the axis, warning notes)."""
    import math

    tag_of = {i: t for i, t in enumerate(rows.tags)}
    by_tag: dict[str, dict[int, float]] = {}
    for code, step, value in zip(rows.codes, rows.steps, rows.values):
        by_tag.setdefault(tag_of[code], {})[step] = value
    rows.tags[:] = [_hf_tensorboard_name(t) for t in rows.tags]
    logging_steps, first = prm.get("logging_steps"), str(prm.get("logging_first_step", "")).lower() == "true"
    epochs, train_logs = by_tag.get("epoch", {}), sorted(by_tag.get("loss", {}))
    if not isinstance(logging_steps, int) or logging_steps < 1:  # a ratio of the run (HF: < 1) or unreadable
        return "the Trainer's log calls, as DVCLive counts them", [NOT_CONVERTED]
    global_steps = [
        (1 if first and j == 0 else (j + (0 if first else 1)) * logging_steps) for j in range(len(train_logs))
    ]
    ratios = [g / epochs[s] for s, g in zip(train_logs, global_steps) if epochs.get(s, 0) > 0]
    if not ratios:
        return "the Trainer's log calls, as DVCLive counts them", [NOT_CONVERTED]
    per_epoch = sorted(ratios)[len(ratios) // 2]
    if any(abs(epochs[s] * per_epoch - g) > 0.5 for s, g in zip(train_logs, global_steps) if s in epochs):
        return "the Trainer's log calls, as DVCLive counts them", [NOT_CONVERTED]
    # the final summary (train_runtime, ...) is logged at max_steps: a second check, on the steps per epoch
    summary = sorted(by_tag.get("train/runtime", {}))
    max_steps = prm.get("max_steps")
    if summary and isinstance(max_steps, int) and max_steps > 0 and summary[-1] in epochs:
        if round(epochs[summary[-1]] * per_epoch) != max_steps:
            return "the Trainer's log calls, as DVCLive counts them", [NOT_CONVERTED]
    at: dict[int, int] = {}
    last = 0
    for s in sorted(set(rows.steps)):
        e = epochs.get(s)
        if e is not None and math.isfinite(e):
            last = round(e * per_epoch)
        at[s] = last
    rows.steps[:] = [at[s] for s in rows.steps]
    return (
        f"written by HF Trainer's DVCLiveCallback: at the Trainer's global step, the logged epoch x {per_epoch:g} "
        "steps per epoch, and named as its TensorBoard callback names them",
        [],
    )


NOT_CONVERTED = (
    "HF Trainer's DVCLiveCallback counts its log calls as DVCLive's step, and its logged epoch did not give the "
    "Trainer's global step (logging_steps not a whole number, or epochs that do not fit): the steps are log "
    "indices, not optimizer steps"
)


def _hf_tensorboard_name(tag: str) -> str:
    """The HF TensorBoard callback's name of a DVCLiveCallback metric: ``loss`` -> ``train/loss``, the final
    summary's ``train/runtime`` (DVCLive's name of ``train_runtime``) -> ``train/train_runtime``, ``eval/*`` kept.

    >>> [_hf_tensorboard_name(t) for t in ("loss", "train/loss", "eval/loss", "grad_norm")]
    ['train/loss', 'train/train_loss', 'eval/loss', 'train/grad_norm']
    """
    if tag.startswith(("eval/", "test/")):
        return tag
    if tag.startswith("train/"):
        return "train/train_" + tag[len("train/") :]
    return "train/" + tag


def params(metrics_dir: Path | str) -> dict[str, Any]:
    """The top-level params of a DVCLive folder's params.yaml (``key: value`` lines; nested ones are left out),
    each read as the value it was (:func:`adamdiag.io.mlflow_log.typed`); {} when there are none."""
    from adamdiag.io.mlflow_log import typed

    path = Path(metrics_dir).parent.parent / PARAMS
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    out: dict[str, Any] = {}
    for line in text.splitlines():
        m = re.match(r"([A-Za-z_][\w.\-/]*):\s+(\S.*)$", line)  # top level: no indent, a value on the line
        if m:
            out[m.group(1)] = typed(m.group(2).strip().strip("'\""))
    return out
