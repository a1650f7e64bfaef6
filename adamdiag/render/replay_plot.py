"""PNG overlay of the replayed loss curves against the logged one (matplotlib, Agg, imported lazily)."""

from __future__ import annotations

import math
from pathlib import Path

from adamdiag.errors import InputError
from adamdiag.render.plot import log_y, tight
from adamdiag.replay.result import ReplayResult


def check_plot_target(path: Path) -> None:
    """InputError (one line) when ``--plot PATH`` cannot be written: checked before the replay runs,
    which may take hours — not after it, as a matplotlib error. A directory is fine (it gets
    ``replay_<step>.png``); a file needs an existing writable folder and a type matplotlib writes."""
    import os

    path = Path(path)
    if path.is_dir():
        folder = path
    else:
        folder = path.parent
        if path.suffix:
            from matplotlib.backend_bases import FigureCanvasBase

            types = FigureCanvasBase.get_supported_filetypes()
            if path.suffix[1:].lower() not in types:
                raise InputError(
                    f"--plot {path}: {path.suffix} is no image type matplotlib writes (use .png, .svg or .pdf)"
                )
    if not folder.is_dir():
        raise InputError(f"--plot: directory {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise InputError(f"--plot: directory {folder} is not writable")


def plot_replay(result: ReplayResult, path: Path) -> Path:
    """Write the overlay to ``path`` (a directory gets ``replay_<step>.png``); returns the file written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.is_dir():
        path = path / f"replay_{result.start_step}.png"
    check_plot_target(path)
    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=110)
    ls, lv = result.logged.get("steps", []), result.logged.get("values", [])
    if ls:
        ax.plot(
            ls,
            [v if v is not None else math.nan for v in lv],
            color="black",
            lw=2.2,
            alpha=0.35,
            label=f"logged {result.loss_tag}",
        )
    for i, v in enumerate(result.variants):
        steps = list(range(result.start_step + 1, result.start_step + 1 + len(v.losses)))
        vals = [x if x is not None and math.isfinite(x) and x > 0 else math.nan for x in v.losses]
        style = {"color": "tab:red", "lw": 1.4} if i == 0 else {"lw": 1.1}
        label = f"{v.name} ({v.outcome}{' @ ' + str(v.blowup_step) if v.blowup_step is not None else ''})"
        ax.plot(steps, vals, label=label, **style)
        if v.spike_step is not None:
            k = v.spike_step - result.start_step - 1
            if 0 <= k < len(vals) and math.isfinite(vals[k]):
                ax.plot([v.spike_step], [vals[k]], marker="x", ms=8, color=ax.lines[-1].get_color())
    ax.axvline(result.start_step, color="gray", ls=":", lw=1)
    if result.fidelity.logged_spike_step is not None:
        ax.axvline(result.fidelity.logged_spike_step, color="black", ls="--", lw=0.8, label="logged blowup")
    ref = result.reference
    if ref.get("level"):
        ax.axhline(ref["level"], color="gray", ls="--", lw=0.8, label="level before the checkpoint")
    positive = [x for x in lv if x is not None and x > 0] + [
        x for v in result.variants for x in v.losses if x is not None and math.isfinite(x) and x > 0
    ]
    if positive:
        log_y(ax)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(result.loss_tag)
    status = "reproduced" if result.fidelity.reproduced else "NOT reproduced"
    ax.set_title(f"replay from step {result.start_step} ({status}; {result.conclusion})", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    tight(fig)
    try:
        fig.savefig(path)
    except OSError as e:  # the folder changed under the replay, or a file system that refuses it
        raise InputError(f"--plot: cannot write {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return path
