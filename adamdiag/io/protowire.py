"""The protobuf wire format walked by hand, for readers that need a few fields of a message without its generated
code (TensorFlow's tensor-bundle index, wandb's run records) — and as the reference beside a protobuf-runtime fast
path. Errors are :class:`ValueError` (a varint or a length that runs past the message, an unknown wire type).

>>> list(fields(b"\\x08\\x96\\x01\\x12\\x02hi"))
[(1, 0, 150), (2, 2, b'hi')]
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any


def varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the base-128 varint at ``pos``."""
    out = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if not b & 0x80:
            return out, pos
        shift += 7


def fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a serialized message: ints for varint and fixed fields (a double is
    :func:`as_double` of its fixed64), bytes for length-delimited ones; groups (wire types 3/4, proto2's) are
    skipped. Field number 0 is invalid, as protobuf's own parsers hold."""
    pos, n = 0, len(buf)
    while pos < n:
        num, wt, val, pos = _field(buf, pos)
        if wt == 4:
            raise ValueError("end group outside a group")
        if wt != 3:
            yield num, wt, val


def _field(buf: bytes, pos: int) -> tuple[int, int, Any, int]:
    """(field number, wire type, value, next position) of the field at ``pos``; a group (wire type 3) is skipped
    whole (value None), an end-group tag (4) is returned for the group that reads it."""
    n = len(buf)
    key, pos = varint(buf, pos)
    num, wt = key >> 3, key & 7
    val: Any = None
    if num == 0:
        raise ValueError("field number 0")
    if wt == 0:
        val, pos = varint(buf, pos)
    elif wt == 1:
        if pos + 8 > n:
            raise ValueError("fixed64 runs past the message")
        (val,), pos = struct.unpack_from("<Q", buf, pos), pos + 8
    elif wt == 2:
        ln, pos = varint(buf, pos)
        if pos + ln > n:
            raise ValueError("length runs past the message")
        val, pos = bytes(buf[pos : pos + ln]), pos + ln
    elif wt == 3:
        pos = _skip_group(buf, pos, num)
    elif wt == 5:
        if pos + 4 > n:
            raise ValueError("fixed32 runs past the message")
        (val,), pos = struct.unpack_from("<I", buf, pos), pos + 4
    elif wt != 4:
        raise ValueError(f"unsupported wire type {wt}")
    return num, wt, val, pos


def _skip_group(buf: bytes, pos: int, num: int) -> int:
    """The position after the end-group tag of group ``num`` whose start-group tag ends at ``pos``."""
    while pos < len(buf):
        inner, wt, _, pos = _field(buf, pos)
        if wt == 4:
            if inner != num:
                raise ValueError("end group of another field")
            return pos
    raise ValueError("a group without its end")


def as_double(fixed64: int) -> float:
    """A ``double`` field's value from the int :func:`fields` yields for it."""
    return float(struct.unpack("<d", struct.pack("<Q", fixed64))[0])


def as_signed(v: int) -> int:
    """An ``int64``/``int32`` field's value (negative ones are 10-byte varints of their two's complement)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def as_zigzag(v: int) -> int:
    """A ``sint64``/``sint32`` field's value."""
    return (v >> 1) ^ -(v & 1)
