"""The samples in the package's docstrings run, so they stay true (``>>>`` lines are documentation that
the next engineer reads first)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import adamdiag

# (the compiled kernels, ``_*_kernel``.so, are ctypes libraries, not Python modules)
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(adamdiag.__path__, "adamdiag.")
    if not m.name.endswith("__main__") and not m.name.rsplit(".", 1)[-1].startswith("_")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_samples(name: str) -> None:
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert res.failed == 0, f"{name}: {res.failed} of {res.attempted} docstring samples failed"


def test_the_samples_are_found() -> None:
    """Not a vacuous pass: the package does carry samples (the tags auto-pick, printable paths, …)."""
    attempted = sum(
        doctest.testmod(importlib.import_module(n), verbose=False).attempted
        for n in ("adamdiag.analysis.tags", "adamdiag.printable")
    )
    assert attempted >= 5
