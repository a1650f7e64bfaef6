"""TFRecord framing, read directly.

A record is ``u64 length | u32 masked_crc32c(length bytes) | payload | u32 masked_crc32c(payload)``,
all little-endian. This module only finds payloads; it knows nothing about ``Event`` protos.

Damage policy (the reader must never crash and never be silent):

* a record cut short at the end of the file (a writer killed mid-write) -> the valid prefix is
  returned and one warning names the byte offset of the cut record;
* a header whose length-CRC does not verify -> a warning, then *resync*: scan forward for the next
  offset whose ``length`` + length-CRC verify and whose record fits in the file;
* a payload whose CRC does not verify -> that record is skipped (the header verified, so the framing
  after it is trustworthy), a warning, and a count.

:func:`read_records_ref` is the plain-loop reference; the fast vectorized reader in
:mod:`adamdiag.io.events` is tested against it.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import google_crc32c

if TYPE_CHECKING:  # numpy is imported where it is used
    import numpy as np

HEADER = 12  # u64 length + u32 masked crc of the length
FOOTER = 4  # u32 masked crc of the payload
_MASK_DELTA = 0xA282EAD8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_U64_U32 = struct.Struct("<QI")
_NONZERO = re.compile(rb"[^\x00]")


def masked_crc32c(data: bytes | memoryview) -> int:
    """TFRecord's masked CRC32C (rotate right by 15, add a constant) of ``data``."""
    crc = google_crc32c.value(bytes(data)) if isinstance(data, memoryview) else google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(payload: bytes) -> bytes:
    """One TFRecord around ``payload`` (used by tests and the benchmark's fixtures)."""
    head = _U64.pack(len(payload))
    return head + _U32.pack(masked_crc32c(head)) + payload + _U32.pack(masked_crc32c(payload))


@dataclass
class RecordScan:
    """Result of scanning one file: payload offsets/lengths plus what was wrong with it."""

    offsets: list[int] = field(default_factory=list)  # byte offset of each valid record's header
    lengths: list[int] = field(default_factory=list)  # payload length of each valid record
    warnings: list[str] = field(default_factory=list)
    bad_records: int = 0  # records skipped for a payload CRC mismatch
    resyncs: int = 0  # times the framing was lost and found again (or not)
    truncated_at: int | None = None  # offset of a record cut short by the end of the file
    unreadable_bytes: int = 0  # bytes skipped while resyncing


# The longest record a file's first header may announce and still be read as a TFRecord file (2 GiB).
MAX_FIRST_RECORD = 1 << 31


