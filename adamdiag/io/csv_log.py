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
from collections import Counter
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
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            head = f.readline()
    except OSError:
        return False
    return "step" in next(csv.reader([head]), [])


def read_metrics_csv(path: Path | str) -> FileData:
    """One metrics.csv as event-file columns. Raises :class:`InputError` (one line) when the file cannot be
    read or has no ``step`` column."""
    import numpy as np

    from adamdiag.io.checkpoints import non_regular
    from adamdiag.io.events import CSV_VERSION, FileData

    path = Path(path)
    kind = non_regular(path)
    if kind is not None:
        raise InputError(f"{path}: a {kind}, not a file (not opened)")
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise InputError(f"{path}: {size} bytes, too large for a metrics.csv (not read)")
        text = path.read_bytes().decode("utf-8", errors="replace")
        mtime = path.stat().st_mtime
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror or e})") from None
    rows = csv.reader(io.StringIO(text, newline=""))
    header = next(rows, None)
    if not header or "step" not in header:
        raise InputError(f"{path}: no 'step' column in its header: not a Lightning CSVLogger metrics.csv")
    at = header.index("step")
    tags = [h for i, h in enumerate(header) if i != at]
    col_code = {i: k for k, i in enumerate(i for i in range(len(header)) if i != at)}
    t_rows: list[int] = []
    s_rows: list[int] = []
    v_rows: list[float] = []
    skipped: Counter = Counter()
    records = 0
    for row in rows:
        if not row:
            continue
        records += 1
        if len(row) != len(header):  # a row cut short by a crash mid-write: what it holds is not trusted
            skipped["truncated rows"] += 1
            continue
        try:
            step = int(float(row[at]))
        except ValueError:
            skipped["rows without a step"] += 1
            continue
        for i, cell in enumerate(row):
            if i == at or cell == "":
                continue
            try:
                value = float(cell)
            except ValueError:
                skipped["non-numeric cells"] += 1
                continue
            t_rows.append(col_code[i])
            s_rows.append(step)
            v_rows.append(value)
    n = len(t_rows)
    warnings = []
    if skipped["truncated rows"]:
        warnings.append(
            f"{path}: {skipped['truncated rows']} row(s) with a wrong number of cells skipped (a write cut short?)"
        )
    return FileData(
        path=str(path),
        size=size,
        tags=tags,
        s_tag=[np.asarray(t_rows, np.int32)],
        s_step=[np.asarray(s_rows, np.int64)],
        # the file stores no times: every point gets the time the file was written
        s_wall=[np.full(n, mtime, np.float64)],
        s_value=[np.asarray(v_rows, np.float64)],
        h_rows=[],
        warnings=warnings,
        skipped=skipped,
        records=records,
        file_version=CSV_VERSION,
        first_wall_time=mtime if n else float("inf"),
        kinds={"metrics_csv"} if n else set(),
        readable=True,
        grouped=True,
    )


def describe(path: Path | str) -> str:
    """The note scan prints for a run read from a metrics.csv."""
    return (
        f"read from Lightning's CSVLogger file {Path(path).name} (each metric at the trainer's global_step, as its "
        "TensorBoardLogger would log it); no TensorBoard event files in this run"
    )
