"""OpenMMLab's mmcv 1.x json log (``work_dir/<timestamp>.log.json``, its ``TextLoggerHook``: mmdetection 2.x,
mmsegmentation 0.x, mmpose 0.x and the other codebases of the runner before mmengine) as a log, for work_dirs without
TensorBoard events (``TensorboardLoggerHook`` is opt-in there; its ``tf_logs/`` events are read as such).

The file is one JSON object per logging interval: the run's ``meta`` first (``seed``, ``exp_name``, ``env_info``,
``config``: no ``mode``, not a record), then ``{"mode": "train", "epoch": e, "iter": i, "lr": ..., "loss": ...,
"grad_norm": ...}`` — each value the mean over the interval (``log_buffer.average``), every float rounded to 5
decimals — and a validation's ``{"mode": "val", "epoch": e, "iter": n, <metrics>}``. Under the ``EpochBasedRunner``
(the default) ``iter`` counts within the epoch from 1: the global iteration, what the optimizer's step counts (and
what the checkpoints' ``meta.iter`` and the TensorBoard hook's steps are), is ``(e - 1) * N + i`` with N the
iterations per epoch — read from the text log beside it (``<timestamp>.log``: ``Epoch [e][i/N]``), else taken as the
largest ``iter`` logged in an epoch (approximate: the last partial interval of an epoch is not logged). Under the
``IterBasedRunner`` (``Iter [i/N]`` in the text log) ``iter`` is already global. Validation metrics go under
``validation/`` at the end of their epoch. A resumed run writes new files in the same work_dir: one run, its files in
their timestamps' order.

>>> to_step(2, 10, 40), to_step(1, 10, None)
(50, 10)
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adamdiag.io.events import FileData

SUFFIX = ".log.json"
MAX_BYTES = 1 << 31
SNIFF_BYTES = 1 << 20  # the meta line holds the whole config: the first record can be far in
EVAL_PREFIX = "validation/"
POSITION_KEYS = ("mode", "epoch", "iter")
# mmcv's TextLoggerHook rounds every float to this many decimals (_round_float)
ROUNDED_DECIMALS = 5
_EPOCH_LINE = re.compile(r"Epoch \[\d+\]\[\d+/(\d+)\]")
_ITER_LINE = re.compile(r"\bIter \[\d+/\d+\]")


def to_step(epoch: int, inner_iter: int, per_epoch: int | None) -> int:
    """The global iteration of a by-epoch record (``per_epoch`` known), else ``inner_iter`` as it is (global)."""
    return inner_iter if per_epoch is None else (epoch - 1) * per_epoch + inner_iter


def _record(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and obj.get("mode") in ("train", "val")
        and all(_is_int(obj.get(k)) for k in ("epoch", "iter"))
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_mmcv_log(path: Path) -> bool:
    """Whether ``path`` is a TextLoggerHook json log: named ``*.log.json``, and among its first lines (after the
    meta line) one record with ``mode``, ``epoch`` and ``iter`` (never a FIFO; at most SNIFF_BYTES read)."""
    from adamdiag.io.framework_logs import file_head

    head = file_head(path, SNIFF_BYTES) if path.name.endswith(SUFFIX) else None
    if head is None:
        return False
    for line in head.decode("utf-8", errors="replace").splitlines()[:3]:
        try:
            if _record(json.loads(line)):
                return True
        except ValueError:
            continue
    return False


def iterations_per_epoch(json_log: Path) -> tuple[int | None, str]:
    """(N, how it is known) from the text log beside a json log (``<timestamp>.log``): ``Epoch [e][i/N]`` gives N,
    ``Iter [i/N]`` says the runner is iteration-based (None: ``iter`` is global); (None, "") without one."""
    from adamdiag.io.framework_logs import file_head

    text_log = json_log.with_name(json_log.name[: -len(".json")])
    raw = file_head(text_log, SNIFF_BYTES)
    if raw is None:
        return None, ""
    head = raw.decode("utf-8", errors="replace")
    m = _EPOCH_LINE.search(head)
    if m:
        return int(m.group(1)), f"'Epoch [e][i/{m.group(1)}]' in {text_log.name}"
    if _ITER_LINE.search(head):
        return None, f"'Iter [i/N]' in {text_log.name} (an IterBasedRunner: iter is global)"
    return None, ""


CONFIG_KEY = "mmcv_config"  # the writer arguments' key of the config text the meta line holds
_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"


def _block(text: str, name: str) -> str | None:
    """The text of a top-level ``name = dict(...)`` of an mmcv config's pretty text: from its line to the next line
    that starts a statement."""
    m = re.search(rf"^{name}\s*=\s*dict\(", text, re.M)
    if m is None:
        return None
    rest = text[m.end() :]
    nxt = re.search(r"\n\S", rest)  # the next line that starts at the margin
    return rest[: nxt.start()] if nxt else rest


def config_optimizer(text: str) -> dict[str, Any] | None:
    r"""What an mmcv config's pretty text (the json log's meta line, as mmdet 2.x writes it) says of the optimizer:
    ``type``, ``beta2``, ``eps`` (those given) and ``clip`` (``optimizer_config.grad_clip.max_norm``); None without an
    ``optimizer = dict(...)``.

    >>> config_optimizer("optimizer = dict(\n    type='AdamW', lr=0.0001, betas=(0.9, 0.95), weight_decay=0.05)\n"
    ...                  "optimizer_config = dict(grad_clip=dict(max_norm=35, norm_type=2))\n")
    {'type': 'AdamW', 'beta2': 0.95, 'clip': 35.0}
    """
    block = _block(text, "optimizer")
    if block is None:
        return None
    out: dict[str, Any] = {}
    m = re.search(r"\btype\s*=\s*['\"]([\w.]+)['\"]", block)
    if m:
        out["type"] = m.group(1)
    m = re.search(rf"\bbetas\s*=\s*[(\[]\s*{_NUMBER}\s*,\s*{_NUMBER}\s*[)\]]", block)
    if m:
        out["beta2"] = float(m.group(2))
    m = re.search(rf"\beps\s*=\s*{_NUMBER}", block)
    if m:
        out["eps"] = float(m.group(1))
    hook = _block(text, "optimizer_config") or ""
    m = re.search(rf"grad_clip\s*=\s*dict\([^)]*\bmax_norm\s*=\s*{_NUMBER}", hook)
    if m:
        out["clip"] = float(m.group(1))
    return out


def _numbers(key: str, value: Any, out: list[tuple[str, float]]) -> int:
    """The numeric leaves of a value (a dict one level: lr of several optimizers), and how many were not numbers."""
    if isinstance(value, dict):
        return sum(_numbers(f"{key}/{k}", v, out) for k, v in value.items())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 1
    out.append((key, float(value)))
    return 0


def read_mmcv_log(path: Path | str) -> FileData:
    """One ``*.log.json`` as event-file columns, on the global iteration (see the module doc). A line that is no
    JSON object is skipped with a warning, the meta line silently, a last line still being written left out."""
    from adamdiag.io.events import ARGS_SOURCE, MMCV_VERSION
    from adamdiag.io.framework_logs import empty_log_warning, read_line_log

    path = Path(path)
    records: list[dict[str, Any]] = []
    config: list[str] = []

    def add(line: str, rows: Any) -> bool:
        try:
            obj = json.loads(line)
        except ValueError:
            return False
        if _record(obj):
            records.append(obj)
        elif isinstance(obj, dict) and isinstance(obj.get("config"), str) and not config:
            config.append(obj["config"])  # the meta line: mmdet 2.x puts the config's pretty text there
        return isinstance(obj, dict)  # the meta line is no record, but no damage either

    # (the rows are added below, once the epoch length is known: the empty-log warning comes after them)
    log = read_line_log(path, MAX_BYTES, "mmcv json log", add, "JSON object", say_empty=False)
    rows, warnings = log.rows, log.warnings
    per_epoch, how = iterations_per_epoch(path)
    notes: list[str] = []
    warning_notes: list[str] = []
    train = [r for r in records if r["mode"] == "train"]
    by_epoch = not how.startswith("'Iter") if how else _iter_resets(train)
    if by_epoch and per_epoch is None and train:
        per_epoch = max(int(r["iter"]) for r in train)
        warning_notes.append(
            f"{path.name}: no text log beside it to read the iterations per epoch from: taken as {per_epoch}, the "
            "largest iter logged in an epoch (mmcv does not log an epoch's last partial interval, so the global "
            "steps can run short by up to one logging interval per epoch)"
        )
    elif by_epoch and per_epoch is not None:
        notes.append(f"{path.name}: {per_epoch} iterations per epoch, from {how}")
    smallest = math.inf
    skipped = 0
    for r in records:
        epoch, it = int(r["epoch"]), int(r["iter"])
        if r["mode"] == "train":
            step, prefix = to_step(epoch, it, per_epoch if by_epoch else None), ""
        else:  # a validation: at the end of its epoch (by epoch), else where it was logged
            step, prefix = (epoch * per_epoch if by_epoch and per_epoch else it), EVAL_PREFIX
        values: list[tuple[str, float]] = []
        for key, value in r.items():
            if key not in POSITION_KEYS:
                skipped += _numbers(key, value, values)
        for key, value in values:
            rows.add(prefix + key, step, value)
            if "loss" in key and value > 0 and not prefix:
                smallest = min(smallest, value)
    if skipped:
        rows.skipped["non-numeric values"] += skipped
    if smallest < 10 ** (2 - ROUNDED_DECIMALS):
        warning_notes.append(
            f"{path.name}: mmcv rounds every logged value to {ROUNDED_DECIMALS} decimals, and this run's loss goes "
            f"down to {smallest:g}: its small values have lost their digits (a loss under 5e-6 reads as 0)"
        )
    warnings += empty_log_warning(path, rows)
    data = rows.file_data(
        path,
        log.size,
        log.mtime,
        version=MMCV_VERSION,
        kind="mmcv",
        records=log.records,
        warnings=warnings,
        note=(
            f"read from mmcv's TextLoggerHook json log {path.name} (each value the mean of its logging interval, "
            "rounded to 5 decimals, at the global iteration; validation metrics under validation/); no TensorBoard "
            "event files in this run"
        ),
        arguments={CONFIG_KEY: config[0], ARGS_SOURCE: f"the config in {path.name}'s meta line"} if config else None,
    )
    data.notes += notes
    data.warning_notes += warning_notes
    return data


def _iter_resets(train: list[dict[str, Any]]) -> bool:
    """Whether ``iter`` starts again when ``epoch`` moves on (a by-epoch log) — True when it cannot be told."""
    for a, b in zip(train, train[1:]):
        if int(b["epoch"]) > int(a["epoch"]):
            return int(b["iter"]) <= int(a["iter"])
    return True


def log_files(folder: Path) -> list[Path]:
    """A work_dir's json logs in the order they were started (their names are the run's start timestamps)."""
    try:
        return sorted(p for p in folder.iterdir() if p.name.endswith(SUFFIX) and is_mmcv_log(p))
    except OSError:
        return []
