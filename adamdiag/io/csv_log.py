"""Lightning's ``CSVLogger`` log (``lightning_logs/version_N/metrics.csv``) as a log: PyTorch Lightning logs there when
it is told to, and by default when neither tensorboard nor tensorboardX is installed. Fabric's CSVLogger writes
the same file.

The file is one row per ``log_metrics`` call: a ``step`` column (the trainer's ``global_step``, as the
TensorBoardLogger uses it) and one column per metric name, empty where a call did not log it. Read into the same
columns as an event file (:class:`adamdiag.io.events.FileData`), each metric a tag of its own name at that step —
what the TensorBoardLogger would have written for the same calls.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "metrics.csv"
>>> _ = p.write_text("epoch,step,train_loss_step\\n,0,\\n0,4,1.5\\n0,9,nan\\n")
>>> d = read_metrics_csv(p)
>>> d.tags, d.s_step[0].tolist(), d.s_value[0].tolist()
(['epoch', 'train_loss_step'], [4, 4, 9, 9], [0.0, 1.5, 0.0, nan])
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

from adamdiag.errors import InputError

if TYPE_CHECKING:
    from adamdiag.io.events import FileData

# A metrics.csv of 10^6 rows is ~100 MB; far larger is not one.
MAX_BYTES = 1 << 31


def has_step_column(path: Path) -> bool:
    """Whether ``path`` starts like a CSVLogger file: a header line with a ``step`` column."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:  # -sig: a BOM is no part of "step"
            head = f.readline()
    except OSError:
        return False
    return "step" in next(csv.reader([head]), [])


def read_metrics_csv(path: Path | str) -> FileData:
    """One metrics.csv as event-file columns. Raises :class:`InputError` (one line) when the file cannot be
    read or has no ``step`` column."""
    from adamdiag.io.events import CSV_VERSION
    from adamdiag.io.framework_logs import LogRows, csv_rows, read_log_file

    path = Path(path)
    raw, size, mtime = read_log_file(path, MAX_BYTES, "metrics.csv")
    reader = csv.reader(io.StringIO(raw.decode("utf-8-sig", errors="replace"), newline=""))
    header = next(reader, None)
    if not header or "step" not in header:
        raise InputError(f"{path}: no 'step' column in its header: not a Lightning CSVLogger metrics.csv")
    at = header.index("step")
    rows = LogRows()
    records = 0
    for row in csv_rows(reader, rows.skipped):
        if not row:
            continue
        records += 1
        if len(row) != len(header):  # a row cut short by a crash mid-write: what it holds is not trusted
            rows.skipped["truncated rows"] += 1
            continue
        try:
            step = int(float(row[at]))
        except ValueError:
            rows.skipped["rows without a step"] += 1
            continue
        for i, cell in enumerate(row):
            if i == at or cell == "":
                continue
            try:
                rows.add(header[i], step, float(cell))
            except ValueError:
                rows.skipped["non-numeric cells"] += 1
    cut = rows.skipped["truncated rows"]
    warnings = [f"{path}: {cut} row(s) with a wrong number of cells skipped (a write cut short?)"] if cut else []
    if not rows.codes:
        warnings.append(f"{path}: no logged value after its header (the run stopped before its first log?)")
    return rows.file_data(
        path,
        size,
        mtime,
        version=CSV_VERSION,
        kind="metrics_csv",
        records=records,
        warnings=warnings,
        note=describe(path),
    )


def describe(path: Path | str) -> str:
    """The note scan prints for a run read from a metrics.csv."""
    return (
        f"read from Lightning's CSVLogger file {Path(path).name} (each metric at the trainer's global_step, as its "
        "TensorBoardLogger would log it); no TensorBoard event files in this run"
    )
