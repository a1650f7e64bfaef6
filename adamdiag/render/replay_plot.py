"""PNG overlay of the replayed loss curves against the logged one (matplotlib, Agg, imported lazily)."""

from __future__ import annotations

import math
from pathlib import Path

from adamdiag.errors import InputError
from adamdiag.replay.result import ReplayResult


def plot_replay(result: ReplayResult, path: Path) -> Path:
    """Write the overlay to ``path`` (a directory gets ``replay_<step>.png``); returns the file written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.is_dir():
        path = path / f"replay_{result.start_step}.png"
    if not path.parent.exists():
        raise InputError(f"--plot: directory {path.parent} does not exist")
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
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(result.loss_tag)
    status = "reproduced" if result.fidelity.reproduced else "NOT reproduced"
    ax.set_title(f"replay from step {result.start_step} ({status}; {result.conclusion})", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
