"""Sacred's ``FileStorageObserver`` run folders (``<basedir>/<run id>/metrics.json`` beside ``run.json`` and
``config.json``: what ``_run.log_scalar(name, value, step)`` records — PyMARL and other research code log their loss and
gradient norm this way) as a log.

``metrics.json`` is one JSON object, rewritten whole at every flush: ``{name: {"steps": [...], "values": [...],
"timestamps": [ISO times]}}``; a ``log_scalar`` without a step counts that metric's calls from 0. NaN and ±Infinity
are written as JSON's extensions and read back as such.

>>> import json, tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "run.json").write_text("{}"); _ = (d / "config.json").write_text("{}")
>>> m = {"loss": {"steps": [1, 2], "values": [0.5, 0.25], "timestamps": ["2024-01-01T00:00:00.1", "2024-01-01T00:00:01"]}}
>>> _ = (d / "metrics.json").write_text(json.dumps(m, indent=2))
>>> data = read_sacred_metrics(d / "metrics.json")
>>> data.tags, data.s_step[0].tolist(), data.s_value[0].tolist()
(['loss'], [1, 2], [0.5, 0.25])
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adamdiag.io.events import FileData

METRICS_JSON = "metrics.json"
SIBLINGS = ("run.json", "config.json")  # what FileStorageObserver writes beside it
MAX_BYTES = 1 << 31
SNIFF_BYTES = 4096


def is_sacred_metrics(path: Path) -> bool:
    """Whether ``path`` is a Sacred FileStorageObserver ``metrics.json``: ``run.json`` and ``config.json`` beside it
    and its start holding a metric's ``"steps"`` (only that is read; never a FIFO)."""
    from adamdiag.io.framework_logs import file_head

    if path.name != METRICS_JSON or not all((path.parent / s).is_file() for s in SIBLINGS):
        return False
    head = file_head(path, SNIFF_BYTES)
    return head is not None and head.lstrip().startswith(b"{") and b'"steps"' in head


def _wall(text: Any) -> float:
    """An ISO timestamp as seconds since the epoch (Sacred writes UTC without a zone); NaN when it is not one."""
    try:
        t = datetime.fromisoformat(str(text))
    except ValueError:
        return math.nan
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def read_sacred_metrics(path: Path | str) -> FileData:
    """One Sacred ``metrics.json`` as event-file columns. A metric whose steps and values differ in length, or a
    value that is no number, is skipped (counted, the first named in a warning); a file cut short (a flush the run
    did not finish) is one line."""
    from adamdiag.errors import InputError
    from adamdiag.io.events import SACRED_VERSION
    from adamdiag.io.framework_logs import LogRows, read_log_file

    path = Path(path)
    raw, size, mtime = read_log_file(path, MAX_BYTES, "Sacred metrics.json")
    try:
        doc = json.loads(raw.decode("utf-8", errors="replace"))
    except ValueError as e:
        raise InputError(f"{path}: not valid JSON ({e}): a Sacred metrics.json cut short or damaged") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: not a Sacred metrics.json (a JSON {type(doc).__name__}, not an object)")
    rows = LogRows()
    warnings: list[str] = []
    for name, series in doc.items():
        steps = series.get("steps") if isinstance(series, dict) else None
        values = series.get("values") if isinstance(series, dict) else None
        if not isinstance(steps, list) or not isinstance(values, list) or len(steps) != len(values):
            rows.skipped["metrics that are no steps/values lists of one length"] += 1
            warnings.append(f"{path}: metric '{name}' has no steps and values of one length; skipped")
            continue
        stamps = series.get("timestamps")
        stamps = stamps if isinstance(stamps, list) and len(stamps) == len(steps) else [None] * len(steps)
        for step, value, stamp in zip(steps, values, stamps):
            ok_step = isinstance(step, (int, float)) and not isinstance(step, bool) and math.isfinite(step)
            if not ok_step or isinstance(value, bool) or not isinstance(value, (int, float)):
                rows.skipped["non-numeric values"] += 1
                continue
            rows.add(str(name), int(step), float(value), _wall(stamp))
    if not rows.codes:
        warnings.append(f"{path}: no logged value (the run stopped before its first log_scalar?)")
    return rows.file_data(
        path,
        size,
        mtime,
        version=SACRED_VERSION,
        kind="sacred",
        records=len(rows.codes),
        warnings=warnings,
        note=(
            f"read from Sacred's FileStorageObserver file {path.name} (each value at the step log_scalar was given, "
            "else at its count of that metric's calls from 0); no TensorBoard event files in this run"
        ),
    )
