"""Weights & Biases run files (``wandb/run-<date>-<id>/run-<id>.wandb``, also ``offline-run-…``) as a log: what
wandb writes locally for every run, online or offline, and the only log of a run that logged nowhere else.

The file is wandb's "leveldb log" datastore: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then 32 KiB
blocks of chunks, each ``crc32 (LE u32) · length (LE u16) · type (u8) · data``, where the CRC-32 (zlib's) covers
the type byte and the data, and a record longer than a block's room is cut into FIRST/MIDDLE/LAST chunks. Every
record is a protobuf ``wandb_internal.Record``; adamdiag reads five of its kinds and needs neither wandb nor its
generated code (the few fields are declared below, at runtime):

- ``history`` — one row per ``wandb.log`` call: items ``key`` (or ``nested_key``, a path) with a JSON value,
  wandb's own counter ``_step`` and the row's ``_timestamp``;
- ``metric`` — ``define_metric``: a ``step_metric`` names the row key that is the x axis (Lightning's
  WandbLogger declares ``trainer/global_step`` for ``*``, HF Trainer ``train/global_step``); where one applies,
  a value is logged at that key's value in its row, else at ``_step`` — the axis wandb's UI draws;
- ``config`` (and the run record's config) — the run's configuration (HF Trainer puts its TrainingArguments there:
  adam_epsilon, adam_beta2, max_grad_norm), read like the Trainer's ``args`` text summary;
- ``tbrecord`` — ``sync_tensorboard``: the history copies TensorBoard event files; scan reads the events instead
  when they are among the runs it found;
- ``exit`` — the run ended (no exit record: still running, or killed).

Without a declared axis, a step counter the rows carry (``global_step``, ``step``, ...) is the axis when ``_step``
ran ahead of it (:func:`_row_counter`); wandb's Keras callback WandbMetricsLogger is read under Keras' TensorBoard
callback's names and axis (:func:`_add_keras`).

Two decoders of the records, tested against each other on every fixture: the protobuf runtime with the fields
declared here (:func:`read_wandb`), and a plain wire-format walk (``fast=False``).

>>> from adamdiag.io.wandb_log import is_wandb_file
>>> is_wandb_file("wandb/run-20240101_120000-abc123/run-abc123.wandb"), is_wandb_file("x.wandb.gz")
(True, False)
"""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamdiag.errors import InputError
from adamdiag.io.protowire import as_double, as_signed, as_zigzag, fields

if TYPE_CHECKING:
    from adamdiag.io.events import FileData

HEADER = b":W&B"
MAGIC = 0xBEE1
VERSION = 0
BLOCK = 32768
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
# A run's file of 10^6 logged rows is ~0.5 GB; far larger is not one.
MAX_BYTES = 1 << 33
# wandb's own row keys: its step counter, wall clock and run time (not metrics)
STEP_KEY, TIME_KEY, RUNTIME_KEY = "_step", "_timestamp", "_runtime"
# the row key that holds a TensorBoard event's step, in a run that syncs TensorBoard (sync_tensorboard=True)
TB_SYNC_STEP = "global_step"
# run-<id>.wandb, the name wandb gives every run's datastore
_FILE_NAME = re.compile(r"run-[A-Za-z0-9_-]+\.wandb$")
# the folder wandb makes per run: [offline-]run-<YYYYmmdd_HHMMSS>-<id>
RUN_DIR = re.compile(r"(?:offline-)?run-\d{8}_\d{6}-(?P<id>[A-Za-z0-9_-]+)$")


def is_wandb_file(path: str | Path) -> bool:
    """Whether ``path`` is named as wandb names a run's datastore (``run-<id>.wandb``)."""
    return bool(_FILE_NAME.match(Path(path).name))


def run_id(folder: str | Path) -> str | None:
    """The run id of a wandb run folder's name (``run-20240101_120000-abc123`` → ``abc123``), else None."""
    m = RUN_DIR.match(Path(folder).name)
    return m.group("id") if m else None


# --------------------------------------------------------------------------------------------
# Framing: the leveldb-log chunks into records.


@dataclass
class Framing:
    """The records of one file, and what was wrong on the way."""

    records: list[bytes] = field(default_factory=list)
    bad_chunks: int = 0  # CRC mismatch or an impossible length/type: read on from the next valid chunk
    first_bad_at: int | None = None
    cut_at: int | None = None  # the file ends inside a chunk or a record (a run still writing, or killed)
    kinds: Counter = field(default_factory=Counter)  # chunks read by type (FULL, FIRST, MIDDLE, LAST)


_KINDS = (FULL, FIRST, MIDDLE, LAST)


