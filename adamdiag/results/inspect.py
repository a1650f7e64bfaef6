"""The ``adamdiag.inspect/1`` result (docs/architecture.md, "Contracts"): checkpoints with per-tensor statistics, and pairs."""

from __future__ import annotations

from typing import Any

SCHEMA = "adamdiag.inspect/1"


def to_json_obj(summaries: list[Any], pairs: list[dict[str, Any]]) -> dict[str, Any]:
    from adamdiag import __version__
    from adamdiag.results.report import json_safe

    out: dict[str, Any] = json_safe(
        {"schema": SCHEMA, "tool_version": __version__, "checkpoints": [s.to_dict() for s in summaries], "pairs": pairs}
    )
    return out
