"""What the readers of frameworks' own log files share (:mod:`adamdiag.io.trainer_state` for Hugging Face's
trainer_state.json, :mod:`adamdiag.io.csv_log` for Lightning's metrics.csv): opening the file as every reader does
(never a FIFO, a size bound, one-line errors) and handing the rows over in an event file's columns
(:class:`adamdiag.io.events.FileData`), so that everything after the reader treats the run as logged to TensorBoard.

>>> rows = LogRows()
>>> rows.add("train/loss", 5, 1.5); rows.add("train/lr", 5, 0.1); rows.add("train/loss", 10, 1.2)
>>> rows.tags, rows.steps
(['train/loss', 'train/lr'], [5, 5, 10])
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, AnyStr

from adamdiag.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from adamdiag.io.events import FileData


# The reader kind (FileData.kinds) of each framework's own log, and how ``tags`` names its writer
FRAMEWORK_LOG_WRITERS = {
    "trainer_state": "hf trainer_state.json log_history",
    "metrics_csv": "lightning CSVLogger metrics.csv",
    "wandb": "wandb run file history",
    "mlflow": "mlflow run metrics",
    "dvclive": "dvclive plots/metrics",
    "mmengine": "mmengine LocalVisBackend scalars.json",
    "detectron2": "detectron2 JSONWriter metrics.json",
    "torchtune": "torchtune DiskLogger",
    "mmcv": "mmcv TextLoggerHook json log",
    "sacred": "sacred FileStorageObserver metrics.json",
}
FRAMEWORK_LOG_KINDS = frozenset(FRAMEWORK_LOG_WRITERS)


def framework_writer(kinds: set[str]) -> str | None:
    """How ``tags`` names the writer of a file read with these kinds, when it is a framework's own log."""
    return next((FRAMEWORK_LOG_WRITERS[k] for k in sorted(kinds) if k in FRAMEWORK_LOG_WRITERS), None)


def is_framework_log(path: Path) -> bool:
    """Whether the file ``path`` is a framework's own log that can be named as a run (Hugging Face's
    trainer_state.json, Lightning's metrics.csv, a Weights & Biases run file, an MLflow file-store run's
    meta.yaml, mmengine's scalars.json, Detectron2's metrics.json, torchtune's DiskLogger file, mmcv 1.x's json log, Sacred's metrics.json)."""
    from adamdiag.io.detectron2_log import is_metrics_json
    from adamdiag.io.events import METRICS_CSV, TRAINER_STATE
    from adamdiag.io.mlflow_log import is_run_meta
    from adamdiag.io.mmcv_log import is_mmcv_log
    from adamdiag.io.mmengine_log import is_scalars_json
    from adamdiag.io.sacred_log import is_sacred_metrics
    from adamdiag.io.torchtune_log import is_disk_log
    from adamdiag.io.wandb_log import is_wandb_file

    return (
        path.name in (TRAINER_STATE, METRICS_CSV)
        or is_wandb_file(path)
        or is_run_meta(path)
        or is_scalars_json(path)
        or is_metrics_json(path)
        or is_disk_log(path)
        or is_mmcv_log(path)
        or is_sacred_metrics(path)
    )


def read_framework_log(path: Path, *, fast: bool = True) -> FileData | None:
    """The rows of the framework log ``path`` stands for (:func:`adamdiag.io.events.run_files` hands these paths
    over: a trainer_state.json, a metrics.csv, a wandb run file, an MLflow run's meta.yaml or a database run's
    path, a DVCLive folder's plots/metrics, an mmengine scalars.json, a Detectron2 metrics.json, a torchtune DiskLogger file, an mmcv json log, a Sacred metrics.json); None for any other path (an event file).
    ``fast``: wandb's decoder."""
    from adamdiag.io.detectron2_log import is_metrics_json, read_metrics_json
    from adamdiag.io.dvclive_log import is_metrics_dir, read_dvclive
    from adamdiag.io.events import METRICS_CSV, TRAINER_STATE
    from adamdiag.io.mlflow_log import is_database_run, is_run_meta, read_file_store_run, read_sqlite_run
    from adamdiag.io.mmcv_log import is_mmcv_log, read_mmcv_log
    from adamdiag.io.mmengine_log import is_scalars_json, read_scalars_json
    from adamdiag.io.sacred_log import is_sacred_metrics, read_sacred_metrics
    from adamdiag.io.torchtune_log import is_disk_log, read_disk_log
    from adamdiag.io.wandb_log import is_wandb_file, read_wandb

    if path.name == TRAINER_STATE:
        from adamdiag.io.trainer_state import read_trainer_state

        return read_trainer_state(path)
    if path.name == METRICS_CSV:
        from adamdiag.io.csv_log import read_metrics_csv

        return read_metrics_csv(path)
    if is_wandb_file(path):
        return read_wandb(path, fast=fast)
    if is_run_meta(path):
        return read_file_store_run(path)
    if is_database_run(path):
        return read_sqlite_run(path)
    if is_metrics_dir(path):
        return read_dvclive(path)
    if is_scalars_json(path):
        return read_scalars_json(path)
    if is_metrics_json(path):
        return read_metrics_json(path)
    if is_disk_log(path):
        return read_disk_log(path)
    if is_mmcv_log(path):
        return read_mmcv_log(path)
    if is_sacred_metrics(path):
        return read_sacred_metrics(path)
    return None


