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
from dataclasses import dataclass
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
FINISHED_FILE_STORE = "3"  # meta.yaml's status: RunStatus.FINISHED


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
    from adamdiag.io.framework_logs import LogRows, complete_text, metric_files

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
        for line in complete_text(text, f, warnings).splitlines():
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
    params = file_store_params(meta)
    records = len(rows.codes)
    keras = keras_callback_rows(rows, params, finished=info.get("status") == FINISHED_FILE_STORE)
    data = (keras.rows if keras else rows).file_data(
        meta,
        size,
        mtime,
        version=MLFLOW_VERSION,
        kind="mlflow",
        records=records,
        warnings=warnings,
        note=f"read from the MLflow run {name!r} (file store {run})" + (f"; {keras.note}" if keras else ""),
        arguments=_with_source(params),
    )
    if keras:
        data.running_means = keras.running_means
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
        status = con.execute("select status from runs where run_uuid = ?", (uuid,)).fetchone()
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
    keras = keras_callback_rows(rows, params, finished=bool(status) and status[0] == "FINISHED")
    data = (keras.rows if keras else rows).file_data(
        path,
        st.st_size,
        st.st_mtime,
        version=MLFLOW_VERSION,
        kind="mlflow",
        records=len(rows_sql),
        warnings=warnings,
        note=f"read from the MLflow run {name!r} ({uuid}) in the database {db}" + (f"; {keras.note}" if keras else ""),
        arguments=_with_source(params),
    )
    if keras:
        data.running_means = keras.running_means
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


# --------------------------------------------------------------------------------------------
# MLflow's Keras callback (``mlflow.tensorflow.autolog()``, ``mlflow.keras.MlflowCallback``): its rows as Keras'
# own TensorBoard callback writes the same values, so the run reads as a Keras run (rule AD603).
#
# The callback logs ``optimizer.get_config()`` as ``opt_<key>`` params, then Keras' ``logs`` dict under Keras'
# names: per epoch (the default) at step = the epoch index, or every n batches (``log_every_n_steps``) at step =
# ``optimizer.iterations``; the two are exclusive. Its batch values are the epoch's *running means* (what Keras
# hands callbacks), not the batch's loss. ``on_test_end`` logs ``validation_<key>`` with no step (all at 0), one per
# evaluation: at each epoch's end during fit.

# The prefix of the optimizer's config in the params: ``opt_`` (mlflow.tensorflow's callback and autolog) or
# ``optimizer_`` (mlflow.keras', Keras 3's flavour); keys every Keras optimizer config has, and keys only Keras'
# configs have (Keras 3 / tf.keras 2 / its legacy optimizers)
KERAS_PARAM_PREFIXES = ("opt_", "optimizer_")
KERAS_OPT_KEYS = ("name", "learning_rate")
# Keras' own config keys, all present in every config of its kind: the EMA options of Keras 3's / tf.keras' 2.11+
# optimizers, or the full config of tf.keras' legacy Adam (a flattened user config may have a "decay" or two)
KERAS_SIGNATURES = (
    ("use_ema", "ema_momentum", "ema_overwrite_frequency"),
    ("decay", "beta_1", "beta_2", "epsilon", "amsgrad"),
)
VALIDATION_PREFIX = "validation_"  # MlflowCallback.on_test_end's prefix


def keras_optimizer_config(params: dict[str, Any]) -> dict[str, Any] | None:
    """The Keras optimizer's config MLflow's Keras callback logged as params (prefix taken off), else None.

    >>> ema = {"opt_use_ema": False, "opt_ema_momentum": 0.99, "opt_ema_overwrite_frequency": None}
    >>> keras_optimizer_config({"opt_name": "adam", "opt_learning_rate": 0.01, **ema, "epochs": 3})["name"]
    'adam'
    >>> keras_optimizer_config({"optimizer_name": "adamw", "optimizer_learning_rate": 0.01, "optimizer_decay": 0.1})

    """
    for p in KERAS_PARAM_PREFIXES:
        if all(p + k in params for k in KERAS_OPT_KEYS) and any(
            all(p + k in params for k in sig) for sig in KERAS_SIGNATURES
        ):
            return {k[len(p) :]: v for k, v in params.items() if k.startswith(p)}
    return None


def is_keras_callback_run(params: dict[str, Any]) -> bool:
    """Whether an MLflow run's params are those MLflow's Keras callback logs (the optimizer's config)."""
    return keras_optimizer_config(params) is not None


def _int_param(params: dict[str, Any], key: str, default: int | None) -> int | None:
    v = params.get(key, default)
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else default


def _database_run(run: Path) -> tuple[Any, Path, str] | None:
    """(an open read-only connection, the database, the run's id) of a database run path (:func:`sqlite_runs`);
    None when it is none, or its database cannot be read (the caller closes the connection)."""
    import sqlite3

    split = split_run_path(run)
    if split is None:
        return None
    db, prefix = split
    try:
        con = _connect(db)
    except InputError:
        return None
    try:
        return con, db, _run_uuid(con, db, prefix)[0]
    except (sqlite3.Error, InputError):
        con.close()
        return None


