"""One training logged twice: a Hugging Face Trainer with ``report_to="all"`` (transformers 4's default) writes
its TensorBoard events *and* a wandb run file *and* an MLflow run; a Lightning Trainer with two loggers the same.
Scanned from a folder that holds both, each would be a run of its own — the same diagnosis twice, and a CI
``check`` counting one failure twice. A run read from a framework's own log (wandb, MLflow, trainer_state.json,
metrics.csv) whose loss series equals an event-file run's — the same steps, the same values to float32's
precision (TensorBoard stores float32) — is diagnosed once, from the event files, with a note.

>>> import pandas as pd
>>> from adamdiag.io.events import RunEvents
>>> def run(name, kind, tag, values):
...     s = pd.DataFrame({"tag": tag, "step": range(1, len(values) + 1), "value": values})
...     return RunEvents(name, s, pd.DataFrame(), [], {}, [name], [{"path": name, "kinds": {kind}}])
>>> tb = run("runs/a", "simple_value", "train/loss", [3.0, 2.0, 1.5, 1.2, 9.0])
>>> wb = run("wandb/run-x", "wandb", "loss", [3.0, 2.0, 1.5, 1.2, 9.0])
>>> logged_twice([tb, wb])
{'wandb/run-x': 'runs/a'}
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adamdiag.io.framework_logs import FRAMEWORK_LOG_KINDS

if TYPE_CHECKING:
    from adamdiag.io.events import RunEvents

# Fewer loss points than this say too little to call two logs one
MIN_POINTS = 5
# float32 (TensorBoard) against the float64 a framework's log keeps
RTOL = 1e-6


def _is_framework_log(events: RunEvents) -> bool:
    kinds = set().union(*(set(i.get("kinds", ())) for i in events.file_info)) if events.file_info else set()
    return bool(kinds) and kinds <= FRAMEWORK_LOG_KINDS


def _loss_series(events: RunEvents) -> tuple[tuple[int, ...], list[float]] | None:
    from adamdiag.analysis.tags import pick_loss_tag

    s = events.scalars
    if s is None or not len(s):
        return None
    tags = sorted(set(s["tag"].astype(str)))
    tag = pick_loss_tag(tags)
    if tag is None:
        return None
    one = s[s["tag"] == tag].sort_values("step", kind="stable")
    if len(one) < MIN_POINTS:
        return None
    return tuple(int(x) for x in one["step"]), [float(x) for x in one["value"]]


def logged_twice(runs: list[RunEvents]) -> dict[str, str]:
    """Framework-log runs whose loss series an event-file run holds too: {framework-log run: event-file run}."""
    import numpy as np

    event_runs: dict[tuple[int, ...], list[tuple[str, list[float]]]] = {}
    for e in runs:
        if not _is_framework_log(e):
            series = _loss_series(e)
            if series is not None:
                event_runs.setdefault(series[0], []).append((e.run, series[1]))
    out: dict[str, str] = {}
    for e in runs:
        if not _is_framework_log(e):
            continue
        series = _loss_series(e)
        if series is None:
            continue
        for name, values in event_runs.get(series[0], []):
            if np.allclose(series[1], values, rtol=RTOL, atol=0.0, equal_nan=True):
                out[e.run] = name
                break
    return out
