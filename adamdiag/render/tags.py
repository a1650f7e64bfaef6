"""Renderers of the tags result: a text listing per run, or CSV rows."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from adamdiag.results.tags import tag_table, writer_of

if TYPE_CHECKING:
    from adamdiag.io.events import RunEvents


def render_tags_csv(result: list[RunEvents]) -> str:
    """One CSV row per (run, tag, kind)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "tag", "kind", "count", "step_min", "step_max", "segments"])
    for r in result:
        for t in tag_table(r):
            w.writerow([r.run, t["tag"], t["kind"], t["count"], t["step_min"], t["step_max"], t["segments"]])
    return buf.getvalue()


def render_tags_text(result: list[RunEvents]) -> str:
    """Per run: its files and writers, then an aligned tag table."""
    lines: list[str] = []
    for r in result:
        lines.append(f"run {r.run}")
        for i in r.file_info:
            lines.append(
                f"  file[{i['segment']}] {_file_name(r.run, i['path'])}  {i['records']} records, {i['size']} bytes, "
                f"writer {writer_of(i)}"
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
        for note in r.notes:  # how the reader read it (a restart's purge, DeepSpeed's samples axis)
            lines.append(f"  note: {note}")
        for note in r.warning_notes:  # what it had to assume (a writer given no step)
            lines.append(f"  warning: {note}")
        if r.warnings:
            lines.append(f"  warnings: {len(r.warnings)} (see stderr)")
    return "\n".join(lines)


def _file_name(run: str, path: str) -> str:
    """A file's name as the run holds it: ``train/events…`` for a split folder's, ``Loss_val/events…`` for a
    writer child's (two add_scalars children's files often have the same name), the bare name otherwise."""
    parent, file = Path(run), Path(path)
    # (a run given as one event file is that file: its name, without asking the file system — a renderer)
    if file == parent or not file.is_relative_to(parent):
        return file.name
    return file.relative_to(parent).as_posix()
