"""``tags`` and ``export``: what is in the event files, and the long frame on disk.

The CLI side of the event reader: it owns the progress bar and the warnings on stderr; the data
goes to stdout (tags) or to the output file (export).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from adamdiag.cli.app import app, emit, guarded
from adamdiag.cli.options import RunsArg, TableFormat, TableFormatOpt
from adamdiag.console import progress_shown, stderr_console
from adamdiag.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from adamdiag.io.events import RunEvents

MAX_WARNINGS_SHOWN = 20
# Reads smaller than this finish before a bar would be worth drawing.
PROGRESS_MIN_BYTES = 32 << 20


def load_runs(runs: Sequence[Path], *, check_crc: bool = True) -> list[RunEvents]:
    """Read all runs with a rich progress bar on stderr (for long reads) and warnings on stderr.

    A run that cannot be read, a stray 'tfevents' file or an unreadable folder is a warning; only
    when nothing at all could be read is it an error."""
    from adamdiag.console import warn_all
    from adamdiag.io.events import find_runs, read_runs, run_files

    found = find_runs(runs)
    total = 0
    for r in found:
        try:
            total += sum(f.stat().st_size for f in run_files(r))
        except (OSError, InputError):
            pass  # read_runs reports it
    console = stderr_console()
    problems: list = []
    if total >= PROGRESS_MIN_BYTES and progress_shown():  # not with -q, under CI=true or into a pipe
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
            result = read_runs(
                runs,
                check_crc=check_crc,
                problems=problems,
                progress=lambda done, tot: bar.update(task, completed=done),
            )
    else:
        result = read_runs(runs, check_crc=check_crc, problems=problems)
    if not result:
        raise InputError(problems[0].message if problems else "nothing readable")
    # One line per kind of problem: 2000 runs with the same damage are one line "(× 2000 alike)".
    warn_all([p.message for p in problems] + [w for ev in result for w in ev.warnings], limit=MAX_WARNINGS_SHOWN)
    return result


def run_tags(runs: Sequence[Path], fmt: str = "text") -> str:
    """The `tags` command: tags, kind, counts, step ranges, files/writers, as text, json or csv."""
    from adamdiag.render.tags import render_tags_csv, render_tags_text
    from adamdiag.results.tags import tags_result

    if fmt not in ("text", "json", "csv"):
        raise InputError(f"unknown format {fmt!r} (use text, json or csv)")
    result = load_runs(runs)
    if fmt == "json":
        return json.dumps(tags_result(result), indent=2)
    if fmt == "csv":
        return render_tags_csv(result)
    return render_tags_text(result)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate per-run frames keeping the string columns categorical (union of categories).

    Runs without rows (an hparams-only event file) are left out: their empty categories have
    another dtype (object, not str, under pandas 3) and would make the union fail."""
    import pandas as pd
    from pandas.api.types import union_categoricals

    nonempty = [f for f in frames if len(f)]
    if len(nonempty) <= 1:
        return nonempty[0] if nonempty else frames[0]
    frames = nonempty
    cat_cols = [c for c in frames[0].columns if isinstance(frames[0][c].dtype, pd.CategoricalDtype)]
    out = pd.concat(frames, ignore_index=True)
    for c in cat_cols:
        out[c] = union_categoricals([f[c].cat.rename_categories(f[c].cat.categories.astype(str)) for f in frames])
    return out


HISTOGRAM_STATS = ["min", "max", "sum", "sum_squares"]


