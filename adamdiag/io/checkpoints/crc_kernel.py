"""The optional compiled CRC-32 (``_crc32_kernel.c``), loaded with ctypes: zlib's ``crc32`` at PCLMULQDQ
speed for the zip CRC check (:mod:`adamdiag.io.checkpoints.integrity`).

``pip install`` compiles it when a C compiler is present (an optional extension, like the statistics
kernel). It is *used* only where it is the fast path — an x86-64 CPU with PCLMULQDQ, ~12 GB/s on the test
machine against zlib's ~2-4 GB/s. Its portable table loop (slicing-by-8, ~2 GB/s there) is no faster than
zlib's own, so without PCLMULQDQ, without the library, or with ``ADAMDIAG_NO_KERNEL`` set, integrity.py
keeps ``zlib.crc32`` (or ``isal``'s, when installed); the table loop serves the few bytes around the
folded body and is the tests' second reference.
"""

from __future__ import annotations

import ctypes
import threading
from functools import lru_cache
from pathlib import Path

from adamdiag.native import find_library, open_library

CRC_ABI = 1  # ADAMDIAG_CRC_ABI in the C source
_init_lock = threading.Lock()


def _library_path() -> Path | None:
    return find_library(Path(__file__).resolve().parent, "_crc32_kernel", "adamdiag.io.checkpoints._crc32_kernel")


@lru_cache(maxsize=1)
def _loaded() -> tuple[ctypes.CDLL, bool] | None:
    """The library and whether it folds with PCLMULQDQ on this CPU; None without a usable library."""
    lib = open_library(_library_path(), "adamdiag_crc_abi", CRC_ABI)
    if lib is None:
        return None
    lib.adamdiag_crc_init.restype = ctypes.c_int32
    lib.adamdiag_crc32.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32]
    lib.adamdiag_crc32.restype = ctypes.c_uint32  # ctypes releases the GIL for the call: threads CRC at once
    lib.adamdiag_crc32_copy.argtypes = [
        ctypes.c_uint32,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int32,
    ]
    lib.adamdiag_crc32_copy.restype = ctypes.c_uint32
    with _init_lock:  # the tables are built here, once, before any CRC (the C init is not thread-safe)
        clmul = lib.adamdiag_crc_init() == 1
    return lib, clmul


def loaded() -> bool:
    """True when the library is loaded (either path; not when ADAMDIAG_NO_KERNEL is set)."""
    return _loaded() is not None


def available() -> bool:
    """True when the kernel is the fast CRC here: loaded and folding with PCLMULQDQ."""
    got = _loaded()
    return got is not None and got[1]


def crc32_at(address: int, size: int, crc: int = 0, *, plain: bool = False) -> int:
    """zlib's ``crc32`` of the ``size`` bytes at ``address`` (no copy), continuing ``crc``. The caller keeps
    that memory alive. ``plain`` forces the portable table loop (the tests' cross-check of the two paths)."""
    got = _loaded()
    if got is None:
        raise RuntimeError("the CRC-32 kernel is not available")
    if size < 0 or not 0 <= crc <= 0xFFFFFFFF:
        raise ValueError("size must be >= 0 and crc an unsigned 32-bit value")
    return int(got[0].adamdiag_crc32(crc, address, size, int(plain)))


def copy_crc32(dst: int, src: int, size: int, crc: int = 0, *, plain: bool = False) -> int:
    """Copies ``size`` bytes from address ``src`` to ``dst`` (not overlapping) and returns their CRC-32
    continuing ``crc``, in one pass over the source (what :func:`crc32_at` of ``src`` gives)."""
    got = _loaded()
    if got is None:
        raise RuntimeError("the CRC-32 kernel is not available")
    if size < 0 or not 0 <= crc <= 0xFFFFFFFF:
        raise ValueError("size must be >= 0 and crc an unsigned 32-bit value")
    return int(got[0].adamdiag_crc32_copy(crc, dst, src, size, int(plain)))


def crc32(data: bytes | bytearray | memoryview, crc: int = 0, *, plain: bool = False) -> int:
    """zlib's ``crc32(data, crc)`` by the kernel, for any C-contiguous buffer (read-only ones too)."""
    import numpy as np

    arr = np.frombuffer(data, dtype=np.uint8)  # no copy; its address is valid while ``data`` is
    return crc32_at(int(arr.ctypes.data), int(arr.size), crc, plain=plain)


__all__ = ["available", "copy_crc32", "crc32", "crc32_at", "loaded"]
