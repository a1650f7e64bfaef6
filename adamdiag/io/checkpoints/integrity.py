"""Zip CRC checks of the torch-file members whose bytes feed a statistic, in the same pass.

``torch.load(mmap=True)`` maps the file and never checks the CRC-32 that the zip format stores
for every member: a flipped bit in a tensor's data reads silently as a wrong number. Here the CRC
of a tensor's storage is computed from the very pages the statistics just read (still resident:
no second read from disk) and compared with the zip's central directory. Storages not backed by a
mapped torch zip (legacy files, DCP, copies a reader put together) are not checked — the caller is
told so by ``None``.

Members read in pieces (:class:`Piece`: a DeepSpeed rank's flat partition holds a share of every
parameter) are not read again for the check: a reader gathering a tensor copies each part with its CRC
in one pass (:func:`gather_into`, with the CRC kernel), or the part's CRC is computed right after the
statistics read it; :meth:`ZipCrcCheck.finish` puts each member's CRC together from its pieces
(:func:`crc32_combine`) and the bytes no piece covered, once every tensor has been read — so a
damaged flat partition is AD403 on every tensor cut from it, reported at the end of the checkpoint.

Linux only (the file and offset behind an address come from /proc/self/maps); elsewhere a no-op.
A member larger than :data:`CRC_WINDOW` checked directly is checked window by window, each window's
pages handed back after its CRC, so the check never holds a whole member.
Thread-safe: ``summarize_checkpoint(jobs=)`` checks from several threads; a member is checked once
(a second thread asking for it waits for the first's answer).

Cost: one CRC-32 over the bytes that feed a statistic. With the optional compiled kernel
(``_crc32_kernel.c``: PCLMULQDQ folding, x86-64, chosen at run time) ~12 GB/s on the test machine, and
for DeepSpeed gathers fused into the copy the statistics need anyway (ZeRO-3, 4 ranks, 3.3 GB: ``inspect``
1.8-2.4× a bare read of the files on the shared test machine; bench/README.md). Without it — no compiler
at install, no PCLMULQDQ, ``ADAMDIAG_NO_KERNEL`` set — the optional ``isal`` package (``adamdiag[fast]``,
4-20 GB/s; 2.2×) or ``zlib.crc32`` (~1.3-3.7 GB/s here, by load; 2.9-5.1×). Every path gives zlib's
value; the tests compare them.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from adamdiag.io.checkpoints import crc_kernel
from adamdiag.io.filekind import ZIP_DAMAGE

try:  # ISA-L's CRC-32 (same polynomial as zip's): the fast path when our kernel is not
    from isal.isal_zlib import crc32  # type: ignore[import-not-found]
except ImportError:  # optional: `pip install isal`
    from zlib import crc32

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header: 30 bytes, then name and extra
BUSY = "\0busy"  # check(wait_for_it=False): another thread is checking that member now
CRC_WINDOW = 64 * 1024 * 1024  # bytes checked before their pages are handed back (larger members)
_MADV_DONTNEED = 4


@dataclass(frozen=True)
class Piece:
    """Part of a stored zip member that a reader cut a tensor from (a rank's share of one parameter in a
    DeepSpeed flat partition). Its CRC is computed alone — or taken from ``known``, where the reader put
    it while copying the bytes (:func:`gather_into`) — and the member's CRC is put together from its
    pieces (and the bytes between them) by :meth:`ZipCrcCheck.finish`: each byte read once."""

    view: Any  # a contiguous tensor viewing the mapped member
    known: dict[tuple[int, int], int] | None = None  # (address, bytes) -> CRC-32, filled by gather_into


def gather_into(parts: list[Any], out: Any, known: dict[tuple[int, int], int] | None) -> None:
    """``torch.cat(parts, out=out)``; with the CRC kernel, each part copied and its CRC-32 computed in one
    pass, recorded in ``known`` under the part's (address, bytes) for :class:`Piece` to find."""
    import torch

    same = all(p.dtype == out.dtype and p.is_contiguous() and p.device.type == "cpu" for p in parts)
    if known is None or not same or not out.is_contiguous() or not crc_kernel.available():
        with torch.no_grad():  # fp32 flat groups are saved requiring grad; cat(out=) refuses those
            torch.cat(parts, out=out)
        return
    if sum(int(p.numel()) for p in parts) != out.numel():
        raise ValueError("gather_into: the parts do not fill out")
    at, item = out.data_ptr(), out.element_size()
    for p in parts:
        n = int(p.numel()) * item
        if n:
            known[(p.data_ptr(), n)] = crc_kernel.copy_crc32(at, p.data_ptr(), n)
        at += n


