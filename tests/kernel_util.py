"""Building one of adamdiag's optional C kernels from its source with another ABI stamp: what an editable
install that was not rebuilt after a pull leaves behind (the loader must refuse it, never misread it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def build_with_other_abi(source: Path, define: str, out_dir: Path) -> Path:
    """Compile ``source`` with ``#define <define> 1`` changed to 2 into a shared library in ``out_dir``;
    skips the calling test when there is no C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler on this machine")
    src = source.read_text()
    old = f"#define {define} 1\n"
    assert old in src, f"{source.name} has no {old.strip()!r}"
    c_file = out_dir / f"{source.stem}_old.c"
    c_file.write_text(src.replace(old, f"#define {define} 2\n"))
    so = out_dir / f"{source.stem}_old.so"
    subprocess.run([cc, "-O1", "-shared", "-fPIC", "-o", str(so), str(c_file)], check=True)
    return so
