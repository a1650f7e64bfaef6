"""The optional ``series`` block of a report: the curves the diagnosis used, downsampled, so
``report``/``show`` draw them without reading the event files again (renderers never recompute)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adamdiag.analysis.downsample import MAX_POINTS, minmax_downsample
from adamdiag.results.report import Report


def curve(steps: Any, values: Any, tag: str, max_points: int = MAX_POINTS) -> dict[str, Any]:
    """``{"tag", "points", "step": [...], "value": [...]}``; non-finite values become ``None``
    with their kind in ``nonfinite`` (``{"<step>": "nan"|"inf"|"-inf"}``), as JSON has no NaN."""
    import math

    s, v = minmax_downsample(steps, values, max_points)
    vals: list[float | None] = []
    bad: dict[str, str] = {}
    for st, x in zip(s.tolist(), v.tolist()):
        if math.isfinite(x):
            vals.append(x)
        else:
            vals.append(None)
            bad[str(st)] = "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    out: dict[str, Any] = {"tag": tag, "points": len(values), "step": [int(x) for x in s.tolist()], "value": vals}
    if bad:
        out["nonfinite"] = bad
    return out


def attach_series(report: Report, max_points: int = MAX_POINTS) -> Report:
    """Fill ``series`` of every run from its event files (the loss and gradient-norm tags the
    diagnosis used). A run that cannot be read again keeps ``series`` empty with a warning."""
    from adamdiag.errors import InputError
    from adamdiag.io.events import read_run

    for r in report.runs:
        tags = {"loss": r.loss_tag, "grad_norm": r.grad_norm_tag}
        if not any(tags.values()):
            continue
        try:
            scalars = read_run(Path(r.run)).scalars
        except InputError as e:
            r.warnings.append(f"series not attached: {e}")
            continue
        from adamdiag.analysis.frames import series

        block: dict[str, Any] = {}
        for key, tag in tags.items():
            if tag:
                s = series(scalars, tag)
                if len(s):
                    block[key] = curve(s.index.to_numpy(), s.to_numpy(), tag, max_points)
        r.series = block or None
    return report
