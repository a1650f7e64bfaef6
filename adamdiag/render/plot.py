"""Plots: the loss with the diagnosed warning and blowup steps marked, and the gradient norm.

``-o X.png`` / ``-o X.svg`` is one image (one run); any other ``-o`` is a directory with one PNG
per run, named from the run's path relative to the runs' common prefix, never overwriting a file.
Matplotlib is imported here only (lazily, Agg backend) so the CLI starts fast; its warnings never
reach the user's terminal (every case that would warn is handled here instead).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adamdiag.errors import InputError
from adamdiag.printable import printable
from adamdiag.results.report import Report, RunReport

# (steps, values) of one scalar tag of one run; the caller reads the event files.
SeriesLoader = Callable[[str, str], tuple[Any, Any]]
IMAGE_SUFFIXES = (".png", ".svg")
# float64 holds integers exactly up to 2**53; larger steps are drawn relative to the first one.
EXACT_STEP_LIMIT = 1 << 52
# Wider log axes have no minor ticks (tick marks only, no labels there, and slow: see ``tight``).
MINOR_TICKS_MAX_DECADES = 2


def plot_targets(runs: list[str], output: Path) -> list[Path]:
    """Where each run's image goes (pure; creates nothing).

    Raises :class:`InputError` for an image file name with more than one run."""
    if output.suffix.lower() in IMAGE_SUFFIXES:
        if len(runs) > 1:
            raise InputError(
                f"-o {output} is one image but there are {len(runs)} runs: give a directory (e.g. -o adamdiag-plots)"
            )
        return [output]
    if output.exists() and not output.is_dir():
        raise InputError(f"-o {output} exists and is not a directory")
    parts = [Path(r).resolve().parts for r in runs]
    k = 0
    if len(parts) > 1:
        shortest = min(len(p) for p in parts) - 1
        while k < shortest and len({p[: k + 1] for p in parts}) == 1:
            k += 1
    else:
        k = len(parts[0]) - 1 if parts else 0
    taken: set[Path] = set()
    out = []
    for p in parts:
        stem = "__".join(p[k:]) or "run"
        path, i = output / f"{stem}.png", 1
        while path in taken or path.exists():  # never overwrite: an earlier plot or another run's
            path, i = output / f"{stem}-{i}.png", i + 1
        taken.add(path)
        out.append(path)
    return out


def _steps_axis(steps: Any) -> tuple[Any, int]:
    """(x values as float64, offset subtracted): exact even for steps near 2**62."""
    import numpy as np

    steps = np.asarray(steps, np.int64)
    if len(steps) and int(np.abs(steps).max()) > EXACT_STEP_LIMIT:
        off = int(steps.min())
        return (steps - off).astype(np.float64), off
    return steps.astype(np.float64), 0


_SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


def _plain_tick(label: str) -> str:
    """matplotlib's log tick label ``$\\mathdefault{2\\times10^{-3}}$`` as plain text ``2×10⁻³``."""
    m = re.fullmatch(r"\$\\mathdefault\{(.*)\}\$", label)
    if not m:
        return label
    body = re.sub(r"\^\{([^}]*)\}", lambda e: e.group(1).translate(_SUPERSCRIPT), m.group(1))
    return body.replace("\\times", "×").replace("\\mathdefault", "").replace("{", "").replace("}", "")


def log_y(ax: Any) -> None:
    """Log y axis whose tick labels are plain text (10⁻³, 2×10⁻³), the same ticks matplotlib labels.

    Its own labels are mathtext, which matplotlib parses (pyparsing) for every tick at every draw:
    that was ~60% of the HTML report's time (12 figures, 5.6 s CPU of it on the sample runs)."""
    from matplotlib.ticker import LogFormatterSciNotation

    class PlainLogFormatter(LogFormatterSciNotation):
        def __call__(self, x: float, pos: int | None = None) -> str:
            return _plain_tick(super().__call__(x, pos))

    ax.set_yscale("log")  # resets the formatters: set ours after it, as the log scale sets its own
    ax.yaxis.set_major_formatter(PlainLogFormatter(base=10))
    ax.yaxis.set_minor_formatter(PlainLogFormatter(base=10, labelOnlyBase=False))


