"""Views of the readers' long frame (``run, tag, step, wall_time, value, segment, source_file``)
that the analysis needs: one tag's series as the run really went. Pure pandas/numpy, no I/O."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def series(scalars: pd.DataFrame, tag: str, *, raw: bool = False) -> pd.Series:
    """Value by step of ``tag`` as the run really went.

    Where steps overlap (a restart re-logged them), the value from the later segment wins, and
    within one segment the later record wins. Rows of an earlier segment at or after the first step
    of a later segment (for this tag) are dropped: the run was restarted from there. ``raw=True`` returns every row in file order (index
    ``step``, possibly duplicated).
    """
    import numpy as np
    import pandas as pd

    sel = scalars[scalars["tag"] == tag]
    if raw:
        return pd.Series(sel["value"].to_numpy(), index=pd.Index(sel["step"].to_numpy(), name="step"), name=tag)
    # Stable sort by segment keeps the file order inside a segment, so "last" = later record.
    order = np.argsort(sel["segment"].to_numpy(), kind="stable")
    steps = sel["step"].to_numpy()[order]
    values = sel["value"].to_numpy()[order]
    segs = sel["segment"].to_numpy()[order]
    if len(segs) and segs[0] != segs[-1]:
        # A restart resumes at its first step: rows an earlier segment logged at or after that step
        # were orphaned (the run went back), as TensorBoard's purge does -- but per tag, so two
        # writers logging different tags into one directory do not purge each other.
        uniq, first = np.unique(segs, return_index=True)
        seg_min = np.minimum.reduceat(steps, first)
        cutoff = np.minimum.accumulate(np.append(seg_min[1:], np.iinfo(np.int64).max)[::-1])[::-1]
        keep = steps < cutoff[np.searchsorted(uniq, segs)]
        steps, values = steps[keep], values[keep]
    s = pd.Series(values, index=pd.Index(steps, name="step"), name=tag)
    s = s[~s.index.duplicated(keep="last")]
    return s.sort_index(kind="stable")
