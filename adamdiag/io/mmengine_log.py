"""OpenMMLab's ``mmengine`` log (``work_dir/<timestamp>/vis_data/scalars.json``, what its default ``LocalVisBackend``
writes: mmdetection, mmsegmentation, mmpretrain... ) as a log, for runs that logged no TensorBoard events (its
``TensorboardVisBackend`` writes the same values as event files, read as such).

The file is one JSON object per ``add_scalars`` call: a training iteration's logged values (``LoggerHook`` every
``interval`` iterations: ``loss``, ``lr``, ``grad_norm`` with ``clip_grad``, ``time``...) with its ``epoch``, ``iter``
and ``step`` = the iteration count (what the optimizer's ``step`` counts too), or a validation's metrics at ``step`` =
its epoch (by-epoch training) — those lines carry no ``iter`` and are read under ``validation/`` (an evaluation
split) so that their ``time`` is not a training point. mmengine logs the mean of each value over the last ``window_size`` iterations
(``LogProcessor``, 10 by default): a point is an interval mean, as HF's and Lightning's logged losses are.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "scalars.json"
>>> _ = p.write_text('{"lr": 0.1, "loss": 2.5, "epoch": 1, "iter": 5, "step": 5}\\n{"acc/top1": 70.0, "step": 1}\\n')
>>> d = read_scalars_json(p)
>>> d.tags, d.s_step[0].tolist()
(['lr', 'loss', 'epoch', 'iter', 'validation/acc/top1'], [5, 5, 5, 5, 1])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adamdiag.io.events import FileData

SCALARS_JSON = "scalars.json"  # LocalVisBackend's file name (its ``scalar_save_file``)
MAX_BYTES = 1 << 31
# the key of a line that says where it is (``epoch`` and ``iter`` are tags too, as the TensorBoard backend writes them)
POSITION_KEYS = ("step",)
EVAL_PREFIX = "validation/"  # an evaluation split, as io.events.split_of knows them


def first_json_object(path: Path) -> dict[str, Any] | None:
    """The first line of a JSON-lines log as an object (None: not one, a FIFO, unreadable); only that line is read."""
    from adamdiag.io.framework_logs import first_line

    line = first_line(path)
    if line is None:
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def is_scalars_json(path: Path) -> bool:
    """Whether ``path`` is a LocalVisBackend file: named ``scalars.json``, its first line a JSON object with a
    numeric ``step`` (only that line is read)."""
    if path.name != SCALARS_JSON:
        return False
    first = first_json_object(path)
    step = first.get("step") if first else None
    return isinstance(step, (int, float)) and not isinstance(step, bool)


def _prefix(obj: dict[str, Any]) -> str:
    return "" if "iter" in obj else EVAL_PREFIX  # a validation's line: its metrics at the epoch


def read_scalars_json(path: Path | str) -> FileData:
    """One scalars.json as event-file columns. A line that is no JSON object with a numeric ``step`` is skipped with
    a warning, a last line still being written left out (:func:`adamdiag.io.framework_logs.read_line_log`);
    non-numeric values are skipped (counted)."""
    from adamdiag.io.events import MMENGINE_VERSION
    from adamdiag.io.framework_logs import json_line_adder, read_line_log

    path = Path(path)
    add = json_line_adder(POSITION_KEYS[0], _prefix)
    log = read_line_log(path, MAX_BYTES, "mmengine scalars.json", add, "JSON object with a step")
    rows, size, mtime, records, warnings = log.rows, log.size, log.mtime, log.records, log.warnings
    return rows.file_data(
        path,
        size,
        mtime,
        version=MMENGINE_VERSION,
        kind="mmengine",
        records=records,
        warnings=warnings,
        note=(
            f"read from mmengine's LocalVisBackend file {path.name} (each value at the iteration it was logged, the mean "
            "over LogProcessor's window_size iterations; validation metrics under validation/ at their epoch); no "
            "TensorBoard event files in this run"
        ),
    )
