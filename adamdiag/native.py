"""Finding and opening adamdiag's optional compiled kernels (plain C, loaded with ctypes).

Two kernels share this: the checkpoint statistics (``analysis/_moments_kernel.c``) and the live
monitor's per-tensor pass (``monitor/_monitor_kernel.c``). Each is optional — without a compiler the same
numbers come from torch — so every failure here means "no kernel", never an error: the library is
missing, cannot be loaded, was built from another version of the source (its ABI stamp differs: refused
with a warning rather than misread), or ``ADAMDIAG_NO_KERNEL`` is set.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import importlib.util
import os
import warnings
from pathlib import Path


def find_library(here: Path, stem: str, module: str) -> Path | None:
    """The built ``stem`` (e.g. ``_moments_kernel``) next to its package ``here``, else where the import
    system finds ``module`` (editable installs may keep the built file elsewhere)."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        cand = here / f"{stem}{suffix}"
        if cand.is_file():
            return cand
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin and spec.origin != "built-in" else None


def open_library(path: Path | None, abi_symbol: str, expected_abi: int) -> ctypes.CDLL | None:
    """``path`` loaded, if it reports ``expected_abi`` from its ``abi_symbol`` function; None otherwise
    (and always when ``ADAMDIAG_NO_KERNEL`` is set)."""
    if os.environ.get("ADAMDIAG_NO_KERNEL") or path is None:
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    try:  # a library built from another version of the source: refuse it rather than misread it
        fn = getattr(lib, abi_symbol)
        fn.restype = ctypes.c_int64
        abi = fn()
    except AttributeError:
        abi = None
    if abi != expected_abi:
        warnings.warn(
            f"{path.name} was built from another version of adamdiag; it is not used (slower path). "
            "Rebuild it: pip install -e . (or make setup)",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
    return lib
