"""Data flows one way: readers (io) → analysis → results → renderers → cli (docs/architecture.md, "Data flow").

A small AST check over every module of the package, lazy (function-level) imports included. Imports
under ``if TYPE_CHECKING:`` are allowed: they exist for annotations only and never run. Every
violation is listed, not just the first.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "adamdiag"

# layer -> layers it must not import (module prefixes, dotted)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "adamdiag.analysis": ("adamdiag.io", "adamdiag.render", "adamdiag.cli", "adamdiag.pipeline"),
    "adamdiag.render": ("adamdiag.analysis", "adamdiag.io", "adamdiag.pipeline"),
    "adamdiag.io": ("adamdiag.analysis", "adamdiag.render", "adamdiag.cli", "adamdiag.results"),
    "adamdiag.results": ("adamdiag.analysis", "adamdiag.io", "adamdiag.render", "adamdiag.cli"),
    # the live monitor runs inside the user's training: scan's pure rules and result objects only
    "adamdiag.monitor": ("adamdiag.io", "adamdiag.render", "adamdiag.cli", "adamdiag.pipeline"),
}

# (importing module, imported module) pairs tolerated for now. Each entry says why and who removes it.
ALLOWED: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, list[str]]]:
    """(line, candidate modules) for every import that can run: top-level, lazy, conditional — not TYPE_CHECKING.

    ``from a.b import c`` gives the candidates ``a.b`` and ``a.b.c`` (c may be a submodule).
    """
    found: list[tuple[int, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:  # the else branch does run
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, [alias.name]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            found.append((node.lineno, [target] + [f"{target}.{a.name}" for a in node.names if a.name != "*"]))
        elif (  # importlib.import_module("adamdiag.x")
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, [node.args[0].value]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _rules(module: str) -> list[tuple[str, str]]:
    rules = [(layer, bad) for layer, bads in FORBIDDEN.items() if _within(module, layer) for bad in bads]
    # adamdiag/__main__.py is the command itself (python -m adamdiag): the one module above the CLI
    if not _within(module, "adamdiag.cli") and module != "adamdiag.__main__":
        rules.append(("code outside adamdiag.cli", "adamdiag.cli"))
    return rules


def violations() -> list[tuple[str, str, str]]:
    """(importing module, imported module, 'file:line: rule') for every import that breaks a rule."""
    out: list[tuple[str, str, str]] = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        module = _module_name(path)
        rel = path.relative_to(PACKAGE_DIR.parent)
        source = path.read_text(encoding="utf-8")
        for line, candidates in imports_of(source, module, path.name == "__init__.py"):
            for layer, bad in _rules(module):
                hits = [c for c in candidates if _within(c, bad)]
                if hits:  # the shortest one is the module named in the statement
                    out.append((module, hits[0], f"{rel}:{line}: {layer} must not import {bad} ({hits[0]})"))
    return out


def test_data_flows_one_way() -> None:
    bad = [where for m, t, where in violations() if (m, t) not in ALLOWED]
    assert not bad, "import-layering violations:\n" + "\n".join(f"  {w}" for w in bad)


def test_allow_list_is_not_stale() -> None:
    found = {(m, t) for m, t, _ in violations()}
    stale = [pair for pair in ALLOWED if pair not in found]
    assert not stale, f"these allowed imports are gone; remove them from ALLOWED in {__file__}: {stale}"


def test_checker_sees_lazy_imports_and_skips_type_checking() -> None:
    src = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from adamdiag.io.events import RunEvents\n"
        "else:\n    import adamdiag.render.text\n"
        "def f():\n    from ..io import checkpoints\n    from adamdiag import cli\n    import importlib\n"
        "    return importlib.import_module('adamdiag.pipeline.scan')\n"
    )
    found = {c for _, cands in imports_of(src, "adamdiag.analysis.probe") for c in cands}
    assert "adamdiag.io.events" not in found
    assert {"adamdiag.render.text", "adamdiag.io", "adamdiag.io.checkpoints", "adamdiag.cli"} <= found
    assert "adamdiag.pipeline.scan" in found
