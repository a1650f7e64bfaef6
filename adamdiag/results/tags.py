"""The ``adamdiag.tags/1`` result: per run, the event files (with how each was written) and one row
per (tag, kind) with count, step range and segments."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adamdiag.io.events import RunEvents

TAGS_SCHEMA = "adamdiag.tags/1"


def writer_of(info: dict[str, Any]) -> str:
    """A short description of how a file was written (what the content says, not a guess)."""
    if info.get("writer"):  # a framework's own log: its reader names the writer (io.framework_logs)
        return str(info["writer"])
    kinds = info["kinds"]
    parts = []
    if Path(info["path"]).name.endswith(".v2"):
        parts.append("tf2")
    if "simple_value" in kinds:
        parts.append("simple_value")
    if "tensor" in kinds:
        parts.append("tensor")
    if "histo" in kinds:
        parts.append("histo")
    if parts:
        return "+".join(parts)
    # No scalar or histogram: say what the file holds instead (an HParams-only file, images, ...).
    other = sorted(k for k in info.get("skipped", {}) if k not in _DAMAGE)
    if other:
        return "no scalars (" + ", ".join(other) + " only)"
    return "empty" if not info["records"] or info["records"] <= 1 else "no scalars"


# Counters of ``RunEvents.skipped`` that are damage, not plugins.
_DAMAGE = frozenset({"crc_mismatch", "corrupt_header", "truncated", "undecodable", "empty_record"})


def tag_table(r: RunEvents) -> list[dict[str, Any]]:
    """One row per (tag, kind): count, step range, segments and files it appears in."""
    rows: list[dict[str, Any]] = []
    for kind, df in (("scalar", r.scalars), ("histogram", r.histograms)):
        if df.empty:
            continue
        g = df.groupby("tag", observed=True, sort=True)
        agg = g.agg(
            count=("step", "size"), step_min=("step", "min"), step_max=("step", "max"), segments=("segment", "nunique")
        )
        for tag, row in agg.iterrows():
            rows.append(
                {
                    "tag": str(tag),
                    "kind": kind,
                    "count": int(row["count"]),
                    "step_min": int(row["step_min"]),
                    "step_max": int(row["step_max"]),
                    "segments": int(row["segments"]),
                }
            )
    return rows


def tags_result(runs: list[RunEvents]) -> dict[str, Any]:
    """The JSON object of ``adamdiag tags --format json``."""
    return {
        "schema": TAGS_SCHEMA,
        "runs": [
            {
                "run": r.run,
                "files": [{**i, "writer": writer_of(i)} for i in r.file_info],
                "tags": tag_table(r),
                "skipped": r.skipped,
                "warnings": r.warnings,
                "notes": r.notes,
                "warning_notes": r.warning_notes,
            }
            for r in runs
        ],
    }
