"""Detectron2's ``metrics.json`` (``output_dir/metrics.json``, its ``JSONWriter``: detectron2, detrex, ViTDet,
Mask2Former and the other projects built on its trainer) as a log, for runs whose TensorBoard events
(``TensorboardXWriter``, the same values beside it) are gone.

The file is one JSON object per write: ``{"iteration": i, "total_loss": ..., "loss_cls": ..., "lr": ...,
"data_time": ...}``; ``iteration`` is the trainer's 0-based iteration, the step the event files carry. Detectron2's
writers put every loss as the **median of its last 20 iterations** (``window_size=20``; what
:func:`adamdiag.analysis.median_logs.median_window` recognises, rule AD606), every 20 iterations by default; an
evaluation's metrics (``bbox/AP``) share the line of their iteration.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "metrics.json"
>>> _ = p.write_text('{"iteration": 19, "total_loss": 2.5, "lr": 0.01, "data_time": 0.1}\\n')
>>> d = read_metrics_json(p)
>>> d.tags, d.s_step[0].tolist()
(['total_loss', 'lr', 'data_time'], [19, 19, 19])
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adamdiag.io.events import FileData

METRICS_JSON = "metrics.json"  # DefaultTrainer.build_writers: JSONWriter(os.path.join(output_dir, "metrics.json"))
POSITION_KEY = "iteration"
MAX_BYTES = 1 << 31


def _is_position(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_metrics_json(path: Path) -> bool:
    """Whether ``path`` is a Detectron2 JSONWriter file: named ``metrics.json``, its first line a JSON object with
    a numeric ``iteration`` (only that line is read: DVCLive's metrics.json, one indented object, is not one)."""
    from adamdiag.io.mmengine_log import first_json_object

    if path.name != METRICS_JSON:
        return False
    first = first_json_object(path)
    return first is not None and _is_position(first.get(POSITION_KEY))


def read_metrics_json(path: Path | str) -> FileData:
    """One metrics.json as event-file columns. A line that is no JSON object with a numeric ``iteration`` is skipped
    with a warning, a last line still being written left out (:func:`adamdiag.io.framework_logs.read_line_log`);
    non-numeric values are skipped (counted)."""
    from adamdiag.io.events import DETECTRON2_VERSION
    from adamdiag.io.framework_logs import json_line_adder, read_line_log

    path = Path(path)
    add = json_line_adder(POSITION_KEY)
    log = read_line_log(path, MAX_BYTES, "Detectron2 metrics.json", add, "JSON object with an iteration")
    rows, size, mtime, records, warnings = log.rows, log.size, log.mtime, log.records, log.warnings
    return rows.file_data(
        path,
        size,
        mtime,
        version=DETECTRON2_VERSION,
        kind="detectron2",
        records=records,
        warnings=warnings,
        note=(
            f"read from Detectron2's JSONWriter file {path.name} (each value at its 0-based iteration, as its "
            "TensorBoard writer puts it); no TensorBoard event files in this run"
        ),
    )
