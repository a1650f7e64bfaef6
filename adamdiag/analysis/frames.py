"""Views of the readers' long frame (``run, tag, step, wall_time, value, segment, source_file``)
that the analysis needs: one tag's series as the run really went. Pure pandas/numpy, no I/O."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


def series(scalars: pd.DataFrame, tag: str, *, raw: bool = False) -> pd.Series:
    """Value by step of ``tag`` as the run really went.

    Where steps overlap (a restart re-logged them), the value from the later segment wins, and
    within one segment the later record wins. Rows of an earlier segment at or after the first step
    of a later segment (for this tag) are dropped: the run was restarted from there. ``raw=True`` returns every row in file order (index
    ``step``, possibly duplicated).
    """
    import pandas as pd

    sel = scalars[scalars["tag"] == tag]
    if raw:
        return pd.Series(sel["value"].to_numpy(), index=pd.Index(sel["step"].to_numpy(), name="step"), name=tag)
    order = run_order(sel["step"].to_numpy(), sel["segment"].to_numpy())
    return pd.Series(
        sel["value"].to_numpy()[order], index=pd.Index(sel["step"].to_numpy()[order], name="step"), name=tag
    )


def run_order(steps: Any, segments: Any) -> Any:
    """Positions of one tag's rows (``steps``/``segments`` in file order) that make its curve as the run
    really went, in step order: one row per step, the later segment's and within a segment the later
    record's; rows an earlier segment logged at or after a later segment's first step are dropped (a
    restart resumed there: those steps were undone). Shared by scalars (:func:`series`) and histograms.

    >>> run_order([0, 1, 2, 3, 1, 2], [0, 0, 0, 0, 1, 1]).tolist()  # restarted from step 1, died at 2
    [0, 4, 5]
    """
    import numpy as np

    steps, segs = np.asarray(steps), np.asarray(segments)
    # Stable sort by segment keeps the file order inside a segment, so "last" = later record.
    order = np.argsort(segs, kind="stable")
    steps, segs = steps[order], segs[order]
    if len(segs) and segs[0] != segs[-1]:
        # A restart resumes at its first step: rows an earlier segment logged at or after that step
        # were orphaned (the run went back), as TensorBoard's purge does -- but per tag, so two
        # writers logging different tags into one directory do not purge each other.
        uniq, first = np.unique(segs, return_index=True)
        seg_min = np.minimum.reduceat(steps, first)
        cutoff = np.minimum.accumulate(np.append(seg_min[1:], np.iinfo(np.int64).max)[::-1])[::-1]
        keep = steps < cutoff[np.searchsorted(uniq, segs)]
        order, steps = order[keep], steps[keep]
    # the last row of each step (reverse, first occurrence), then step order (stable: ties keep file order)
    _, last_rev = np.unique(steps[::-1], return_index=True)
    last = len(steps) - 1 - last_rev  # one position per distinct step, ascending by step
    return order[last]
