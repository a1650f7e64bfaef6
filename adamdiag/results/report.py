"""The versioned Report: what analysis produces and renderers consume.

Renderers never recompute anything; a Report saved as JSON can be re-rendered later
(``Report.from_dict(json.load(f))``). The JSON contract is ``adamdiag.report/1`` (DESIGN.md):
field names here are that contract, extra fields are allowed, NaN/Inf never appear as literals
(:func:`json_safe` turns them into ``null`` and records a flag).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SCHEMA = "adamdiag.report/1"

Severity = Literal["error", "warning", "info"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "error": 2}

VERDICTS = (
    "v_collapse",
    "lr_too_high",
    "bad_batch",
    "nonfinite",
    "eps_too_large",
    "healthy",
    "inconclusive",
)


@dataclass
class Finding:
    """One observation with a stable rule id (see ``adamdiag.results.rules.RULES``)."""

    id: str
    severity: Severity
    message: str
    step: int | None = None
    tensor: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunReport:
    """The diagnosis of one run."""

    run: str
    verdict: str
    blowup_step: int | None = None
    warning_step: int | None = None
    findings: list[Finding] = field(default_factory=list)
    recommendation: dict[str, Any] | None = None
    # Which data the diagnosis could use: "scalars", "histograms", "checkpoints".
    sources: list[str] = field(default_factory=list)
    convention: str = "torch"
    warnings: list[str] = field(default_factory=list)

    @property
    def lead_time(self) -> int | None:
        if self.blowup_step is None or self.warning_step is None:
            return None
        return self.blowup_step - self.warning_step

    def worst_severity(self) -> str | None:
        if not self.findings:
            return None
        return max((f.severity for f in self.findings), key=SEVERITY_RANK.__getitem__)


@dataclass
class Report:
    """Top-level report over one or many runs."""

    runs: list[RunReport] = field(default_factory=list)
    schema: str = SCHEMA
    tool_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = {"schema": self.schema, "tool_version": self.tool_version, "runs": []}
        for r in self.runs:
            d = asdict(r)
            d["lead_time"] = r.lead_time
            out["runs"].append(d)
        return json_safe(out)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not an {SCHEMA} report (schema={data.get('schema')!r})")
        runs = []
        for r in data.get("runs", []):
            r = dict(r)
            r.pop("lead_time", None)
            r["findings"] = [Finding(**f) for f in r.get("findings", [])]
            runs.append(RunReport(**r))
        return cls(runs=runs, schema=data["schema"], tool_version=data.get("tool_version", ""))


def json_safe(obj: Any) -> Any:
    """Recursively replace non-finite floats by ``None`` so JSON has no NaN/Infinity literals.

    A dict that held a non-finite value gets ``"<key>_nonfinite": "nan"|"inf"|"-inf"`` beside it,
    so the information is not lost.

    >>> json_safe({"a": float("nan"), "b": [1.0, float("inf")]})
    {'a': None, 'a_nonfinite': 'nan', 'b': [1.0, None]}
    """
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if isinstance(v, float) and not math.isfinite(v):
                out[k] = None
                out[f"{k}_nonfinite"] = "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
            else:
                out[k] = json_safe(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return json_safe(obj.item())  # numpy / torch scalars
    return obj
