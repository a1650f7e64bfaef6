"""PNG plots: the loss with the diagnosed warning and blowup steps marked, and the gradient norm.

Matplotlib is imported here only (lazily, Agg backend) so the CLI starts fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from adamdiag.results.report import Report

# (steps, values) of one scalar tag of one run; the caller reads the event files.
SeriesLoader = Callable[[str, str], tuple[Any, Any]]


def plot_runs(report: Report, load: SeriesLoader, output: Path) -> list[Path]:
    """One PNG per diagnosed run. ``output`` is a file for one run, a directory for several.

    The curves drawn are the tags the diagnosis used (``loss_tag``, ``grad_norm_tag`` of each run
    report), never a pick of its own; ``load(run, tag)`` returns their (steps, values).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    many = len(report.runs) > 1 or output.suffix.lower() != ".png"
    if many:
        output.mkdir(parents=True, exist_ok=True)
    for r in report.runs:
        loss_tag, gn_tag = r.loss_tag, r.grad_norm_tag
        fig, axes = plt.subplots(2 if gn_tag else 1, 1, figsize=(9, 6 if gn_tag else 3.5), sharex=True, squeeze=False)
        if loss_tag:
            s, v = load(r.run, loss_tag)
            axes[0, 0].semilogy(s, v, lw=0.8, label=loss_tag)
        if gn_tag:
            s, v = load(r.run, gn_tag)
            axes[1, 0].semilogy(s, v, lw=0.8, color="tab:orange", label=gn_tag)
        for ax in axes[:, 0]:
            if r.warning_step is not None:
                ax.axvline(r.warning_step, color="tab:olive", ls="--", lw=1, label=f"warning {r.warning_step}")
            if r.blowup_step is not None:
                ax.axvline(r.blowup_step, color="tab:red", ls="--", lw=1, label=f"blowup {r.blowup_step}")
            ax.legend(loc="best", fontsize=8)
        axes[0, 0].set_title(f"{r.run}: {r.verdict}")
        axes[-1, 0].set_xlabel("step")
        name = Path(r.run).name or "run"
        path = output / f"{name}.png" if many else output
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