def hollow_histograms(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The histogram frame to write, and one warning per (run, tag) whose rows say nothing.

    - ``num = 0``: the histogram of no values (TF2's ``tf.summary.histogram`` of an empty tensor is a
      ``[0, 3]`` bucket tensor, read as zeros; TF1 writes min/max = ±DBL_MAX; ``add_histogram_raw`` takes
      any numbers). Its min, max, sum and sum_squares mean nothing: written empty (NaN), never as values.
    - a tag whose every row is ``min = max = 0``: the tensor logged was exactly zero each time (a gradient
      histogram taken before ``backward()`` or after ``zero_grad``, a parameter that gets no gradient). The
      rows are true and are written; the warning says that the tag carries no signal.
    """
    import numpy as np

    if not len(frame):
        return frame, []
    num = frame["num"].to_numpy(np.float64)
    empty = num == 0
    stats = frame[HISTOGRAM_STATS].to_numpy(np.float64)
    zero = ~empty & (stats == 0).all(axis=1)
    keys = list(zip(frame["run"].astype(str), frame["tag"].astype(str)))
    count: dict[tuple[str, str], list[int]] = {}  # (run, tag) -> [rows, empty rows, all-zero rows]
    for key, e, z in zip(keys, empty.tolist(), zero.tolist()):
        c = count.setdefault(key, [0, 0, 0])
        c[0] += 1
        c[1] += e
        c[2] += z
    warnings = []
    for (run, tag), (n, n_empty, n_zero) in count.items():
        if n_empty:
            warnings.append(
                f"histogram '{tag}' in {run}: {n_empty} of {n} rows hold no values (num = 0); their "
                f"{', '.join(HISTOGRAM_STATS)} are written empty"
            )
        if n_zero and n_zero + n_empty == n:
            warnings.append(
                f"histogram '{tag}' in {run} is all zeros in every row ({n_zero}: min = max = sum = 0): the tensor "
                "logged was exactly 0 each time (a gradient logged before backward() or of a parameter that gets none)"
            )
    if empty.any():
        frame = frame.copy()
        frame.loc[empty, HISTOGRAM_STATS] = np.nan
    return frame, warnings


def run_export(runs: Sequence[Path], output: Path | str, histograms: bool = False) -> None:
    """The `export` command: the long frame of all runs to ``output`` (.parquet or .csv; ``-`` is
    CSV on stdout, for pipes)."""
    to_stdout = str(output) == "-"
    output = Path(output)
    suffix = ".csv" if to_stdout else output.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise InputError(
            f"unknown output format {output.suffix or '(none)'!r} for {output}: use .parquet or .csv (or - for CSV on stdout)"
        )
    from adamdiag.io.events import find_runs, run_files

    if not to_stdout:
        inputs = {f.resolve() for r in find_runs(runs) for f in run_files(r)} | {Path(r).resolve() for r in runs}
        if output.resolve() in inputs:
            raise InputError(f"refusing to overwrite input {output}")
        if output.exists() and output.is_dir():
            raise InputError(f"output {output} is a directory")
    result = load_runs(runs)
    frame = _concat([r.histograms if histograms else r.scalars for r in result])
    kind = "histogram" if histograms else "scalar"
    if histograms:
        from adamdiag.console import warn_all

        frame, hollow = hollow_histograms(frame)
        warn_all(hollow, limit=MAX_WARNINGS_SHOWN)
    if to_stdout:
        frame.to_csv(sys.stdout, index=False)
        return
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
    from adamdiag.console import QUIET

    if not QUIET:
        sys.stderr.write(f"wrote {len(frame)} {kind} rows from {len(result)} run(s) to {output}\n")


@app.command()
@guarded
def tags(runs: RunsArg, format: TableFormatOpt = TableFormat.text) -> None:
    """Tags of the event files: kind, count, step range, writer."""
    emit(run_tags(runs, fmt=format.value))


@app.command()
@guarded
def export(
    runs: RunsArg,
    output: Annotated[
        str,
        typer.Option(
            "--output", "-o", metavar="FILE", help="out.parquet, out.csv, or - for CSV on stdout (for pipes)."
        ),
    ],
    histograms: Annotated[bool, typer.Option("--histograms", help="Export the histogram frame instead.")] = False,
) -> None:
    """Write the long frame (run, tag, step, wall_time, value, segment, source_file) to parquet/csv."""
    run_export(runs, output, histograms=histograms)