def file_head(path: Path, limit: int) -> bytes | None:
    """The first ``limit`` bytes of a file, to tell what it is; None for a non-regular file (never opened: a FIFO
    would block) or one that cannot be read."""
    from adamdiag.io.checkpoints import non_regular

    if non_regular(path) is not None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return None


def first_line(path: Path, limit: int = 1 << 16) -> str | None:
    """The first line of a text log (at most ``limit`` bytes read), None as :func:`file_head`."""
    head = file_head(path, limit)
    return None if head is None else head.split(b"\n", 1)[0].decode("utf-8", errors="replace")


def read_log_file(path: Path, max_bytes: int, what: str) -> tuple[bytes, int, float]:
    """The bytes, size and modification time of a framework's log file; :class:`InputError` (one line) for a
    non-regular file (never opened: a FIFO would block), one larger than ``max_bytes`` or an unreadable one."""
    from adamdiag.io.checkpoints import non_regular

    kind = non_regular(path)
    if kind is not None:
        raise InputError(f"{path}: a {kind}, not a file (not opened)")
    try:
        st = path.stat()
        if st.st_size > max_bytes:
            raise InputError(f"{path}: {st.st_size} bytes, too large for a {what} (not read)")
        return path.read_bytes(), st.st_size, st.st_mtime
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror or e})") from None


@dataclass
class LineLog:
    """A one-record-per-line log read by :func:`read_line_log`."""

    rows: LogRows
    size: int
    mtime: float
    records: int  # non-empty lines
    warnings: list[str]


def read_line_log(
    path: Path,
    max_bytes: int,
    what: str,
    add_line: Callable[[str, LogRows], bool],
    record: str,
    *,
    say_empty: bool = True,
) -> LineLog:
    """A log of one record per line (mmengine's scalars.json, Detectron2's metrics.json, torchtune's DiskLogger, mmcv's
    json log): its complete lines (:func:`complete_text`) handed to ``add_line``, which adds a line's values to the rows
    and says whether it was a ``record`` (the words of the warning for the lines that were not); a file with no value
    says so (``say_empty``: a caller that adds its rows after the lines says it itself). :class:`InputError` (one
    line) when the file cannot be read (:func:`read_log_file`)."""
    raw, size, mtime = read_log_file(path, max_bytes, what)
    rows = LogRows()
    cut: list[str] = []
    lines = complete_text(raw, path, cut).decode("utf-8", errors="replace").splitlines()
    records = bad = 0
    for line in lines:
        if not line.strip():
            continue
        records += 1
        if not add_line(line, rows):
            bad += 1
    warnings = [f"{path}: {bad} line(s) that are no {record} skipped"] if bad else []
    warnings += cut
    if say_empty:
        warnings += empty_log_warning(path, rows)
    return LineLog(rows, size, mtime, records, warnings)


def json_line_adder(
    position: str, prefix: Callable[[dict[str, Any]], str] | None = None
) -> Callable[[str, LogRows], bool]:
    """The ``add_line`` of :func:`read_line_log` for a log of one JSON object per line whose key ``position`` is the
    step (mmengine's ``step``, Detectron2's ``iteration``): every other numeric value a tag at that step, under
    ``prefix(obj)`` (mmengine: ``validation/`` for a validation's line); non-numeric values counted as skipped. A line
    that is no JSON object with a finite numeric ``position`` is no record.

    >>> rows = LogRows(); add = json_line_adder("step")
    >>> add('{"step": 3, "loss": 0.5, "note": "x"}', rows), add('{"loss": 1}', rows), rows.tags, rows.steps
    (True, False, ['loss'], [3])
    """

    def add(line: str, rows: LogRows) -> bool:
        try:
            obj = json.loads(line)
        except ValueError:
            return False
        step = obj.get(position) if isinstance(obj, dict) else None
        if not isinstance(step, (int, float)) or isinstance(step, bool) or not math.isfinite(step):
            return False
        head = prefix(obj) if prefix is not None else ""
        for key, value in obj.items():
            if key == position:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                rows.skipped["non-numeric values"] += 1
                continue
            rows.add(head + str(key), int(step), float(value))
        return True

    return add


def empty_log_warning(path: Path, rows: LogRows) -> list[str]:
    """The warning of a log that holds no value (none when it holds one)."""
    return [] if rows.codes else [f"{path}: no logged value (the run stopped before its first log?)"]


