"""`adamdiag tags` and `adamdiag export`: what is in the event files, and the long frame on disk.

These are the CLI side of the event reader: they own the progress bar and the warnings on stderr;
the data goes to stdout (tags) or to the output file (export).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamdiag.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from adamdiag.io.events import RunEvents

TAGS_SCHEMA = "adamdiag.tags/1"
MAX_WARNINGS_SHOWN = 20
# Reads smaller than this finish before a bar would be worth drawing.
PROGRESS_MIN_BYTES = 32 << 20


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), highlight=False, soft_wrap=True)


def load_runs(runs: Sequence[Path], *, check_crc: bool = True) -> list[RunEvents]:
    """Read all runs with a rich progress bar on stderr (for long reads) and warnings on stderr."""
    from adamdiag.io.events import find_runs, read_runs, run_files

    found = find_runs(runs)
    total = sum(f.stat().st_size for r in found for f in run_files(r))
    console = _stderr_console()
    if total >= PROGRESS_MIN_BYTES and console.is_terminal:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn("reading event files"),
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("read", total=total)
            result = read_runs(found, check_crc=check_crc, progress=lambda done, tot: bar.update(task, completed=done))
    else:
        result = read_runs(found, check_crc=check_crc)
    for r in result:
        for w in r.warnings[:MAX_WARNINGS_SHOWN]:
            console.print(f"adamdiag: warning: {w}", markup=False)
        if len(r.warnings) > MAX_WARNINGS_SHOWN:
            console.print(
                f"adamdiag: warning: {r.run}: {len(r.warnings) - MAX_WARNINGS_SHOWN} more warnings", markup=False
            )
    return result


def _writer(info: dict[str, Any]) -> str:
    """A short description of how a file was written (what the content says, not a guess)."""
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
    return "+".join(parts) or (info["file_version"] or "empty")


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


def run_tags(runs: Sequence[Path], fmt: str = "text") -> str:
    """The `tags` command: tags, kind, counts, step ranges, files/writers, as text, json or csv."""
    if fmt not in ("text", "json", "csv"):
        raise InputError(f"unknown format {fmt!r} (use text, json or csv)")
    result = load_runs(runs)
    if fmt == "json":
        out = {
            "schema": TAGS_SCHEMA,
            "runs": [
                {
                    "run": r.run,
                    "files": [{**i, "writer": _writer(i)} for i in r.file_info],
                    "tags": tag_table(r),
                    "skipped": r.skipped,
                    "warnings": r.warnings,
                }
                for r in result
            ],
        }
        return json.dumps(out, indent=2)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["run", "tag", "kind", "count", "step_min", "step_max", "segments"])
        for r in result:
            for t in tag_table(r):
                w.writerow([r.run, t["tag"], t["kind"], t["count"], t["step_min"], t["step_max"], t["segments"]])
        return buf.getvalue()
    lines: list[str] = []
    for r in result:
        lines.append(f"run {r.run}")
        for i in r.file_info:
            lines.append(
                f"  file[{i['segment']}] {Path(i['path']).name}  {i['records']} records, {i['size']} bytes, "
                f"writer {_writer(i)}"
            )
        table = tag_table(r)
        if table:
            width = max(len(t["tag"]) for t in table)
            lines.append(f"  {'tag':<{width}}  {'kind':<9}  {'count':>9}  steps")
            for t in table:
                seg = f"  ({t['segments']} segments)" if t["segments"] > 1 else ""
                lines.append(
                    f"  {t['tag']:<{width}}  {t['kind']:<9}  {t['count']:>9}  {t['step_min']}..{t['step_max']}{seg}"
                )
        else:
            lines.append("  no scalar or histogram tags")
        if r.skipped:
            lines.append("  skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(r.skipped.items())))
        if r.warnings:
            lines.append(f"  warnings: {len(r.warnings)} (see stderr)")
    return "\n".join(lines)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate per-run frames keeping the string columns categorical (union of categories)."""
    import pandas as pd
    from pandas.api.types import union_categoricals

    if len(frames) == 1:
        return frames[0]
    cat_cols = [c for c in frames[0].columns if isinstance(frames[0][c].dtype, pd.CategoricalDtype)]
    out = pd.concat(frames, ignore_index=True)
    for c in cat_cols:
        out[c] = union_categoricals([f[c] for f in frames])
    return out


def run_export(runs: Sequence[Path], output: Path, histograms: bool = False) -> None:
    """The `export` command: the long frame of all runs to ``output`` (.parquet or .csv)."""
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise InputError(f"unknown output format {output.suffix or '(none)'!r} for {output}: use .parquet or .csv")
    from adamdiag.io.events import find_runs, run_files

    inputs = {f.resolve() for r in find_runs(runs) for f in run_files(r)} | {Path(r).resolve() for r in runs}
    if output.resolve() in inputs:
        raise InputError(f"refusing to overwrite input {output}")
    if output.exists() and output.is_dir():
        raise InputError(f"output {output} is a directory")
    result = load_runs(runs)
    frame = _concat([r.histograms if histograms else r.scalars for r in result])
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        if suffix == ".parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise InputError(
                    "writing parquet needs pyarrow (pip install 'adamdiag[parquet]'); or use .csv"
                ) from None
            frame.to_parquet(output, index=False)
        else:
            frame.to_csv(output, index=False)
    except OSError as e:
        raise InputError(f"cannot write {output}: {e.strerror or e}") from None
    kind = "histogram" if histograms else "scalar"
    sys.stderr.write(f"wrote {len(frame)} {kind} rows from {len(result)} run(s) to {output}\n")