def starts_like_tfrecord(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) begins with a TFRecord length header: its masked CRC32C
    verifies and the length is at most MAX_FIRST_RECORD — what a TensorBoard event file starts with.

    >>> starts_like_tfrecord(frame(b"x")), starts_like_tfrecord(b"PK" + bytes(10))
    (True, False)
    """
    if len(head) < HEADER:
        return False
    length, crc = int.from_bytes(head[:8], "little"), int.from_bytes(head[8:12], "little")
    return masked_crc32c(head[:8]) == crc and length <= MAX_FIRST_RECORD


def header_ok(buf: bytes | memoryview, pos: int, end: int) -> bool:
    """True if a record header at ``pos`` verifies (length CRC) and the whole record fits before ``end``."""
    if pos + HEADER > end:
        return False
    length, crc = _U64_U32.unpack_from(buf, pos)
    if masked_crc32c(bytes(buf[pos : pos + 8])) != crc:
        return False
    return pos + HEADER + length + FOOTER <= end


def resync(buf: bytes, pos: int, end: int) -> int:
    """Smallest offset >= ``pos`` where a verifying header of a record that fits starts, else ``end``.

    A real record length is far below 2**32, so only offsets followed by four zero bytes (the high
    half of the u64 length) are CRC-checked; that keeps scanning garbage cheap without missing a
    real header. ``buf`` must support ``.find`` (bytes, bytearray, mmap).
    """
    while pos + HEADER <= end:
        z = buf.find(b"\x00\x00\x00\x00", pos + 4, end)
        if z < 0:
            return end
        cand = z - 4
        if header_ok(buf, cand, end):
            return cand
        if not any(buf[cand : cand + HEADER]):
            # A run of zero bytes (a preallocated or crash-zeroed tail: megabytes of them) makes every
            # offset a candidate, one CRC each in Python — minutes for 50 MB. None of them verifies:
            # the CRC of a zero length is not zero. The first header that could is the one ending on
            # the run's first nonzero byte.
            m = _NONZERO.search(buf, cand + HEADER, end)
            if m is None:
                return end
            pos = max(cand + 1, m.start() - HEADER + 1)
            continue
        pos = cand + 1
    return end


def read_records_ref(
    buf: bytes, *, check_crc: bool = True, name: str = "<bytes>", base: int = 0, start: int = 0
) -> RecordScan:
    """Plain-loop reference reader of a whole TFRecord file held in ``buf``.

    Returns every record whose framing (and, with ``check_crc``, both CRCs) verifies, in file order,
    scanning from ``start``. Offsets are positions in ``buf``; messages add ``base`` (where ``buf``
    starts in the file) so that they name true file offsets.
    """
    scan = RecordScan()
    end = len(buf)
    pos = start
    while pos < end:
        if pos + HEADER > end:
            scan.truncated_at = pos
            scan.warnings.append(
                f"{name}: truncated record at byte {base + pos} ({end - pos} trailing bytes, header incomplete); ignored"
            )
            break
        length, len_crc = _U64_U32.unpack_from(buf, pos)
        if check_crc and masked_crc32c(buf[pos : pos + 8]) != len_crc:
            nxt = resync(buf, pos + 1, end)
            scan.resyncs += 1
            scan.unreadable_bytes += nxt - pos
            if nxt >= end:
                scan.warnings.append(
                    f"{name}: corrupt record header at byte {base + pos}; no valid record after it "
                    f"({end - pos} bytes unreadable)"
                )
                break
            scan.warnings.append(
                f"{name}: corrupt record header at byte {base + pos}; skipped {nxt - pos} bytes to the next "
                f"valid record at byte {base + nxt}"
            )
            pos = nxt
            continue
        stop = pos + HEADER + length + FOOTER
        if stop > end:
            scan.truncated_at = pos
            scan.warnings.append(
                f"{name}: truncated record at byte {base + pos} (needs {stop - pos} bytes, {end - pos} left); ignored"
            )
            break
        if check_crc:
            (crc,) = _U32.unpack_from(buf, stop - FOOTER)
            if masked_crc32c(buf[pos + HEADER : stop - FOOTER]) != crc:
                scan.bad_records += 1
                scan.warnings.append(f"{name}: CRC mismatch in record at byte {base + pos}; record skipped")
                pos = stop
                continue
        scan.offsets.append(pos)
        scan.lengths.append(length)
        pos = stop
    return scan


def iter_payloads_ref(buf: bytes, *, check_crc: bool = True, name: str = "<bytes>") -> Iterator[tuple[int, bytes]]:
    """``(offset, payload)`` of every valid record (reference path; warnings are dropped)."""
    scan = read_records_ref(buf, check_crc=check_crc, name=name)
    for off, ln in zip(scan.offsets, scan.lengths):
        yield off, buf[off + HEADER : off + HEADER + ln]


# --------------------------------------------------------------------------------------------
# Fast path: vectorized framing and CRC checking (numpy), tested against read_records_ref.
#
# Finding record boundaries is inherently sequential (each length says where the next record
# starts), so a Python loop would cost ~0.3 us per record. Training logs are extremely regular,
# though: the same tags are written in the same order every step, so record lengths repeat with a
# short period. The walk *speculates* that the next records repeat the last period, computes all
# their offsets with one cumsum, reads all their lengths with one gather, and accepts the prefix
# where the prediction held. Every accepted offset is proven (record k's true length leads to
# record k+1), so speculation never changes the result, only the speed; irregular stretches fall
# back to a plain loop.
#
# CRCs are checked in bulk using linearity: with the raw CRC R (init 0, no final xor),
# R(m || le32(R(m))) == 0, and a concatenation of such codewords also has R == 0. Each stored masked
# CRC is turned into R of its data in place (unmask, then xor a constant that only depends on the
# data length), and a single C crc32c pass over all records must give 0. Any damage makes the check
# fail (a random error passes with probability 2**-32, as with a single CRC), and then the caller
# re-reads that part with the per-record reference reader to say exactly what is wrong.

_PERIOD_MAX = 64  # longest repeating pattern of record lengths looked for
_SPEC_MIN, _SPEC_MAX = 1024, 1 << 18  # records speculated per step (grows while it keeps working)
_K_TABLE: list[int] = []  # crc32c(zeros(L)) for small L, built on first use


def _zero_crc(length: int) -> int:
    """crc32c of ``length`` zero bytes: std_crc(m) xor this == raw CRC of m."""
    if length < len(_K_TABLE):
        return _K_TABLE[length]
    return google_crc32c.value(bytes(length))


def _zero_crc_table(size: int = 4096):
    import numpy as np

    if not _K_TABLE:
        crc = google_crc32c.value(b"")
        _K_TABLE.append(crc)
        for _ in range(1, size):
            crc = google_crc32c.extend(crc, b"\x00")
            _K_TABLE.append(crc)
    return np.asarray(_K_TABLE, np.uint32)


def _period(recent: list[int]) -> int:
    """Smallest p such that the last p lengths repeat the p before them (0 if none)."""
    n = len(recent)
    for p in range(1, min(_PERIOD_MAX, n // 2) + 1):
        if recent[n - p :] == recent[n - 2 * p : n - p]:
            return p
    return 0


@dataclass
class Walk:
    """Record offsets/payload lengths found in a buffer, and where/why the walk stopped."""

    offsets: np.ndarray  # int64, positions in the buffer
    lengths: np.ndarray  # int64
    stop: int  # first byte not consumed (start of an incomplete record, or of damage)
    damaged: bool  # True: stopped at a header whose CRC does not verify


def walk_records(buf: bytearray | bytes, n: int, *, check_crc: bool = True, seq_only: bool = False) -> Walk:
    """Offsets of the complete records at the start of ``buf[:n]``, back to back from 0.

    Stops at the first record that is incomplete within ``n`` bytes, or (with ``check_crc``) at a
    header whose length CRC fails in the plain-loop part. Payload CRCs and the headers accepted by
    speculation are *not* checked here: see :func:`verify_crcs`. ``seq_only`` disables speculation
    (the plain loop that the fast walk is tested against).
    """
    import numpy as np

    u64 = Views(buf).u64
    offs_parts: list = []
    lens_parts: list = []
    seq_offs: list[int] = []
    seq_lens: list[int] = []
    recent: list[int] = []
    pos = 0
    spec = _SPEC_MIN
    unpack = _U64_U32.unpack_from
    damaged = False
    min_seq = 8
    while True:
        p = 0 if seq_only else _period(recent)
        if p:
            pattern = np.asarray(recent[-p:], np.int64) + (HEADER + FOOTER)
            strides_ = np.tile(pattern, -(-spec // p))[:spec]
            ends = pos + np.cumsum(strides_)
            k = int(np.searchsorted(ends, n, side="right"))  # speculated records that end within n
            if k:
                starts = ends[:k] - strides_[:k]
                actual = u64[starts].astype(np.int64)
                good = actual == strides_[:k] - (HEADER + FOOTER)
                j = k if bool(good.all()) else int(np.argmin(good))
                if j:
                    if seq_offs:
                        offs_parts.append(np.asarray(seq_offs, np.int64))
                        lens_parts.append(np.asarray(seq_lens, np.int64))
                        seq_offs, seq_lens = [], []
                    offs_parts.append(starts[:j])
                    lens_parts.append(actual[:j])
                    pos = int(ends[j - 1])
                    recent = actual[max(0, j - 2 * _PERIOD_MAX) : j].tolist()
                spec = min(spec * 2, _SPEC_MAX) if j == spec else _SPEC_MIN
                min_seq = 8 if j >= 8 * p else 64  # a failed guess: walk further before guessing again
            else:
                min_seq = 8
        # Plain loop: at least min_seq records, then as soon as a period shows up.
        count = 0
        stopped = False
        while True:
            if pos + HEADER > n:
                stopped = True
                break
            length, len_crc = unpack(buf, pos)
            if check_crc and masked_crc32c(bytes(buf[pos : pos + 8])) != len_crc:
                damaged = stopped = True
                break
            if pos + HEADER + length + FOOTER > n:
                stopped = True
                break
            seq_offs.append(pos)
            seq_lens.append(length)
            recent.append(length)
            pos += HEADER + length + FOOTER
            count += 1
            if count >= min_seq and not seq_only and _period(recent[-2 * _PERIOD_MAX :]):
                if len(recent) > 4 * _PERIOD_MAX:
                    recent = recent[-2 * _PERIOD_MAX :]
                break
        if stopped:
            break
    if seq_offs:
        offs_parts.append(np.asarray(seq_offs, np.int64))
        lens_parts.append(np.asarray(seq_lens, np.int64))
    offsets = np.concatenate(offs_parts) if offs_parts else np.zeros(0, np.int64)
    lengths = np.concatenate(lens_parts) if lens_parts else np.zeros(0, np.int64)
    return Walk(offsets, lengths, pos, damaged)


class Views:
    """Unaligned little-endian views of a buffer: element ``i`` is the value stored at byte ``i``.

    Gathering ``view[offsets]`` reads one field of many records in one numpy call.
    """

    def __init__(self, buf: bytearray | bytes) -> None:
        import numpy as np

        self.u8 = np.frombuffer(buf, np.uint8)
        n = len(self.u8)

        def make(dtype: str, size: int):
            return np.ndarray((max(n - size + 1, 0),), dtype=dtype, buffer=buf, strides=(1,))

        self.u64, self.f64 = make("<u8", 8), make("<f8", 8)
        self.u32, self.f32 = make("<u4", 4), make("<f4", 4)


def verify_crcs(buf: bytearray, offsets, lengths) -> bool:
    """Check both CRCs of every record in one pass; the records must be back to back.

    Overwrites the stored CRC fields in ``buf`` (payloads are untouched). True if all verify.
    """
    import numpy as np

    if len(offsets) == 0:
        return True
    v = Views(buf)
    lengths = np.asarray(lengths, np.int64)
    crc_pos = offsets + HEADER + lengths
    table = _zero_crc_table()

    def raw(stored):  # unmask: rotate left by 15 what was rotated right by 15 (uint32 wraps)
        rot = stored - np.uint32(_MASK_DELTA)
        return (rot >> np.uint32(17)) | (rot << np.uint32(15))

    r_len = raw(v.u32[offsets + 8]) ^ np.uint32(table[8])
    small = lengths < len(table)
    k = np.empty(len(lengths), np.uint32)
    k[small] = table[lengths[small]]
    for i in np.flatnonzero(~small):
        k[i] = _zero_crc(int(lengths[i]))
    r_pay = raw(v.u32[crc_pos]) ^ k
    v.u32[offsets + 8] = r_len
    v.u32[crc_pos] = r_pay
    start, stop = int(offsets[0]), int(crc_pos[-1]) + FOOTER
    return google_crc32c.extend(0xFFFFFFFF, v.u8[start:stop]) == 0xFFFFFFFF