def _valid_chunk(raw: bytes, pos: int) -> bool:
    """Whether a whole chunk with a matching CRC starts at ``pos`` (and stays inside its block)."""
    if pos + CHUNK_HEADER > len(raw):
        return False
    crc, length, kind = struct.unpack_from("<IHB", raw, pos)
    end = pos + CHUNK_HEADER + length
    if kind not in _KINDS or length > BLOCK - pos % BLOCK - CHUNK_HEADER or end > len(raw):
        return False
    return zlib.crc32(raw[pos + CHUNK_HEADER : end], zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc


def _next_valid_chunk(raw: bytes, start: int) -> int | None:
    """The first offset at or after ``start`` where a valid chunk starts (after damage), else None."""
    for pos in range(start, len(raw) - CHUNK_HEADER + 1):
        if raw[pos + 6] in _KINDS and _valid_chunk(raw, pos):
            return pos
    return None


def frame(raw: bytes, path: str) -> Framing:
    """Split a datastore into its records. Raises :class:`InputError` when it does not start with wandb's header.

    >>> body = b"\\x08\\x01"
    >>> chunk = struct.pack("<IHB", zlib.crc32(body, zlib.crc32(bytes([FULL]))), len(body), FULL) + body
    >>> frame(HEADER + struct.pack("<HB", MAGIC, VERSION) + chunk, "f").records
    [b'\\x08\\x01']
    """
    if len(raw) < CHUNK_HEADER:
        if HEADER.startswith(raw[: len(HEADER)]):
            return Framing(cut_at=0 if raw else None)
        raise InputError(f"{path}: not a wandb run file (no ':W&B' header)")
    ident, (magic, version) = raw[:4], struct.unpack("<HB", raw[4:7])
    if ident != HEADER or magic != MAGIC:
        raise InputError(f"{path}: not a wandb run file (no ':W&B' header)")
    if version != VERSION:
        raise InputError(f"{path}: wandb datastore version {version}, this reader knows version {VERSION}")
    out = Framing()
    pos, n = CHUNK_HEADER, len(raw)
    pending: list[bytes] | None = None
    while pos < n:
        room = BLOCK - pos % BLOCK
        if room < CHUNK_HEADER:  # a block's zero trailer
            pos += room
            continue
        if pos + CHUNK_HEADER > n:
            out.cut_at = pos
            break
        crc, length, kind = struct.unpack_from("<IHB", raw, pos)
        if kind == 0 and length == 0 and crc == 0:  # zero padding to the block's end
            pos += room
            continue
        if not _valid_chunk(raw, pos):
            nxt = _next_valid_chunk(raw, pos + 1)
            if nxt is None and pos + CHUNK_HEADER + length > n and kind in _KINDS and length <= room - CHUNK_HEADER:
                out.cut_at = pos  # a chunk the file ends inside, and nothing valid after it: a cut, not damage
                break
            out.bad_chunks += 1
            out.first_bad_at = pos if out.first_bad_at is None else out.first_bad_at
            pending = None  # a record whose chunk is lost is lost whole
            if nxt is None:
                break
            pos = nxt  # the next chunk whose CRC holds (leveldb's reader skips the block; this loses less)
            continue
        end = pos + CHUNK_HEADER + length
        data = raw[pos + CHUNK_HEADER : end]
        out.kinds[kind] += 1
        pos = end
        if kind == FULL:
            pending = None
            out.records.append(data)
        elif kind == FIRST:
            pending = [data]
        elif pending is not None:  # MIDDLE or LAST of a record whose FIRST was read
            pending.append(data)
            if kind == LAST:
                out.records.append(b"".join(pending))
                pending = None
    if pending is not None and out.cut_at is None:
        out.cut_at = n
    return out


# --------------------------------------------------------------------------------------------
# Decoding: the record kinds adamdiag uses, as plain tuples (one shape for both decoders).
#
#   ("history", step or None, [(key, value), ...])   value: a JSON text (str) or a number (float)
#   ("config", [(key, JSON text), ...])
#   ("metric", name, glob_name, step_metric)
#   ("tb", log_dir)
#   ("exit", exit_code)

Decoded = tuple[Any, ...]

# Record's fields (wandb_internal.proto): num 1, history 2, config 5, tbrecord 9, metric 12, run 17, exit 18.
_HISTORY, _CONFIG, _TB, _METRIC, _RUN, _EXIT = 2, 5, 9, 12, 17, 18
_RUN_CONFIG = 4  # RunRecord.config, a ConfigRecord


def _key(item_key: str, nested: list[str]) -> str:
    """wandb keeps a logged dict's path in ``nested_key`` (``{"a": {"b": 1}}`` → ["a", "b"]); its UI shows it
    dotted, as here. A plain key comes as ``key`` or as a one-element ``nested_key``."""
    return ".".join(nested) if nested else item_key


@lru_cache(maxsize=1)
def _message_classes() -> dict[str, Any]:
    """The protobuf classes of the few wandb_internal messages read, declared here field by field (wandb's
    generated code is not needed; fields not declared are skipped by the parser)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fd = descriptor_pb2.FileDescriptorProto(name="adamdiag_wandb_subset.proto", package="adamdiag_wandb")
    F = descriptor_pb2.FieldDescriptorProto
    spec: dict[str, list[tuple[str, int, int, str | None, bool]]] = {
        # name, number, type, message type, repeated
        "Record": [
            ("history", _HISTORY, F.TYPE_MESSAGE, "HistoryRecord", False),
            ("config", _CONFIG, F.TYPE_MESSAGE, "ConfigRecord", False),
            ("tbrecord", _TB, F.TYPE_MESSAGE, "TBRecord", False),
            ("metric", _METRIC, F.TYPE_MESSAGE, "MetricRecord", False),
            ("run", _RUN, F.TYPE_MESSAGE, "RunRecord", False),
            ("exit", _EXIT, F.TYPE_MESSAGE, "RunExitRecord", False),
        ],
        "HistoryRecord": [
            ("item", 1, F.TYPE_MESSAGE, "HistoryItem", True),
            ("step", 2, F.TYPE_MESSAGE, "HistoryStep", False),
        ],
        "HistoryItem": [
            ("key", 1, F.TYPE_STRING, None, False),
            ("nested_key", 2, F.TYPE_STRING, None, True),
            ("integer", 5, F.TYPE_SINT64, None, False),
            ("number", 6, F.TYPE_DOUBLE, None, False),
            ("value_json", 16, F.TYPE_STRING, None, False),
        ],
        "HistoryStep": [("num", 1, F.TYPE_INT64, None, False)],
        "ConfigRecord": [("update", 1, F.TYPE_MESSAGE, "ConfigItem", True)],
        "ConfigItem": [
            ("key", 1, F.TYPE_STRING, None, False),
            ("nested_key", 2, F.TYPE_STRING, None, True),
            ("value_json", 16, F.TYPE_STRING, None, False),
        ],
        "MetricRecord": [
            ("name", 1, F.TYPE_STRING, None, False),
            ("glob_name", 2, F.TYPE_STRING, None, False),
            ("step_metric", 4, F.TYPE_STRING, None, False),
        ],
        "TBRecord": [("log_dir", 1, F.TYPE_STRING, None, False)],
        "RunRecord": [("config", _RUN_CONFIG, F.TYPE_MESSAGE, "ConfigRecord", False)],
        "RunExitRecord": [("exit_code", 1, F.TYPE_INT32, None, False)],
    }
    for name, members in spec.items():
        m = fd.message_type.add(name=name)
        for fname, number, ftype, msg, repeated in members:
            f = m.field.add(name=fname, number=number, type=ftype)
            f.label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
            if msg:
                f.type_name = f".adamdiag_wandb.{msg}"
    fd.syntax = "proto3"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    get = getattr(message_factory, "GetMessageClass", None)
    if get is None:  # protobuf < 4.22
        factory = message_factory.MessageFactory(pool)
        get = factory.GetPrototype
    return {name: get(pool.FindMessageTypeByName(f"adamdiag_wandb.{name}")) for name in spec}


# Record kinds never read (summary 3, output 4, files 6, stats 7, artifact 8, alert 10, telemetry 11, output_raw 13,
# environment 26 ...): every one but those read. About half of a run file's records are summaries (one per row).
_READ_KINDS = frozenset({_HISTORY, _CONFIG, _TB, _METRIC, _RUN, _EXIT})


def _other_kind(data: bytes) -> bool:
    """Whether a record is of a kind not read, told from its first bytes: protobuf writers put a message's fields
    in field-number order, so after ``num`` (field 1) comes the record's one kind (fields 2-27, 100). Anything
    else — another order, a damaged start — is not skipped (the record is parsed)."""
    pos = 0
    if data[:1] == b"\x08":  # num: a varint
        pos = 1
        while pos < len(data) and data[pos] & 0x80:
            pos += 1
        pos += 1
    if pos >= len(data):
        return False
    tag = data[pos]
    if tag & 0x80:  # a field number above 15: a two-byte tag (request 100, ... ): parse
        return False
    num, wire = tag >> 3, tag & 7
    return wire == 2 and 2 <= num <= 15 and num not in _READ_KINDS


def _records_read(framing: Framing) -> list[bytes]:
    """The records of the kinds read, the others left out from their first bytes — before either decoder parses,
    so that both see the same records."""
    return [r for r in framing.records if not _other_kind(r)]


def _decode_fast(records: list[bytes]) -> tuple[list[Decoded], int]:
    """The records with the protobuf runtime; and how many could not be parsed."""
    from google.protobuf.message import DecodeError

    Record = _message_classes()["Record"]
    out: list[Decoded] = []
    bad = 0
    for data in records:
        rec = Record()
        try:
            rec.ParseFromString(data)
        except (DecodeError, RuntimeError, ValueError):
            bad += 1
            continue
        if rec.HasField("history"):
            h = rec.history
            items: list[tuple[str, Any]] = []
            for it in h.item:
                k = _key(it.key, list(it.nested_key))
                if it.value_json:
                    items.append((k, it.value_json))
                elif it.number:
                    items.append((k, float(it.number)))
                elif it.integer:
                    items.append((k, float(it.integer)))
                else:
                    items.append((k, "0"))  # proto3 drops a zero: no value is 0 (a typed 0 or an empty JSON)
            out.append(("history", h.step.num if h.HasField("step") else None, items))
        elif rec.HasField("config") or rec.HasField("run"):
            cfg = rec.config if rec.HasField("config") else rec.run.config
            out.append(("config", [(_key(u.key, list(u.nested_key)), u.value_json) for u in cfg.update]))
        elif rec.HasField("metric"):
            m = rec.metric
            out.append(("metric", m.name, m.glob_name, m.step_metric))
        elif rec.HasField("tbrecord"):
            out.append(("tb", rec.tbrecord.log_dir))
        elif rec.HasField("exit"):
            out.append(("exit", rec.exit.exit_code))
    return out, bad


# -- the reference decoder: the protobuf wire format walked by hand (adamdiag.io.protowire) ----


def _text(v: Any) -> str:
    if not isinstance(v, bytes):
        raise ValueError("a string field of another wire type")
    return v.decode("utf-8")


# The wire type of each field declared in _message_classes (0 varint, 1 fixed64, 2 length-delimited): a field of
# another wire type is an unknown field to the protobuf runtime, and so to the reference.
_WIRE = {
    "Record": {_HISTORY: 2, _CONFIG: 2, _TB: 2, _METRIC: 2, _RUN: 2, _EXIT: 2},
    "HistoryRecord": {1: 2, 2: 2},
    "HistoryItem": {1: 2, 2: 2, 5: 0, 6: 1, 16: 2},
    "HistoryStep": {1: 0},
    "ConfigRecord": {1: 2},
    "ConfigItem": {1: 2, 2: 2, 16: 2},
    "MetricRecord": {1: 2, 2: 2, 4: 2},
    "TBRecord": {1: 2},
    "RunRecord": {_RUN_CONFIG: 2},
    "RunExitRecord": {1: 0},
}


def _walk(b: bytes, message: str) -> list[tuple[int, Any]]:
    """(field number, value) of the declared fields of ``message``, in order (ValueError on damage)."""
    declared = _WIRE[message]
    return [(num, v) for num, wire, v in fields(b) if declared.get(num) == wire]


def _ref_item(b: bytes, message: str = "HistoryItem") -> tuple[str, Any]:
    key, nested, value_json, number, integer = "", [], "", 0.0, 0
    for num, v in _walk(b, message):
        if num == 1:
            key = _text(v)
        elif num == 2:
            nested.append(_text(v))
        elif num == 16:
            value_json = _text(v)
        elif num == 6:
            number = as_double(v)
        elif num == 5:
            integer = as_zigzag(v)
    k = _key(key, nested)
    if value_json:
        return k, value_json
    if number:
        return k, float(number)
    if integer:
        return k, float(integer)
    return k, "0"


def _ref_config(b: bytes) -> list[tuple[str, str]]:
    out = []
    for _, v in _walk(b, "ConfigRecord"):
        k, value = _ref_item(v, "ConfigItem")
        out.append((k, value if isinstance(value, str) else ""))
    return out


def _ref_record(b: bytes) -> Decoded | None:
    """The record kinds read, by the fast decoder's priority (a record holds one; damage may make more)."""
    top: dict[int, bytes] = {}
    for num, v in _walk(b, "Record"):
        top[num] = top.get(num, b"") + v  # a message field given twice is merged, as protobuf does: concatenated
    if _HISTORY in top:
        items, step = [], None
        for n2, v2 in _walk(top[_HISTORY], "HistoryRecord"):
            if n2 == 1:
                items.append(_ref_item(v2))
            else:
                step = 0
                for _, v3 in _walk(v2, "HistoryStep"):
                    step = as_signed(v3)
        return ("history", step, items)
    if _CONFIG in top:
        return ("config", _ref_config(top[_CONFIG]))
    if _RUN in top:
        cfg = [c for _, c in _walk(top[_RUN], "RunRecord")]
        return ("config", _ref_config(cfg[-1]) if cfg else [])
    if _METRIC in top:
        got = {n2: _text(v2) for n2, v2 in _walk(top[_METRIC], "MetricRecord")}
        return ("metric", got.get(1, ""), got.get(2, ""), got.get(4, ""))
    if _TB in top:
        got = {n2: _text(v2) for n2, v2 in _walk(top[_TB], "TBRecord")}
        return ("tb", got.get(1, ""))
    if _EXIT in top:
        code = 0
        for _, v2 in _walk(top[_EXIT], "RunExitRecord"):
            code = as_signed(v2)
        return ("exit", code)
    return None


def _decode_ref(records: list[bytes]) -> tuple[list[Decoded], int]:
    out: list[Decoded] = []
    bad = 0
    for data in records:
        try:
            d = _ref_record(data)
        except (ValueError, UnicodeDecodeError):  # UnicodeDecodeError is a ValueError: named for the reader
            bad += 1
            continue
        if d is not None:
            out.append(d)
    return out, bad


# --------------------------------------------------------------------------------------------
# Assembly: the decoded records as a log.


def scalar(value: Any) -> float | dict[str, Any] | None:
    """A history value as a number (JSON numbers, ``NaN``, ``Infinity``), a dict (a nested object), or None
    (text, booleans, lists, null).

    >>> scalar("1.5"), scalar("NaN"), scalar("-Infinity"), scalar('"text"'), scalar("true"), scalar(2.0)
    (1.5, nan, -inf, None, None, 2.0)
    """
    if isinstance(value, float):
        return value
    try:
        return float(value)  # JSON numbers and wandb's NaN / Infinity / -Infinity
    except ValueError:
        pass
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    if isinstance(doc, dict):
        return doc
    if isinstance(doc, (int, float)) and not isinstance(doc, bool):
        return float(doc)
    return None


@dataclass
class StepAxis:
    """Which row key is the x axis of which metric (``define_metric``): exact names, then globs."""

    by_name: dict[str, str] = field(default_factory=dict)
    by_glob: list[tuple[str, str]] = field(default_factory=list)
    axes: set[str] = field(default_factory=set)  # every step metric named
    keras_batch_steps: list[int] = field(default_factory=list)  # WandbMetricsLogger's batch_step per logged row
    _memo: dict[str, str | None] = field(default_factory=dict)  # key -> its axis (rows repeat their keys)

    def add(self, name: str, glob: str, step_metric: str) -> None:
        if not step_metric:
            return
        if name:
            self.by_name[name] = step_metric
        elif glob:
            self.by_glob.append((glob, step_metric))
        else:
            return
        self.axes.add(step_metric)
        self._memo.clear()

    @property
    def keras_metrics_logger(self) -> bool:
        """Whether wandb's Keras callback WandbMetricsLogger declared these axes."""
        return ("batch/*", KERAS_BATCH_AXIS) in self.by_glob or ("epoch/*", KERAS_EPOCH_AXIS) in self.by_glob

    def of(self, key: str) -> str | None:
        if key in self._memo:
            return self._memo[key]
        import fnmatch

        got = self.by_name.get(key)
        if got is None:
            # the latest declaration wins, as in wandb
            got = next((m for g, m in reversed(self.by_glob) if fnmatch.fnmatchcase(key, g)), None)
        self._memo[key] = got
        return got


@dataclass
class WandbRun:
    """What adamdiag takes from one run file."""

    rows: Any  # LogRows
    config: dict[str, Any]
    axes: set[str]  # the step metrics define_metric declared
    tb_log_dirs: list[str]
    exit_code: int | None
    records: int
    histories: int
    warnings: list[str]
    notes: list[str] = field(default_factory=list)  # how the rows were put on the steps (AD901 info)
    row_counter: str | None = None  # the step counter the rows carry, used as the x axis (see _row_counter)


def _flatten(prefix: str, doc: dict[str, Any], out: list[tuple[str, float]]) -> None:
    for k, v in doc.items():
        if isinstance(v, dict):
            if "_type" not in v:  # a wandb media object (histogram, image, table) is no metric
                _flatten(f"{prefix}.{k}", v, out)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append((f"{prefix}.{k}", float(v)))


def assemble(decoded: list[Decoded], path: str) -> WandbRun:
    """The rows of a run: each metric at its declared step metric's value in its row (``define_metric``), else
    at wandb's ``_step``; wandb's own keys and the step metrics are no tags."""
    import numpy as np

    from adamdiag.io.framework_logs import LogRows

    axis = StepAxis()
    notes = []
    counter = _row_counter(decoded)
    if counter is not None:
        key, ahead = counter
        axis.add("", "*", key)
        notes.append(
            f"x axis: the '{key}' each wandb.log row carries (wandb's own _step counts the log calls and ends "
            f"{ahead} ahead of it: other rows were logged between the training steps)"
        )
    config: dict[str, Any] = {}
    rows = LogRows()
    tb_dirs: list[str] = []
    exit_code: int | None = None
    last_axis_value: dict[str, int] = {}
    histories = 0
    for d in decoded:
        kind = d[0]
        if kind == "metric":
            axis.add(d[1], d[2], d[3])
        elif kind == "config":
            for k, v in d[1]:
                try:
                    config[k] = json.loads(v) if v else None
                except ValueError:
                    config[k] = v
        elif kind == "tb":
            # sync_tensorboard: each row copies an event's values, and its key global_step the event's step
            tb_dirs.append(d[1])
            if not axis.by_glob:
                axis.add("", "*", TB_SYNC_STEP)
        elif kind == "exit":
            exit_code = d[1]
        elif kind == "history":
            histories += 1
            _add_row(d[1], d[2], axis, rows, last_axis_value)
    config.pop("_wandb", None)
    gaps = set(np.diff(axis.keras_batch_steps).tolist()) if len(axis.keras_batch_steps) > 1 else set()
    if max(gaps, default=1) > 1:
        notes.append(
            f"wandb's WandbMetricsLogger logged every {max(gaps)} batches (log_freq > 1): its batch_step adds "
            f"{max(gaps)} per logged batch and drifts from the optimizer iteration by up to {max(gaps) - 1} at "
            "each epoch end: the batch steps are approximate"
        )
    declared = axis.axes - ({counter[0]} if counter is not None else set())  # what define_metric named
    return WandbRun(
        rows, config, declared, tb_dirs, exit_code, len(decoded), histories, [], notes, counter[0] if counter else None
    )


def _row_counter(decoded: list[Decoded]) -> tuple[str, int] | None:
    """A step counter the rows carry (``wandb.log({"loss": l, "global_step": s})``, no ``step=``), when wandb's
    _step has run ahead of it — eval rows or other calls between training steps each add one to _step, so a
    metric on _step drifts off the optimizer step. (counter key, how far _step ends ahead), when the run declares
    no axis (define_metric, sync_tensorboard) and a counter (adamdiag.io.events.STEP_COUNTER_TAGS) sits in at least
    two rows, never decreasing; None otherwise."""
    from adamdiag.io.events import STEP_COUNTER_TAGS

    if any(d[0] in ("metric", "tb") for d in decoded):
        return None
    wanted = set(STEP_COUNTER_TAGS)
    found: dict[str, list[tuple[int, int]]] = {k: [] for k in STEP_COUNTER_TAGS}  # (_step, counter) per key
    for d in decoded:
        if d[0] != "history":
            continue
        counters = [(k, scalar(v)) for k, v in d[2] if k in wanted]
        if not counters:
            continue
        own = d[1]
        if own is None:
            s = next((scalar(v) for k, v in d[2] if k == STEP_KEY), None)
            own = int(s) if isinstance(s, float) and math.isfinite(s) else None
        for k, c in counters:
            if own is not None and isinstance(c, float) and math.isfinite(c):
                found[k].append((int(own), int(c)))
    for key in STEP_COUNTER_TAGS:
        pairs = found[key]
        if len(pairs) < 2 or any(b[1] < a[1] for a, b in zip(pairs, pairs[1:])):
            continue
        ahead = pairs[-1][0] - pairs[-1][1]
        if any(s != c for s, c in pairs) and ahead > 0:
            return key, ahead
    return None


# wandb.Histogram's JSON: ``{"_type": "histogram", "values": counts, "bins": edges}`` (or ``packedBins``: {min,
# size, count}). wandb.watch logs one per parameter and logging step: ``gradients/<name>`` (``log="gradients"``, the
# default) and ``parameters/<name>``. wandb ≥ 0.2x stores it as one history item per leaf (nested_key
# [key, "_type"], [key, "values"], ...), older versions as one item holding the JSON object.
HISTOGRAM_TYPE = "histogram"
_TYPE_LEAF = "._type"


def histogram_moments(doc: dict[str, Any]) -> tuple[float, float, float, float, float] | None:
    """(min, max, num, sum, sum_squares) of a ``wandb.Histogram``'s JSON, the sums from bucket centres
    (:func:`adamdiag.io.events.bucket_moments`); None when it is no readable histogram. wandb.watch leaves out a
    gradient's NaN/inf elements (and logs nothing when all are): its histograms never show non-finite values.

    >>> histogram_moments({"_type": "histogram", "values": [1, 3], "bins": [-1.0, 0.0, 1.0]})
    (-1.0, 1.0, 4.0, 1.0, 1.0)
    >>> histogram_moments({"_type": "histogram", "values": [2], "packedBins": {"min": 0.5, "size": 1.0, "count": 1}})
    (0.5, 1.5, 2.0, 2.0, 2.0)
    """
    from adamdiag.io.events import bucket_moments

    counts = doc.get("values")
    edges = doc.get("bins")
    packed = doc.get("packedBins")
    if isinstance(packed, dict) and isinstance(counts, list):
        try:
            lo, width, k = float(packed["min"]), float(packed["size"]), int(packed["count"])
        except (KeyError, TypeError, ValueError, OverflowError):
            return None
        if k != len(counts):  # (never build edges for a count the values do not have: a damaged one is huge)
            return None
        edges = [lo + width * i for i in range(k + 1)]
    if not isinstance(counts, list) or not isinstance(edges, list) or len(edges) != len(counts) + 1 or not counts:
        return None
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in [*counts, *edges]):
        return None
    if any(c < 0 for c in counts) or any(not b >= a for a, b in zip(edges, edges[1:])):
        return None  # negative counts, edges not in order (or NaN): no histogram wandb writes
    got = bucket_moments(edges[:-1], edges[1:], counts)
    return got if all(math.isfinite(x) for x in got) and got[2] > 0 else None


