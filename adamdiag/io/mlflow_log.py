"""MLflow's local tracking stores as a log, for runs that logged nowhere else (Lightning's MLFlowLogger, HF Trainer's
MLflowCallback, ``mlflow.log_metrics``). Two stores, each read with the standard library (mlflow is not needed):

- the **file store** (``mlruns/<experiment id>/<run id>/``; Lightning's MLFlowLogger default ``./mlruns``, MLflow
  2.x's default): ``meta.yaml`` (``run_id``, ``run_name``, ``lifecycle_stage``), one file per metric under
  ``metrics/`` (a key ``train/loss`` is the file ``metrics/train/loss``), each line ``<ms timestamp> <value>
  <step>``; ``params/<key>`` one value each. A run folder is a run; its ``meta.yaml`` stands for its files.
- the **SQLite store** (``mlflow.db``, MLflow 3's default): tables ``runs`` (``run_uuid``, ``name``,
  ``experiment_id``, ``lifecycle_stage``), ``metrics`` (``key, value, timestamp, step, is_nan, run_uuid``; a NaN is
  stored as 0 with ``is_nan`` 1, ±inf as ±1.7976931348623157e308) and ``params``. One database holds many runs:
  each is named ``<folder>/mlflow.db/<experiment>/<run name>-<run id[:8]>`` (:func:`run_path`) — a path that is no
  file (the database is the file), read by :func:`read_sqlite_run`.

Each metric becomes a tag of its key at its step, the timestamp its wall time; the params are the run's writer
arguments (HF's MLflowCallback logs the TrainingArguments there: ``adam_epsilon``, ``adam_beta2``,
``max_grad_norm``). Deleted runs (``lifecycle_stage: deleted``, the file store's ``.trash``) are not read.

>>> parse_metric_line("1796635039875 15.59 4"), parse_metric_line("1796635039875 nan 5"), parse_metric_line("x")
((1796635039.875, 15.59, 4), (1796635039.875, nan, 5), None)
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamdiag.errors import InputError

if TYPE_CHECKING:
    from adamdiag.io.events import FileData

META = "meta.yaml"
METRICS = "metrics"
PARAMS = "params"
TRASH = ".trash"  # the file store's deleted runs
SQLITE_NAMES = ("mlflow.db",)  # MLflow 3's default database (sqlite:///mlflow.db)
SQLITE_MAGIC = b"SQLite format 3\x00"
# How the SQL store writes ±inf (it cannot hold them): the largest double
_SQL_INF = sys.float_info.max
# A store's metric files or table of 10^8 rows is far beyond one training run.
MAX_METRIC_FILE_BYTES = 1 << 32
MAX_ROWS_NOTE = 10_000_000


def parse_metric_line(line: str) -> tuple[float, float, int] | None:
    """(wall time in s, value, step) of one file-store metric line, None when it is no such line. MLflow < 1.0
    wrote no step: such a line is at step 0."""
    parts = line.split()
    if len(parts) not in (2, 3):
        return None
    try:
        ts = int(parts[0]) / 1000.0
        value = float(parts[1])
        step = int(parts[2]) if len(parts) == 3 else 0
    except ValueError:
        return None
    return ts, value, step


def _meta(path: Path) -> dict[str, str]:
    """The flat ``key: value`` lines of a file store's meta.yaml (no YAML library: the file is written flat)."""
    out = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    for line in text.splitlines():
        m = re.match(r"([A-Za-z_]+):\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip().strip("'\"")
    return out


def is_file_store_run(folder: Path) -> bool:
    """Whether ``folder`` is a file-store run: a meta.yaml naming a ``run_id`` beside a ``metrics/`` folder."""
    return (folder / METRICS).is_dir() and "run_id" in _meta(folder / META)


def is_deleted(folder: Path) -> bool:
    """Whether a file-store run is marked deleted (``mlflow.delete_run``: ``lifecycle_stage: deleted``)."""
    return _meta(folder / META).get("lifecycle_stage") == "deleted"


def is_run_meta(path: Path) -> bool:
    """Whether ``path`` is the meta.yaml of a file-store run (the file that stands for the run)."""
    return path.name == META and is_file_store_run(path.parent)


def read_file_store_run(meta: Path | str) -> FileData:
    """The metrics of one file-store run (its ``meta.yaml`` given) as event-file columns. A line that is no
    metric line (a write cut short) is skipped with a warning; a metric file that cannot be read is a warning."""
    from adamdiag.io.events import MLFLOW_VERSION
    from adamdiag.io.framework_logs import LogRows, metric_files

    meta = Path(meta)
    run = meta.parent
    info = _meta(meta)
    if info.get("lifecycle_stage") == "deleted":
        raise InputError(f"{run}: an MLflow run marked deleted (lifecycle_stage: deleted); not read")
    rows = LogRows()
    warnings: list[str] = []
    files, size, mtime = metric_files(run / METRICS, "", MAX_METRIC_FILE_BYTES, "MLflow metric file", warnings)
    for key, f, text in files:
        bad = 0
        for line in text.splitlines():
            if not line.strip():
                continue
            got = parse_metric_line(line)
            if got is None:
                bad += 1
                continue
            ts, value, step = got
            rows.add(key, step, value, ts)
        if bad:
            rows.skipped["lines that are no metric line"] += bad
            warnings.append(f"{f}: {bad} line(s) that are no '<timestamp> <value> <step>' line skipped (cut short?)")
    if not rows.codes:
        warnings.append(f"{run}: no logged metric (the run stopped before its first log?)")
    name = info.get("run_name") or info.get("run_id", run.name)
    data = rows.file_data(
        meta,
        size,
        mtime,
        version=MLFLOW_VERSION,
        kind="mlflow",
        records=len(rows.codes),
        warnings=warnings,
        note=f"read from the MLflow run {name!r} (file store {run}); no TensorBoard event files in this run",
        arguments=_with_source(file_store_params(meta)),
    )
    return data


def typed(value: str) -> Any:
    """A param as the value it was: MLflow stores ``str(value)``, so ``"1.0"`` was the number 1.0 (HF's
    MLflowCallback logs the TrainingArguments this way); what is no JSON number stays text.

    >>> typed("1.0"), typed("1e-08"), typed("adamw_torch"), typed("True"), typed("nan")
    (1.0, 1e-08, 'adamw_torch', 'True', 'nan')
    """
    import json

    try:
        v = json.loads(value)
    except ValueError:
        return value
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else value


def file_store_params(meta: Path | str) -> dict[str, Any]:
    """A file-store run's params (``params/<key>``, one value each, :func:`typed`); {} when none can be read."""
    from adamdiag.io.framework_logs import metric_files

    folder = Path(meta).parent / PARAMS
    if not folder.is_dir():
        return {}
    # the same one-file-per-key layout as metrics/ (and the same guards: a FIFO is never opened)
    files, _, _ = metric_files(folder, "", MAX_METRIC_FILE_BYTES, "MLflow param file", [])
    return {key: typed(text.strip()) for key, _, text in files}


# --------------------------------------------------------------------------------------------
# The SQLite store: one database, many runs.


def is_sqlite_store(path: Path) -> bool:
    """Whether ``path`` is named as MLflow's database and starts as an SQLite file."""
    from adamdiag.io.checkpoints import non_regular

    if path.name not in SQLITE_NAMES or non_regular(path) is not None:  # a FIFO would block: never opened
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def _connect(db: Path) -> Any:
    """A read-only connection (the store is never written: ``mode=ro``, and ``immutable`` is not claimed, so a
    training still writing it is read consistently)."""
    import sqlite3

    from adamdiag.io.checkpoints import non_regular

    kind = non_regular(db)
    if kind is not None:
        raise InputError(f"{db}: a {kind}, not a file (not opened)")
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        con.execute("select run_uuid, name, experiment_id, lifecycle_stage from runs limit 1").fetchall()
        return con
    except sqlite3.DatabaseError as e:
        raise InputError(f"{db}: not a readable MLflow database ({e})") from None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


def sqlite_runs(db: Path) -> list[Path]:
    """The runs of an MLflow database, as paths ``<db>/<experiment>/<run name>-<id[:8]>`` in start order
    (deleted runs left out). Raises :class:`InputError` when it is no MLflow database."""
    import sqlite3

    con = _connect(db)
    try:
        rows = con.execute(
            "select r.run_uuid, r.name, coalesce(e.name, cast(r.experiment_id as text)) from runs r "
            "left join experiments e on e.experiment_id = r.experiment_id "
            "where coalesce(r.lifecycle_stage, 'active') != 'deleted' order by r.start_time, r.run_uuid"
        ).fetchall()
    except sqlite3.Error as e:  # locked past the timeout, damaged pages, another schema
        raise InputError(f"{db}: cannot read the MLflow database ({e})") from None
    finally:
        con.close()
    return [db / _safe(exp) / f"{_safe(name or 'run')}-{uuid[:8]}" for uuid, name, exp in rows]


def split_run_path(path: Path) -> tuple[Path, str] | None:
    """(database, run id prefix) of a path :func:`sqlite_runs` made, else None. The names are checked before
    the file system (every file read_file is handed passes here)."""
    parts = path.parts
    if len(parts) < 3 or Path(parts[-3]).name not in SQLITE_NAMES:
        return None
    m = re.search(r"-([0-9a-f]{8})$", parts[-1])
    db = Path(*parts[:-2])
    if m is None or path.exists() or not db.is_file():
        return None
    return db, m.group(1)


def is_database_run(path: Path | str) -> bool:
    """Whether ``path`` names a run of an MLflow database (:func:`sqlite_runs`)."""
    return split_run_path(Path(path)) is not None


def _has_rowid(con: Any) -> bool:
    import sqlite3

    try:
        con.execute("select rowid from metrics limit 1").fetchall()
        return True
    except sqlite3.Error:  # a WITHOUT ROWID table
        return False


def _run_uuid(con: Any, db: Path, prefix: str) -> tuple[str, str]:
    rows = con.execute("select run_uuid, name from runs where run_uuid like ?", (prefix + "%",)).fetchall()
    if len(rows) != 1:
        raise InputError(f"{db}: no single MLflow run whose id starts with {prefix} ({len(rows)} found)")
    return rows[0][0], rows[0][1] or rows[0][0]


def read_sqlite_run(path: Path | str) -> FileData:
    """One run of an MLflow database (a path :func:`sqlite_runs` made) as event-file columns."""
    import sqlite3

    from adamdiag.io.events import MLFLOW_VERSION
    from adamdiag.io.framework_logs import LogRows

    path = Path(path)
    split = split_run_path(path)
    if split is None:
        raise InputError(f"{path}: not a run of an MLflow database")
    db, prefix = split
    con = _connect(db)
    try:
        uuid, name = _run_uuid(con, db, prefix)
        # in logging order: the table's insertion order (rowid), which a millisecond timestamp cannot break ties of
        # — it matters where every point sits at step 0 (log_metric without step) and is read in that order
        order = "rowid" if _has_rowid(con) else "timestamp, step"
        rows_sql = con.execute(
            f"select key, value, timestamp, step, is_nan from metrics where run_uuid = ? order by {order}", (uuid,)
        ).fetchall()
        params = _sqlite_params(con, uuid)
    except sqlite3.Error as e:
        raise InputError(f"{db}: cannot read the MLflow database ({e})") from None
    finally:
        con.close()
    rows = LogRows()
    for key, value, ts, step, is_nan in rows_sql:
        if is_nan:
            v = math.nan
        elif value is None:
            rows.skipped["null values"] += 1
            continue
        else:
            v = float(value)
            if abs(v) == _SQL_INF:
                v = math.copysign(math.inf, v)
        rows.add(str(key), int(step or 0), v, (ts or 0) / 1000.0)
    st = db.stat()
    warnings = [] if rows.codes else [f"{path}: no logged metric (the run stopped before its first log?)"]
    data = rows.file_data(
        path,
        st.st_size,
        st.st_mtime,
        version=MLFLOW_VERSION,
        kind="mlflow",
        records=len(rows_sql),
        warnings=warnings,
        note=f"read from the MLflow run {name!r} ({uuid}) in the database {db}; no TensorBoard event files in this run",
        arguments=_with_source(params),
    )
    return data


def _sqlite_params(con: Any, uuid: str) -> dict[str, Any]:
    """A database run's params, :func:`typed`; {} when the table cannot be read (another schema: no arguments)."""
    import sqlite3

    try:
        rows = con.execute("select key, value from params where run_uuid = ?", (uuid,)).fetchall()
    except sqlite3.Error:
        return {}
    return {str(k): typed(str(v)) for k, v in rows}


def _with_source(params: dict[str, Any]) -> dict[str, Any] | None:
    """Params as the run's writer arguments (HF's MLflowCallback logs its TrainingArguments there)."""
    from adamdiag.io.events import ARGS_SOURCE

    return {**params, ARGS_SOURCE: "the MLflow run's params"} if params else None