# zlib's crc32_combine (not exposed by Python's zlib): CRC(A+B) from CRC(A), CRC(B) and len(B), via
# multiplication by x^(8·len(B)) modulo the polynomial (bit-reflected, x^0 at bit 31).
_POLY = 0xEDB88320


def _multmodp(a: int, b: int) -> int:
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


_X2N = [1 << 30]  # x^(2^k) mod P
for _ in range(63):
    _X2N.append(_multmodp(_X2N[-1], _X2N[-1]))


@lru_cache(maxsize=4096)
def _x8n(n: int) -> int:
    """x^(8n) mod P (cached: a member's pieces repeat a few lengths)."""
    p, k = 1 << 31, 3
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 63], p)
        n >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of A followed by B, from crc1 = CRC(A), crc2 = CRC(B) and len2 = len(B) (zlib's)."""
    return _multmodp(_x8n(len2), crc1) ^ crc2


@dataclass
class _Mapping:
    lo: int
    hi: int
    offset: int  # file offset of lo
    path: str


@dataclass
class ZipCrcCheck:
    """Verifies storages of memory-mapped torch zip files; each storage once (results are cached)."""

    maps: list[_Mapping] = field(default_factory=list)
    members: dict[str, dict[int, zipfile.ZipInfo]] = field(default_factory=dict)  # path -> data offset -> info
    done: dict[tuple[str, int], str | None] = field(default_factory=dict)  # (path, offset) -> bad member or None
    checked_bytes: int = 0
    enabled: bool = True  # False: check nothing (a reader whose tensors are never mapped)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _busy: dict[tuple[str, int], threading.Event] = field(default_factory=dict, repr=False)
    # per member (path, data offset): its storage tensor (kept mapped) and its pieces' (offset, bytes, CRC)
    _pieces: dict[tuple[str, int], tuple[Any, list[tuple[int, int, int]]]] = field(default_factory=dict, repr=False)

    @property
    def available(self) -> bool:
        return self.enabled and sys.platform.startswith("linux")

    def _read_maps(self) -> None:
        self.maps = []
        try:
            with open("/proc/self/maps", encoding="utf-8", errors="surrogateescape") as f:  # non-UTF-8 paths
                for line in f:
                    parts = line.split(maxsplit=5)
                    if len(parts) == 6 and parts[5].startswith("/"):
                        lo, hi = (int(x, 16) for x in parts[0].split("-"))
                        self.maps.append(_Mapping(lo, hi, int(parts[2], 16), parts[5].rstrip("\n")))
        except OSError:
            pass

    def _where(self, ptr: int, size: int) -> tuple[str, int] | None:
        for again in (False, True):
            if again:
                self._read_maps()  # a file mapped after the last look (readers open files lazily)
            for m in self.maps:
                if m.lo <= ptr and ptr + size <= m.hi:
                    return m.path, ptr - m.lo + m.offset
        return None

    def _index(self, path: str) -> dict[int, zipfile.ZipInfo]:
        if path not in self.members:
            idx: dict[int, zipfile.ZipInfo] = {}
            try:
                with open(path, "rb") as f, zipfile.ZipFile(f) as zf:
                    for info in zf.infolist():
                        f.seek(info.header_offset)
                        head = f.read(_LOCAL_HEADER.size)
                        if len(head) < _LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
                            continue
                        fields = _LOCAL_HEADER.unpack(head)
                        idx[info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]] = info
            except ZIP_DAMAGE:
                pass
            self.members[path] = idx
        return self.members[path]

    def add_piece(self, piece: Piece) -> tuple[str, int] | None:
        """Record the CRC of one piece of a member (computed now from its bytes, which the statistics
        just read, unless the reader already has it); returns the member's key for :meth:`finish`'s
        verdict, or None when the piece is not in a mapped zip member (not checked)."""
        t = piece.view
        if not self.available or t is None or not hasattr(t, "untyped_storage") or not t.is_contiguous():
            return None
        st = t.untyped_storage()
        base, size = st.data_ptr(), st.nbytes()
        ptr, n = t.data_ptr(), int(t.numel()) * t.element_size()
        if n == 0 or not base <= ptr <= ptr + n <= base + size:
            return None
        with self._lock:
            loc = self._where(base, size)
            if loc is None:
                return None
            info = self._index(loc[0]).get(loc[1])
        if info is None or info.compress_type != zipfile.ZIP_STORED or info.file_size != size:
            return None
        known = piece.known.pop((ptr, n), None) if piece.known is not None else None
        c = known if known is not None else _crc_of_mapped(ptr, n)
        with self._lock:
            self._pieces.setdefault(loc, (t, []))[1].append((ptr - base, n, c))
        return loc

    def finish(self) -> dict[tuple[str, int], str | None]:
        """The verdict on every member pieces were recorded for: the member's name if its CRC does not
        match, else None. The member's CRC is put together from its pieces' CRCs, in offset order, with
        the bytes no piece covered (padding, tensors not read) read now; call it while the checkpoint's
        mappings are alive (before the reader is dropped)."""
        out: dict[tuple[str, int], str | None] = {}
        with self._lock:
            todo, self._pieces = self._pieces, {}
        for loc, (t, pieces) in todo.items():
            with self._lock:
                info = self._index(loc[0]).get(loc[1])
            if info is None:
                continue
            st = t.untyped_storage()
            base, size = st.data_ptr(), st.nbytes()
            c, at = 0, 0
            for off, n, pc in sorted(set(pieces)):
                if off < at:  # overlapping pieces (not what a reader cuts): the whole member afresh
                    c, at = _crc_of_mapped(base, size), size
                    break
                if off > at:
                    c = _crc_of_mapped(base + at, off - at, c)
                c, at = crc32_combine(c, pc, n), off + n
            if at < size:
                c = _crc_of_mapped(base + at, size - at, c)
            self.checked_bytes += size
            out[loc] = info.filename if c != info.CRC else None
        return out

    def check(self, t: Any, *, wait_for_it: bool = True) -> str | None:
        """The zip member name if the CRC of ``t``'s storage does not match, else None (also when
        the storage is not from a mapped torch zip member and so cannot be checked). ``wait_for_it=False``:
        return :data:`BUSY` at once when another thread is checking that member (the caller checks
        its other members first — DeepSpeed tensors share their ranks' flat partitions — and asks
        again)."""
        if not self.available or t is None or not hasattr(t, "untyped_storage"):
            return None
        st = t.untyped_storage()
        ptr, size = st.data_ptr(), st.nbytes()
        if size == 0:
            return None
        with self._lock:  # /proc/self/maps and the zip indexes are shared between threads
            loc = self._where(ptr, size)
            if loc is None:
                return None
            if loc in self.done:
                return self.done[loc]
            wait = self._busy.get(loc)
            if wait is None:
                self._busy[loc] = threading.Event()
            info = self._index(loc[0]).get(loc[1]) if wait is None else None
        if wait is not None:  # another thread is checking this member: its answer
            if not wait_for_it:
                return BUSY
            wait.wait()
            return self.done.get(loc)
        bad, checked = None, 0
        try:
            if info is not None and info.compress_type == zipfile.ZIP_STORED and info.file_size == size:
                checked = size
                if _crc_of_mapped(ptr, size) != info.CRC:
                    bad = info.filename
        finally:
            with self._lock:
                self.checked_bytes += checked
                self.done[loc] = bad
                self._busy.pop(loc).set()
        return bad


