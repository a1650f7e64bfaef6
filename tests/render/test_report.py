"""The Report contract: JSON round trip, no NaN literals, README rule table in sync with the code."""

from __future__ import annotations

import json
import math
from pathlib import Path

from adamdiag.render import render
from adamdiag.results.report import SCHEMA, Finding, Report, RunReport, json_safe
from adamdiag.results.rules import RULES, markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


def _report() -> Report:
    f = Finding(
        "AD101",
        "error",
        "v collapse in `w` [bracketed]",
        step=10,
        tensor="w",
        evidence={"median_r": float("nan"), "peak": float("inf"), "nested": [float("-inf"), 1.0]},
    )
    run = RunReport(
        run="runs/a",
        verdict="v_collapse",
        blowup_step=20,
        warning_step=10,
        findings=[f],
        recommendation={"eps": 1e-3, "message": "eps 1e-8 → 1e-3"},
        sources=["scalars"],
    )
    return Report(runs=[run], tool_version="test")


def test_json_has_no_nonfinite_literals_and_keeps_the_information():
    text = render(_report(), "json")
    data = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(AssertionError(c)))
    ev = data["runs"][0]["findings"][0]["evidence"]
    assert ev["median_r"] is None and ev["median_r_nonfinite"] == "nan"
    assert ev["peak"] is None and ev["peak_nonfinite"] == "inf"
    assert ev["nested"] == [None, 1.0]
    assert data["schema"] == SCHEMA
    assert data["runs"][0]["lead_time"] == 10


def test_round_trip_rerenders_identically():
    rep = _report()
    again = Report.from_dict(json.loads(render(rep, "json")))
    assert render(again, "markdown") == render(rep, "markdown")
    assert again.runs[0].findings[0].id == "AD101"


def test_text_renderer_does_not_interpret_brackets_in_messages():
    assert "[bracketed]" in render(_report(), "text")


def test_json_safe_numpy_scalars():
    import numpy as np

    out = json_safe({"a": np.float64("nan"), "b": np.int64(3)})
    assert out["a"] is None and out["b"] == 3 and isinstance(out["b"], int)
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in out.values() if v is not None)


def test_rule_table_in_readme_matches_code():
    text = README.read_text()
    assert markdown_table() in text, "README rule table is stale: paste `python -m adamdiag.results.rules`"
    assert all(rid.startswith("AD") and len(rid) == 5 for rid in RULES)


def test_a_saved_report_missing_a_run_field_is_named():
    """`show` of a hand-edited report: the missing field is named, not RunReport's constructor message."""
    import pytest

    with pytest.raises(ValueError, match=r"^run 2 of the report has no 'verdict' field$"):
        Report.from_dict({"schema": SCHEMA, "runs": [{"run": "a", "verdict": "healthy"}, {"run": "b"}]})
    with pytest.raises(ValueError, match=r"^run 1 of the report is not an object \(int\)$"):
        Report.from_dict({"schema": SCHEMA, "runs": [5]})
