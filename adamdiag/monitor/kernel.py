"""The optional fused pass of the live monitor (``_monitor_kernel.c``), loaded with ctypes.

``pip install`` compiles it when a C compiler is present (an optional extension, like
:mod:`adamdiag.analysis.moments_kernel`). Without it, with ``ADAMDIAG_NO_KERNEL=1`` in the
environment, or for any tensor that is not contiguous float32 on the CPU, :mod:`adamdiag.monitor.stats`
computes the same numbers with torch passes (``tests/monitor/test_monitor_kernel.py`` checks the two
agree).
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path
from typing import Any

from adamdiag.native import find_library, open_library

NBINS = 256  # as in the C source and stats.NBINS
KERNEL_ABI = 1  # ADAMDIAG_MONITOR_KERNEL_ABI in the C source


class MonAcc(ctypes.Structure):
    """Running totals of one tensor (the C ``adamdiag_mon_acc``); each call adds a slice to them.

    ``sum_upd`` is Σ g·(g / max(d, t1)) before the bias-correction factor.
    """

    _fields_ = [
        ("sum_g2", ctypes.c_double),
        ("sum_v", ctypes.c_double),
        ("sum_d", ctypes.c_double),
        ("sum_upd", ctypes.c_double),
        ("below1", ctypes.c_int64),
        ("below2", ctypes.c_int64),
        ("n", ctypes.c_int64),
        ("hist", ctypes.c_int64 * NBINS),
    ]


def _library_path() -> Path | None:
    return find_library(Path(__file__).resolve().parent, "_monitor_kernel", "adamdiag.monitor._monitor_kernel")


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    lib = open_library(_library_path(), "adamdiag_monitor_kernel_abi", KERNEL_ABI * 1_000_000 + ctypes.sizeof(MonAcc))
    if lib is None:
        return None
    fp = ctypes.c_void_p
    lib.adamdiag_monitor_stats.argtypes = [
        fp,
        fp,
        fp,
        ctypes.c_int64,
        ctypes.c_float,
        ctypes.c_float,
        ctypes.POINTER(MonAcc),
        ctypes.c_int32,
    ]
    lib.adamdiag_monitor_stats.restype = ctypes.c_int64
    lib.adamdiag_monitor_vector_path.restype = ctypes.c_int
    return lib


def available() -> bool:
    """True when the compiled kernel is loaded (and not disabled by ADAMDIAG_NO_KERNEL)."""
    return _lib() is not None


def vector_path() -> bool:
    """True when the kernel runs its AVX2 loop on this CPU (else its plain loop)."""
    lib = _lib()
    return bool(lib is not None and lib.adamdiag_monitor_vector_path())


def usable(*tensors: Any) -> bool:
    """True when the kernel is loaded and every tensor is contiguous float32 on the CPU (the only
    case it handles; the caller keeps the torch path for CUDA, bf16, strided views)."""
    import torch

    return available() and all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors
    )


def monitor_stats(g: Any, v: Any, d: Any, t1: float, t2: float, acc: MonAcc, *, plain: bool = False) -> None:
    """Add one slice to ``acc``: g (the gradient Adam squared), v (exp_avg_sq) and d (the
    denominator's state, may be ``v`` itself) are contiguous float32 CPU tensors of one length; t1, t2
    the float32 thresholds on d (eps²·(1-β2^t), 100·eps²·(1-β2^t)). ``plain`` forces the C plain loop
    (the tests' reference for the vector loop)."""
    import torch

    lib = _lib()
    if lib is None:
        raise RuntimeError("the monitor kernel is not available")
    n = int(g.numel())
    for name, t in (("g", g), ("v", v), ("d", d)):
        if t.dtype != torch.float32 or not t.is_contiguous() or t.numel() != n or t.device.type != "cpu":
            raise ValueError(f"{name}: needs a contiguous float32 CPU tensor of {n} elements")
    rc = lib.adamdiag_monitor_stats(g.data_ptr(), v.data_ptr(), d.data_ptr(), n, t1, t2, ctypes.byref(acc), int(plain))
    if rc < 0:
        raise ValueError("monitor kernel: bad arguments")
