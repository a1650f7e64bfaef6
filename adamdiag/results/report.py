"""The versioned Report: what analysis produces and renderers consume.

Renderers never recompute anything; a Report saved as JSON can be re-rendered later
(``Report.from_dict(json.load(f))``). The JSON contract is ``adamdiag.report/1`` (docs/architecture.md, "Contracts"):
field names here are that contract, extra fields are allowed, NaN/Inf never appear as literals
(:func:`json_safe` turns them into ``null`` and records a flag).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Literal

from adamdiag.printable import printable

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
    # Wave 2 (same schema id; readers ignore keys they do not know):
    confidence: str = "low"  # high | medium | low (docs: "Confidence")
    alternative: str | None = None  # a second verdict that also fits
    loss_tag: str | None = None  # the total-loss tag the blowup step comes from
    loss_tags: list[str] = field(default_factory=list)  # the total first, then per-task losses
    grad_norm_tag: str | None = None
    verdict_source: str = "logs"  # "logs", or "replay" when --verify overrode the log verdict
    verification: dict[str, Any] | None = None  # the --verify replay (docs: "scan --verify")
    # Downsampled curves for `report`/`show` (``adamdiag.pipeline.series``): {"loss": {"tag", "step",
    # "value"}, "grad_norm": {...}}; renderers draw from it without reading any file again.
    series: dict[str, Any] | None = None

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
    # Input problems that belong to no run (an unreadable folder, a stray file beside the runs).
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": self.schema, "tool_version": self.tool_version, "runs": []}
        if self.warnings:
            out["warnings"] = list(self.warnings)
        for r in self.runs:
            d = asdict(r)
            d["lead_time"] = r.lead_time
            if d.get("series") is None:
                d.pop("series", None)  # optional block: absent unless asked for
            out["runs"].append(d)
        safe: dict[str, Any] = json_safe(out)
        return safe

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not an {SCHEMA} report (schema={data.get('schema')!r})")
        runs = []
        known = {f.name for f in fields(RunReport)}
        known_finding = {f.name for f in fields(Finding)}
        required = [f.name for f in fields(RunReport) if f.default is MISSING and f.default_factory is MISSING]
        for i, r in enumerate(data.get("runs", [])):
            # a hand-edited or foreign file: say what is wrong, not the constructor's complaint
            if not isinstance(r, dict):
                raise ValueError(f"run {i + 1} of the report is not an object ({type(r).__name__})")
            lacking = [repr(k) for k in required if k not in r]
            if lacking:
                raise ValueError(f"run {i + 1} of the report has no {' or '.join(lacking)} field")
            # Extra fields are welcome in the contract: a report from a newer adamdiag still loads.
            r = {
                k: json_restore(v) if k in ("recommendation", "verification") else v for k, v in r.items() if k in known
            }
            r["findings"] = [
                Finding(**{k: v for k, v in json_restore(f).items() if k in known_finding})
                for f in r.get("findings", [])
            ]
            runs.append(RunReport(**r))
        return cls(
            runs=runs,
            schema=data["schema"],
            tool_version=data.get("tool_version", ""),
            warnings=list(data.get("warnings", [])),
        )


def json_restore(obj: Any) -> Any:
    """Inverse of :func:`json_safe` for dicts: ``"<key>": null`` with ``"<key>_nonfinite": "inf"``
    becomes ``float("inf")`` again (and the flag goes), so a saved report re-renders as it was.

    >>> json_restore({"a": None, "a_nonfinite": "nan", "b": {"c": None, "c_nonfinite": "-inf"}})
    {'a': nan, 'b': {'c': -inf}}
    """
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            base = k[: -len("_nonfinite")] if k.endswith("_nonfinite") else None
            if base is not None and base in obj and obj[base] is None and isinstance(v, str) and v in _NONFINITE:
                continue
            flag = obj.get(f"{k}_nonfinite")
            if v is None and isinstance(flag, str) and flag in _NONFINITE:
                out[k] = _NONFINITE[flag]
            else:
                out[k] = json_restore(v)
        return out
    if isinstance(obj, list):
        return [json_restore(v) for v in obj]
    return obj


_NONFINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def json_safe(obj: Any) -> Any:
    """Recursively replace non-finite floats by ``None`` so JSON has no NaN/Infinity literals (and make
    strings printable: :func:`adamdiag.printable.printable`).

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
    if isinstance(obj, str):
        return printable(obj)  # a path that is not UTF-8 (lone surrogates) cannot be written as JSON text
    return obj
