"""The optional fused statistics kernel (``_moments_kernel.c``), loaded with ctypes.

``pip install`` compiles it when a C compiler is present (an optional extension: without one the
install still succeeds). Without it, or with ``ADAMDIAG_NO_KERNEL=1`` in the environment,
:mod:`adamdiag.analysis.moments` computes the same statistics with torch/numpy passes (several
times slower on large checkpoints; the numbers agree to float rounding of the sums, which
``tests/test_moments_kernel.py`` checks).
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from adamdiag.native import find_library, open_library

if TYPE_CHECKING:
    import torch

MAX_SPANS = 8  # brackets per call; as in the C source
KERNEL_ABI = 1  # ADAMDIAG_KERNEL_ABI in the C source


class Acc(ctypes.Structure):
    """Running totals of one tensor (the C ``adamdiag_acc``); the kernel adds each chunk to them."""

    _fields_ = [
        ("sum_v", ctypes.c_double),
        ("sum_abs_m", ctypes.c_double),
        ("sum_u2", ctypes.c_double),
        ("sum_p2", ctypes.c_double),
        ("min_d", ctypes.c_double),
        ("max_d", ctypes.c_double),
        ("max_v", ctypes.c_double),
        ("max_u2", ctypes.c_double),
        ("n_finite", ctypes.c_int64),
        ("zero", ctypes.c_int64),
        ("below1", ctypes.c_int64),
        ("below2", ctypes.c_int64),
        ("lt_lo", ctypes.c_int64 * MAX_SPANS),
    ]

    @classmethod
    def fresh(cls) -> Acc:
        inf = float("inf")
        return cls(min_d=inf, max_d=-inf, max_v=-inf, max_u2=-inf)


class Params(ctypes.Structure):
    """Per-tensor constants (the C ``adamdiag_params``): e = eps_eff·√bc2, the √v thresholds t1/t2
    (eps and 10·eps scaled the same way) and the brackets [lo_j, hi_j] of the quantile selection."""

    _fields_ = [
        ("e", ctypes.c_float),
        ("t1", ctypes.c_float),
        ("t2", ctypes.c_float),
        ("nspan", ctypes.c_int32),
        ("lo", ctypes.c_float * MAX_SPANS),
        ("hi", ctypes.c_float * MAX_SPANS),
    ]

    @classmethod
    def of(cls, e: float, t1: float, t2: float, spans: list[tuple[float, float]]) -> Params:
        if len(spans) > MAX_SPANS:
            raise ValueError(f"at most {MAX_SPANS} brackets, got {len(spans)}")
        lo = (ctypes.c_float * MAX_SPANS)(*[s[0] for s in spans])
        hi = (ctypes.c_float * MAX_SPANS)(*[s[1] for s in spans])
        return cls(e=e, t1=t1, t2=t2, nspan=len(spans), lo=lo, hi=hi)


def _library_path() -> Path | None:
    return find_library(Path(__file__).resolve().parent, "_moments_kernel", "adamdiag.analysis._moments_kernel")


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    lib = open_library(
        _library_path(),
        "adamdiag_kernel_abi",
        KERNEL_ABI * 1_000_000 + ctypes.sizeof(Acc) * 1000 + ctypes.sizeof(Params),
    )
    if lib is None:
        return None
    fp = ctypes.c_void_p
    lib.adamdiag_chunk_stats.argtypes = [
        fp,
        fp,
        fp,
        fp,
        ctypes.c_int64,
        ctypes.POINTER(Params),
        ctypes.POINTER(Acc),
        fp,
        ctypes.c_int64,
        fp,
        ctypes.c_int32,
    ]
    lib.adamdiag_chunk_stats.restype = ctypes.c_int64
    lib.adamdiag_vector_path.restype = ctypes.c_int
    return lib


def available() -> bool:
    """True when the compiled kernel is loaded (and not disabled by ADAMDIAG_NO_KERNEL)."""
    return _lib() is not None


def vector_path() -> bool:
    """True when the kernel runs its AVX2 loop on this CPU (else its plain loop)."""
    lib = _lib()
    return bool(lib is not None and lib.adamdiag_vector_path())


def chunk_stats(
    m: torch.Tensor,
    v: torch.Tensor,
    d: torch.Tensor,
    p: torch.Tensor | None,
    params: Params,
    acc: Acc,
    kept: np.ndarray,
    kept_n: np.ndarray,
    *,
    plain: bool = False,
) -> None:
    """Add one chunk to ``acc``. The values of ``d`` inside bracket j are appended to row j of
    ``kept`` (float32, C-contiguous, one row per bracket), after the ``kept_n[j]`` (int64) already
    there, and ``kept_n`` is advanced; a row needs ``numel + 8`` free slots. m, v, d (may be v
    itself), p (or None) are contiguous float32 CPU tensors of one length. ``plain`` forces the C
    plain loop (the tests' reference for the vector loop)."""
    import torch

    lib = _lib()
    if lib is None:
        raise RuntimeError("the moments kernel is not available")
    n = int(m.numel())
    for name, t in (("m", m), ("v", v), ("d", d), ("p", p)):
        if t is not None and (
            t.dtype != torch.float32 or not t.is_contiguous() or t.numel() != n or t.device.type != "cpu"
        ):
            raise ValueError(f"{name}: needs a contiguous float32 CPU tensor of {n} elements")
    ns = int(params.nspan)
    if (
        kept.dtype != np.float32
        or kept.ndim != 2
        or not kept.flags.c_contiguous
        or kept.shape[0] < ns
        or kept_n.dtype != np.int64
        or kept_n.size < ns
        or (ns and int(kept_n[:ns].max()) + n + 8 > kept.shape[1])
    ):
        raise ValueError("kept/kept_n: a float32 row per bracket with room for numel + 8 more values, int64 counts")
    rc = lib.adamdiag_chunk_stats(
        m.data_ptr(),
        v.data_ptr(),
        d.data_ptr(),
        p.data_ptr() if p is not None else None,
        n,
        ctypes.byref(params),
        ctypes.byref(acc),
        kept.ctypes.data,
        kept.shape[1],
        kept_n.ctypes.data,
        int(plain),
    )
    if rc < 0:
        raise ValueError("moments kernel: bad arguments")