_libc: Any = None


def crc_engine() -> str:
    """Which CRC-32 the check uses here: ``kernel`` (our PCLMULQDQ folding), else ``isal`` or ``zlib``."""
    return "kernel" if crc_kernel.available() else crc32.__module__.split(".")[0]


def _crc_at(ptr: int, size: int, crc: int) -> int:
    """CRC-32 of ``size`` bytes at ``ptr`` continuing ``crc``, by the fastest engine present (all give
    zlib's value; ctypes and both modules release the GIL for the pass)."""
    if crc_kernel.available():
        return crc_kernel.crc32_at(ptr, size, crc)
    return crc32((ctypes.c_ubyte * size).from_address(ptr), crc)


def _crc_of_mapped(ptr: int, size: int, crc: int = 0) -> int:
    """CRC-32 of ``size`` mapped file bytes at ``ptr`` (no copy) continuing ``crc``; above
    :data:`CRC_WINDOW`, window by window with each window's pages dropped after it (a file mapping: they
    fault back in if read again)."""
    global _libc
    if size <= CRC_WINDOW:
        return _crc_at(ptr, size, crc)
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc = lib
    page = os.sysconf("SC_PAGE_SIZE")
    c = crc
    for off in range(0, size, CRC_WINDOW):
        n = min(CRC_WINDOW, size - off)
        c = _crc_at(ptr + off, n, c)
        lo = ptr + off
        start, end = lo - lo % page, lo + n - (lo + n) % page  # whole pages inside this window's span
        if end > start:
            _libc.madvise(start, end - start, _MADV_DONTNEED)
    return c


__all__ = ["Piece", "ZipCrcCheck", "crc32_combine", "crc_engine", "gather_into"]