def _nested(doc: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        doc = doc.setdefault(part, {})
        if not isinstance(doc, dict):
            return
    doc[path[-1]] = value


def _histogram_items(items: list[tuple[str, Any]]) -> tuple[dict[str, dict[str, Any]], list[tuple[str, Any]]]:
    """The histograms a row holds as one item per leaf (key -> its JSON object), and the row's other items."""
    keys = [k[: -len(_TYPE_LEAF)] for k, raw in items if k.endswith(_TYPE_LEAF) and raw == f'"{HISTOGRAM_TYPE}"']
    if not keys:
        return {}, items
    docs: dict[str, dict[str, Any]] = {k: {} for k in keys}
    rest = []
    for k, raw in items:
        # the histogram a leaf belongs to: its key less one or two dotted parts ("values", "packedBins.min") — a
        # lookup, not a scan of the row's histograms (wandb.watch puts one per parameter in a row)
        owner = next((o for o in (k.rsplit(".", 1)[0], k.rsplit(".", 2)[0]) if o in docs and o != k), None)
        if owner is None:
            rest.append((k, raw))
            continue
        try:
            value = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            value = None
        _nested(docs[owner], k[len(owner) + 1 :].split("."), value)
    return docs, rest


def _add_row(
    step: int | None,
    items: list[tuple[str, Any]],
    axis: StepAxis,
    rows: Any,
    last_axis_value: dict[str, int],
) -> None:
    values: dict[str, float] = {}
    wall = math.nan
    histograms, items = _histogram_items(items)
    for key, raw in items:
        v = scalar(raw)
        if isinstance(v, dict) and v.get("_type") == HISTOGRAM_TYPE:
            histograms[key] = v
            continue
        if v is None:
            rows.skipped["non-numeric values"] += 1
        elif isinstance(v, dict):
            flat: list[tuple[str, float]] = []
            _flatten(key, v, flat)
            values.update(flat)
            if not flat:
                rows.skipped["media and other objects"] += 1
        else:
            values[key] = v
    if step is None and math.isfinite(values.get(STEP_KEY, math.nan)):
        step = int(values[STEP_KEY])
    wall = values.pop(TIME_KEY, wall)
    values.pop(STEP_KEY, None)
    values.pop(RUNTIME_KEY, None)
    for name in axis.axes:
        v = values.get(name)
        if v is not None and math.isfinite(v):
            last_axis_value[name] = int(v)
    own_step = 0 if step is None else step
    keras = axis.keras_metrics_logger
    if keras and KERAS_BATCH_AXIS in values and math.isfinite(values[KERAS_BATCH_AXIS]):
        axis.keras_batch_steps.append(int(values[KERAS_BATCH_AXIS]))
    for key, v in values.items():
        if key in axis.axes or (keras and key in (KERAS_BATCH_AXIS, KERAS_EPOCH_AXIS)):
            continue  # an x axis is no metric
        if keras and key.startswith(("batch/", "epoch/")):
            _add_keras(key, v, wall, values, rows, last_axis_value, own_step)
            continue
        rows.add(key, _step_of(key, axis, last_axis_value, own_step), v, wall)
    for key, doc in histograms.items():
        moments = histogram_moments(doc)
        if moments is None:
            rows.skipped["unreadable histograms"] += 1
            continue
        rows.histograms.append((key, _step_of(key, axis, last_axis_value, own_step), wall, *moments, True))


def _step_of(key: str, axis: StepAxis, last_axis_value: dict[str, int], own_step: int) -> int:
    """Where a row's value of ``key`` is drawn: its declared step metric's latest value, else the row's own step."""
    metric = axis.of(key)
    return last_axis_value.get(metric, own_step) if metric else own_step


# wandb's Keras callback WandbMetricsLogger: its define_metric axes (batch-wise: batch/* on batch/batch_step, a
# 0-based count of the batches; epoch-wise: epoch/* on epoch/epoch) — the signature the reader knows it by
KERAS_BATCH_AXIS, KERAS_EPOCH_AXIS = "batch/batch_step", "epoch/epoch"


def _add_keras(
    key: str, v: float, wall: float, values: dict[str, float], rows: Any, last: dict[str, int], own_step: int
) -> None:
    """A WandbMetricsLogger value as Keras' own TensorBoard callback writes it — ``batch/loss`` as ``batch_loss``
    at the optimizer iteration (batch_step + 1), ``epoch/loss`` as ``epoch_loss`` at the epoch index — so the
    run reads as a Keras run (its batch values are the epoch's running mean: rebuilt per batch before detection,
    rule AD603; Keras' Adam defaults)."""
    kind, name = key.split("/", 1)
    if kind == "batch":
        at = last.get(KERAS_BATCH_AXIS, own_step - 1) + 1
    else:
        epoch = values.get(KERAS_EPOCH_AXIS)
        at = int(epoch) if epoch is not None and math.isfinite(epoch) else own_step
    rows.add(f"{kind}_{name}", at, v, wall)


def first_folder_of_run(folder: Path) -> Path:
    """The first (oldest) folder of the wandb run ``folder`` belongs to: a resumed run (same id, started again)
    gets a folder per start, ``run-<date>-<id>``, and is one run here, named by its first folder."""
    rid = run_id(folder)
    if rid is None:
        return folder
    same = sorted((p for p in _run_folders(folder.parent) if run_id(p) == rid), key=_started)
    return same[0] if same else folder


def _run_folders(parent: Path) -> list[Path]:
    try:
        return [p for p in parent.iterdir() if p.name != "latest-run" and RUN_DIR.match(p.name) and p.is_dir()]
    except OSError:
        return []


def files_of_run(run: Path) -> list[Path]:
    """The run files of a wandb run folder, with those of the folders a resumed run added later (same id, by
    start time: the date in the folder's name); [] for a folder with no run file."""
    own = sorted(f for f in _listing(run) if is_wandb_file(f) and not f.is_dir())
    rid = run_id(run)
    if rid is None:
        return own
    later = sorted(p for p in _run_folders(run.parent) if run_id(p) == rid and _started(p) > _started(run))
    if not own and not later:
        return []
    return own + [f for p in later for f in sorted(_listing(p)) if is_wandb_file(f) and not f.is_dir()]


def _started(folder: Path) -> str:
    """``run-<YYYYmmdd_HHMMSS>-<id>``: sorts by start time, online and offline folders alike."""
    return folder.name.removeprefix("offline-")


def _listing(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def read_wandb(path: Path | str, *, fast: bool = True) -> FileData:
    """One ``run-<id>.wandb`` file as event-file columns. Raises :class:`InputError` (one line) when it cannot be
    read or is no wandb datastore; damage inside (a bad chunk, a cut end) is a warning."""
    from adamdiag.io.events import ARGS_SOURCE, WANDB_VERSION
    from adamdiag.io.framework_logs import read_log_file

    path = Path(path)
    raw, size, mtime = read_log_file(path, MAX_BYTES, "wandb run file")
    run = read_run_file(raw, str(path), fast=fast)
    data = run.rows.file_data(
        path,
        size,
        mtime,
        version=WANDB_VERSION,
        kind="wandb",
        records=run.records,
        warnings=run.warnings,
        note=describe(path, run.axes, run.row_counter),
        # wandb.config: HF Trainer's WandbCallback puts its TrainingArguments there
        arguments={**run.config, ARGS_SOURCE: f"the wandb config of {path.name}"} if run.config else None,
    )
    data.notes += run.notes
    return data


def read_run_file(raw: bytes, path: str, *, fast: bool = True) -> WandbRun:
    """The run in a datastore's bytes (see :func:`read_wandb`)."""
    framing = frame(raw, path)
    decoded, bad = (_decode_fast if fast else _decode_ref)(_records_read(framing))
    run = assemble(decoded, path)
    if framing.bad_chunks:
        run.warnings.append(
            f"{path}: {framing.bad_chunks} damaged chunk(s) (CRC or framing), the first at byte "
            f"{framing.first_bad_at}; the records they held are lost, reading went on at the next intact chunk"
        )
    if bad:
        run.warnings.append(f"{path}: {bad} record(s) that are no wandb record skipped")
    if framing.cut_at is not None:
        if run.exit_code is None:  # the words the event-file reader uses: scan calls it "in progress" (AD902 info)
            run.warnings.append(f"{path}: truncated record at byte {framing.cut_at} (the run is still writing it?)")
        else:
            run.warnings.append(f"{path}: ends inside a record at byte {framing.cut_at}, after the run's exit record")
    if not run.rows.codes:
        run.warnings.append(f"{path}: no logged value (the run stopped before its first wandb.log?)")
    return run


def describe(path: str | Path, axes: set[str] | None = None, row_counter: str | None = None) -> str:
    """The note scan prints for a run read from a wandb run file."""
    if axes and axes <= {KERAS_BATCH_AXIS, KERAS_EPOCH_AXIS}:
        axis = (
            "written by wandb's Keras WandbMetricsLogger: read as Keras' TensorBoard callback writes the same values "
            "— batch/<m> as batch_<m> at the optimizer iteration batch_step + 1, epoch/<m> as epoch_<m> at the epoch"
        )
    elif axes:
        axis = f"x axis {', '.join(sorted(axes))}, as define_metric set it"
    elif row_counter:
        axis = f"x axis {row_counter}, the step counter its rows carry"
    else:
        axis = "x axis wandb's _step"
    return f"read from the Weights & Biases run file {Path(path).name} ({axis}); no TensorBoard event files in this run"


def synced_tensorboard_dirs(path: Path | str) -> list[Path]:
    """The TensorBoard log folders a run file's history was copied from (``sync_tensorboard=True``); [] when
    it cannot be read or syncs none."""
    try:
        framing = frame(Path(path).read_bytes(), str(path))
    except (OSError, InputError):
        return []
    decoded, _ = _decode_fast(_records_read(framing))
    return [Path(d[1]) for d in decoded if d[0] == "tb" and d[1]]
