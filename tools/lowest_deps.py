"""The lowest versions pyproject.toml declares, as pip constraints (``name==low``), one a line.

Used by ``make test-mindeps``: a separate venv gets exactly these, so a reader that only works with a
newer pandas/numpy/... than we declare fails there, not in a user's environment. torch is left out
(it stays at the Makefile's $(TORCH): the local CPU wheel). The extras that the fast suite exercises
(parquet export, Keras files) are pinned at their lowest too. ``--check`` compares the installed
versions with the lowest ones and fails on a difference (pip may have resolved past a constraint).
"""

import re
import sys
from importlib.metadata import version
from pathlib import Path

import tomllib
from packaging.version import Version

SKIP = {"torch"}
EXTRAS = ("parquet", "keras")


def lowest() -> dict[str, str]:
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    out = {}
    project = tomllib.loads(pyproject.read_text())["project"]
    deps = project["dependencies"] + [d for extra in EXTRAS for d in project["optional-dependencies"][extra]]
    for dep in deps:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][^,;\s]*)\s*", dep)
        if m is None:
            sys.exit(f"lowest_deps: cannot read a lower bound from {dep!r}")
        if m.group(1).lower() not in SKIP:
            out[m.group(1)] = m.group(2)
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        bad = 0
        for name, low in lowest().items():
            have = version(name)
            same = Version(have) == Version(low)
            bad += not same
            print(f"{name:16} declared >={low:8} installed {have:10} {'ok' if same else 'NOT THE LOWEST'}")
        sys.exit(1 if bad else 0)
    for name, low in lowest().items():
        print(f"{name}=={low}")