def complete_text(data: AnyStr, path: Path | str, warnings: list[str]) -> AnyStr:
    """A one-record-per-line log's bytes or text without a last line that has no newline yet: a record its writer is
    still writing (or was killed in), left out — a cut number would read as a wrong value — with a warning in the words
    the event-file reader uses, so that scan calls it "in progress" (AD902 info) when the file is the run's newest.

    >>> w = []; complete_text(b"a\\nb", Path("x.txt"), w), w
    (b'a\\n', ['x.txt: truncated record at byte 2 (the run is still writing it?)'])
    """
    cut = data.rfind(b"\n" if isinstance(data, bytes) else "\n") + 1  # type: ignore[arg-type]
    if cut < len(data):
        at = cut if isinstance(data, bytes) else len(data[:cut].encode())
        warnings.append(f"{path}: truncated record at byte {at} (the run is still writing it?)")
        return data[:cut]
    return data


def metric_files(
    folder: Path, suffix: str, max_bytes: int, what: str, warnings: list[str]
) -> tuple[list[tuple[str, Path, str]], int, float]:
    """The files of a one-file-per-metric folder (MLflow's ``metrics/``, DVCLive's ``plots/metrics/``), by name:
    (tag — the path below ``folder`` without ``suffix``, the file, its text), their total size and newest mtime.
    A file that cannot be read is a warning naming its metric; a subfolder that cannot be listed, one too."""
    import os

    found: list[Path] = []
    for dirpath, _, names in os.walk(folder, onerror=lambda e: warnings.append(f"cannot read {e.filename}")):
        found += [Path(dirpath) / n for n in names if n.endswith(suffix)]
    out: list[tuple[str, Path, str]] = []
    size, mtime = 0, 0.0
    for f in sorted(found):
        rel = f.relative_to(folder).as_posix()
        tag = rel[: len(rel) - len(suffix)] if suffix else rel
        try:
            raw, fsize, fmtime = read_log_file(f, max_bytes, what)
        except InputError as e:
            warnings.append(f"{e}; metric '{tag}' skipped")
            continue
        size += fsize
        mtime = max(mtime, fmtime)
        out.append((tag, f, raw.decode("utf-8", errors="replace")))
    return out, size, mtime


def csv_rows(reader: Iterator[list[str]], damaged: Counter) -> Iterator[list[str]]:
    """The rows of a ``csv.reader``, a row csv cannot parse (a damaged byte: an unquoted line break, a NUL) counted
    in ``damaged["unparsable rows"]`` and passed over — the reader goes on at the next line."""
    import csv

    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error:
            damaged["unparsable rows"] += 1
            continue
        yield row


@dataclass
class LogRows:
    """Scalar rows collected from a log file, tags numbered in order of first appearance."""

    tags: list[str] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)  # NaN where the file stores no time
    skipped: Counter = field(default_factory=Counter)
    # histogram rows, as an event file's (tag, step, wall, min, max, num, sum, sum_squares, approx)
    histograms: list[tuple] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict)

    def add(self, tag: str, step: int, value: float, wall: float = math.nan) -> None:
        code = self._index.get(tag)
        if code is None:
            code = self._index[tag] = len(self.tags)
            self.tags.append(tag)
        self.codes.append(code)
        self.steps.append(step)
        self.values.append(value)
        self.walls.append(wall)

    def file_data(
        self,
        path: Path,
        size: int,
        mtime: float,
        *,
        version: str,
        kind: str,
        records: int,
        warnings: list[str],
        note: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> FileData:
        """The rows as one file's columns; ``note``: where its rows come from, for scan's notes; ``arguments``: the
        training's configuration the log holds, with its ``ARGS_SOURCE`` (none: {} or None). A point without a
        time of its own (a positive finite ``wall``) gets the file's modification time. ``grouped``: the tags are
        final (a file in ``checkpoint-N/`` gets no split-folder prefix)."""
        import numpy as np

        from adamdiag.io.events import FileData

        n = len(self.codes)
        w = np.asarray(self.walls, np.float64)
        w = np.where(np.isfinite(w) & (w > 0), w, mtime)
        return FileData(
            path=str(path),
            size=size,
            tags=self.tags,
            s_tag=[np.asarray(self.codes, np.int32)],
            s_step=[np.asarray(self.steps, np.int64)],
            s_wall=[w],
            s_value=[np.asarray(self.values, np.float64)],
            h_rows=[(*r[:2], r[2] if math.isfinite(r[2]) and r[2] > 0 else mtime, *r[3:]) for r in self.histograms],
            warnings=warnings,
            skipped=self.skipped,
            records=records,
            file_version=version,
            first_wall_time=float(w.min()) if n else float("inf"),
            kinds={kind} if n or self.histograms else set(),
            readable=True,
            grouped=True,
            notes=[note] if note else [],
            arguments=arguments or None,
        )
