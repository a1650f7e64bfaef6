"""Every number that decides a verdict lives in adamdiag/analysis/thresholds.py: the rule and evidence
modules hold no other numeric literal than 0, 1 and 2 (AST check), and every rule id in RULES is
emitted somewhere in the package or marked reserved."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from adamdiag.results.rules import RESERVED, RULES

PACKAGE = Path(__file__).resolve().parents[2] / "adamdiag"
RULE_MODULES = ["diagnose", "evidence", "verdicts", "findings", "recommend"]
ALLOWED = {0, 1, 2}


def _numeric_literals(path: Path) -> list[tuple[int, object]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            if node.value not in ALLOWED:
                out.append((node.lineno, node.value))
    return out


@pytest.mark.parametrize("module", RULE_MODULES)
def test_no_unnamed_numbers_in_rule_and_evidence_modules(module):
    found = _numeric_literals(PACKAGE / "analysis" / f"{module}.py")
    assert not found, f"analysis/{module}.py: numeric literals {found}: name them in analysis/thresholds.py"


def test_the_check_would_catch_a_literal(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("def f(r):\n    return r < 0.1 and r * 2 > 1\n")
    assert _numeric_literals(bad) == [(2, 0.1)]


def test_every_rule_id_is_emitted_or_reserved():
    source = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py") if p.name != "rules.py")
    emitted = set(re.findall(r"[\"'](AD\d{3})[\"']", source))
    missing = sorted(set(RULES) - emitted - RESERVED)
    assert not missing, f"rule ids never emitted (emit them or mark them reserved in rules.py): {missing}"
    assert not RESERVED & emitted, "a reserved id is emitted: drop it from RESERVED"