def tight(fig: Any) -> None:
    """Lay the figure out once, cheaply; call it last, when every artist is drawn.

    - A log y axis over more than ``MINOR_TICKS_MAX_DECADES`` decades loses its minor ticks: they are
      unlabelled marks there (matplotlib labels minor ticks only below ~1 decade), yet each is a Tick
      object whose text is measured at layout and at draw — half the layout time of the HTML report.
    - ``fig.tight_layout()`` leaves a layout engine on the figure, and with one set savefig draws the
      whole figure a second time (drawing disabled) to lay it out again: the margins are computed
      once here instead, and then fixed."""
    import math

    from matplotlib.layout_engine import TightLayoutEngine
    from matplotlib.ticker import NullLocator

    for ax in fig.axes:
        if ax.get_yscale() == "log":
            lo, hi = ax.get_ylim()
            if lo > 0 and hi > 0 and abs(math.log10(hi / lo)) > MINOR_TICKS_MAX_DECADES:
                ax.yaxis.set_minor_locator(NullLocator())
    TightLayoutEngine().execute(fig)


def _draw(ax: Any, steps: Any, values: Any, *, label: str, ylabel: str, color: str) -> None:
    """One curve; log y when every finite value is positive (so 1e-8 and 1e3 both read), else linear."""
    import numpy as np
    from matplotlib.ticker import LogLocator

    v = np.asarray(values, np.float64)
    v = np.where(np.isfinite(v), v, np.nan)  # NaN/Inf: a gap in the line (the findings say where)
    finite = v[np.isfinite(v)]
    ax.plot(steps, v, lw=0.8, color=color, label=label)
    if len(finite) and finite.min() > 0:
        log_y(ax)
        ax.yaxis.set_major_locator(LogLocator(base=10, numticks=12))
        ylabel += " (log scale)"
    ax.set_ylabel(ylabel)


def plot_run(r: RunReport, load: SeriesLoader, path: Path) -> bool:
    """Draw one run into ``path``; False (nothing written) when it has no loss points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = load(r.run, r.loss_tag) if r.loss_tag else None
    if loss is None or len(loss[0]) == 0:
        return False
    gn = load(r.run, r.grad_norm_tag) if r.grad_norm_tag else None
    if gn is not None and len(gn[0]) == 0:
        gn = None
    path.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # SVG text stays text: smaller, searchable
        fig = _figure(r, loss, gn)
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _figure(r: RunReport, loss: tuple[Any, Any], gn: tuple[Any, Any] | None) -> Any:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2 if gn else 1, 1, figsize=(9, 6 if gn else 3.5), sharex=True, squeeze=False)
    x, off = _steps_axis(loss[0])
    _draw(axes[0, 0], x, loss[1], label=r.loss_tag or "loss", ylabel="loss", color="tab:blue")
    if gn:
        xg, _ = _steps_axis(gn[0]) if not off else ((gn[0] - off).astype("float64"), off)
        _draw(axes[1, 0], xg, gn[1], label=r.grad_norm_tag or "grad norm", ylabel="gradient norm", color="tab:orange")
    for ax in axes[:, 0]:
        if r.warning_step is not None:
            ax.axvline(r.warning_step - off, color="tab:olive", ls="--", lw=1, label=f"warning step {r.warning_step}")
        if r.blowup_step is not None:
            ax.axvline(r.blowup_step - off, color="tab:red", ls="--", lw=1, label=f"blowup step {r.blowup_step}")
        ax.legend(loc="best", fontsize=8)  # always has the curve's label: no "no artists" warning
        ax.grid(True, which="major", alpha=0.3)
    axes[0, 0].set_title(printable(f"{r.run}: {r.verdict}"), fontsize=10)
    axes[-1, 0].set_xlabel(f"step − {off}" if off else "step")
    tight(fig)
    return fig


def plot_runs(report: Report, load: SeriesLoader, output: Path) -> tuple[list[Path], list[str]]:
    """(images written, runs skipped with the reason). One image per run with a loss curve; the
    curves are the tags the diagnosis used (``loss_tag``, ``grad_norm_tag``), never a pick of its own.

    Raises :class:`InputError` when no run has anything to draw."""
    import warnings

    targets = plot_targets([r.run for r in report.runs], Path(output))
    written: list[Path] = []
    reasons: list[str] = []  # "RUN: why", for each run with nothing to draw
    with warnings.catch_warnings():
        # Whatever matplotlib still finds worth a warning (fonts, layout) is not the user's problem.
        warnings.simplefilter("ignore")
        for r, path in zip(report.runs, targets):
            try:
                drawn = plot_run(r, load, path)
            except OSError as e:  # a folder that cannot be made or written (read-only, /proc): one line
                raise InputError(f"cannot write {path}: {e.strerror or e}") from None
            if drawn:
                written.append(path)
            else:
                why = f"no points in '{r.loss_tag}'" if r.loss_tag else "no loss scalar found; name it with --loss-tag"
                reasons.append(f"{r.run}: {why}")
    if not written:
        raise InputError("nothing to plot: " + "; ".join(reasons))
    return written, [f"nothing to plot in {why}" for why in reasons]