def keras_callback_mode(run: Path) -> str | None:
    """How MLflow's Keras callback logged the run ``run`` (a file-store run folder or a database run path):
    ``"batch"`` (``log_every_n_steps``: its ``loss`` starts at an iteration count) or ``"epoch"`` (at the epoch
    index ``initial_epoch``); None when its params are not the callback's or it logged no ``loss``. Reads the
    params and the first ``loss`` point only."""
    import sqlite3

    first: int | None = None
    if (run / META).is_file():
        params = file_store_params(run / META)
        loss = run / METRICS / "loss"
        if not is_keras_callback_run(params) or not loss.is_file():
            return None
        try:
            with open(loss, encoding="utf-8", errors="replace") as f:
                got = parse_metric_line(f.readline())
        except OSError:
            return None
        first = got[2] if got is not None else None
    else:
        opened = _database_run(run)
        if opened is None:
            return None
        con, _, uuid = opened
        try:
            params = _sqlite_params(con, uuid)
            order = "rowid" if _has_rowid(con) else "timestamp, step"
            row = con.execute(
                f"select step from metrics where run_uuid = ? and key = 'loss' order by {order} limit 1", (uuid,)
            ).fetchone()
        except sqlite3.Error:
            return None
        finally:
            con.close()
        if not is_keras_callback_run(params):
            return None
        first = int(row[0] or 0) if row is not None else None
    if first is None:
        return None
    return "epoch" if first == (_int_param(params, "initial_epoch", 0) or 0) else "batch"


def artifacts_dir(run: Path) -> Path | None:
    """The local folder of an MLflow run's artifacts: ``<run>/artifacts`` of a file-store run; for a database run
    MLflow's default ``<database folder>/mlruns/<experiment id>/<run id>/artifacts`` when it exists, else its
    ``artifact_uri`` when that is a local folder. None when there is none here (a remote store)."""
    import sqlite3
    from urllib.parse import unquote, urlparse

    if (run / META).is_file():
        return run / "artifacts" if (run / "artifacts").is_dir() else None
    opened = _database_run(run)
    if opened is None:
        return None
    con, db, uuid = opened
    try:
        row = con.execute("select artifact_uri, experiment_id from runs where run_uuid = ?", (uuid,)).fetchone()
    except sqlite3.Error:
        return None
    finally:
        con.close()
    if row is None:
        return None
    uri, exp = row
    # beside the database first: a store moved or copied with its mlruns/ still records the old absolute path,
    # which may hold the original's artifacts
    cands = [db.parent / "mlruns" / str(exp) / str(uuid) / "artifacts"]
    if uri:
        u = urlparse(str(uri))
        if u.scheme in ("", "file"):
            cands.append(db.parent / unquote(u.path))  # a relative path is relative to where MLflow ran: guessed
    return next((c for c in cands if c.is_dir()), None)


@dataclass
class KerasRows:
    """:func:`keras_callback_rows`' result: the renamed rows (a :class:`LogRows`), a note saying so, and the
    running-mean tags with the number of finished epochs when the log tells it (None: not known)."""

    rows: Any
    note: str
    running_means: dict[str, int | None]


def keras_callback_rows(rows: Any, params: dict[str, Any], *, finished: bool) -> KerasRows | None:
    """A Keras callback run's rows (:class:`LogRows`, in logging order) under the names and steps Keras'
    TensorBoard callback gives the same values — ``loss`` logged per batch as ``batch_loss`` at the iteration,
    per epoch as ``epoch_loss`` at the epoch index, ``validation_loss`` as ``validation/epoch_loss`` at its
    epoch — with the batch tags declared running means. None for any other run.

    Which a key is: the epoch series start at the epoch index ``initial_epoch`` (param, 0 by default); a batch
    series starts at an iteration count, never equal to it (≥ 1 past ``initial_epoch`` whole epochs). The number
    of finished epochs (to check the epoch boundaries the per-batch losses are rebuilt with): one validation per
    epoch (``validation_freq`` 1), else ``epochs - initial_epoch`` of a run that finished without early stopping.
    """
    from adamdiag.io.framework_logs import LogRows

    if not rows.codes or not is_keras_callback_run(params):
        return None
    initial = _int_param(params, "initial_epoch", 0) or 0
    first: dict[int, int] = {}
    for code, step in zip(rows.codes, rows.steps):
        first.setdefault(code, step)
    out = LogRows()
    seen: dict[int, int] = {}  # points of each validation key so far: the k-th is epoch initial + k
    batch_tags: set[str] = set()
    val_counts: dict[str, int] = {}
    for code, step, value, wall in zip(rows.codes, rows.steps, rows.values, rows.walls):
        key = rows.tags[code]
        if key.startswith(VALIDATION_PREFIX) and first[code] == 0:
            k = seen.get(code, 0)
            seen[code] = k + 1
            base = key[len(VALIDATION_PREFIX) :]
            val_counts[base] = k + 1
            out.add(f"validation/epoch_{base}", initial + k if step == 0 else step, value, wall)
        elif first[code] == initial:
            out.add(f"epoch_{key}", step, value, wall)
        else:
            batch_tags.add(f"batch_{key}")
            out.add(f"batch_{key}", step, value, wall)
    out.skipped = rows.skipped
    epochs: int | None = None
    if val_counts and _int_param(params, "validation_freq", 1) == 1:
        epochs = max(val_counts.values())
    elif finished and not any(k in params for k in ("patience", "min_delta")):  # autolog logs EarlyStopping's
        total = _int_param(params, "epochs", None)
        epochs = total - initial if total is not None and total > initial else None
    how = "per batch (log_every_n_steps)" if batch_tags else "per epoch"
    note = (
        f"written by MLflow's Keras callback (autolog / MlflowCallback), {how}: read as Keras' TensorBoard callback "
        "writes the same values (loss -> batch_loss at the optimizer iteration / epoch_loss at the epoch index, "
        "validation_loss -> validation/epoch_loss)"
    )
    return KerasRows(out, note, {t: epochs for t in sorted(batch_tags)})
