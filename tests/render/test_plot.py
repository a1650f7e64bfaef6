"""`plot` reads at a glance and never surprises: -o X.png/.svg is one image (an error with several
runs), another suffix an error, else a directory with names from the run paths that never overwrite, axis labels,
log ticks from 1e-8 to 1e3, steps near 2**62, a clear exit 2 when there is nothing to draw, and no
matplotlib warning on stderr. Runs written by torch's SummaryWriter."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adamdiag.cli import app

runner = CliRunner()


def write(logdir: Path, values: list[float], *, tag: str = "loss", start: int = 0) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(logdir))
    for i, v in enumerate(values):
        w.add_scalar(tag, v, start + i)
    w.close()
    return logdir


def decay(n: int = 120, hi: float = 1e3, lo: float = 1e-8) -> list[float]:
    """From 1e3 down to 1e-8: eleven decades on one axis."""
    return [hi * (lo / hi) ** (i / (n - 1)) for i in range(n)]


def plot(*args: str):
    res = runner.invoke(app, ["plot", *map(str, args)])
    assert "Warning" not in res.stderr and "warn(" not in res.stderr, res.stderr
    return res


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    for s in ("sweepA", "sweepB"):  # two runs both called `run`: their images must not collide
        write(root / s / "run", decay())
    return root


def test_directory_names_from_run_paths_never_overwritten(sweep, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "adamdiag-plots"
    out.mkdir()
    (out / "sweepA__run.png").write_bytes(b"an earlier plot")  # e.g. from yesterday's scan
    res = plot(sweep)  # default -o: adamdiag-plots/
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["sweepA__run-1.png", "sweepA__run.png", "sweepB__run.png"]
    assert (out / "sweepA__run.png").read_bytes() == b"an earlier plot"
    assert (out / "sweepB__run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_image_file_is_for_one_run(sweep, tmp_path):
    res = plot(sweep, "-o", tmp_path / "x.png")
    assert res.exit_code == 2 and "is one image but there are 2 runs" in res.stderr
    assert not (tmp_path / "x.png").exists()
    svg = tmp_path / "one.svg"
    res = plot(sweep / "sweepA" / "run", "-o", svg)
    assert res.exit_code == 0, res.output
    text = svg.read_text()
    assert "loss (log scale)" in text and ">step<" in text  # axis labels, as SVG text


def test_a_file_name_of_another_type_is_no_folder(sweep, tmp_path):
    """-o x.jpg / x.txt names a file of a type plot does not write: an error, not a folder called x.txt;
    an existing directory with a dot in its name is still a directory."""
    res = plot(sweep / "sweepA" / "run", "-o", tmp_path / "x.txt")
    assert res.exit_code == 2 and ".txt is no image type" in res.stderr, res.output
    assert not (tmp_path / "x.txt").exists()
    (tmp_path / "plots.v2").mkdir()
    res = plot(sweep / "sweepA" / "run", "-o", tmp_path / "plots.v2")
    assert res.exit_code == 0, res.output
    assert [p.suffix for p in (tmp_path / "plots.v2").iterdir()] == [".png"]


def test_log_ticks_cover_1e_minus8_to_1e3():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from adamdiag.render.plot import _figure
    from adamdiag.results.report import RunReport

    fig = _figure(RunReport(run="r", verdict="healthy", loss_tag="loss"), (np.arange(120), decay()), None)
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    ticks = [t for t in ax.get_yticks() if lo <= t <= hi]
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "loss (log scale)" and ax.get_xlabel() == "step"
    assert min(ticks) <= 1e-8 and max(ticks) >= 1e3 and len(ticks) >= 6  # labelled decades, not one or two
    plt.close(fig)


def test_huge_steps_keep_their_spacing(tmp_path):
    start = 2**62
    run = write(tmp_path / "huge", decay(60, 1.0, 1e-3), start=start)
    svg = tmp_path / "huge.svg"
    res = plot(run, "-o", svg)
    assert res.exit_code == 0, res.output
    assert f"step − {start}" in svg.read_text()
    # float64 alone would put all 60 points on 1 or 2 x positions (spacing 1024 at 2**62)
    assert math.ulp(float(start)) > 60


def test_nothing_to_plot_is_exit_2(tmp_path):
    run = write(tmp_path / "nolosss", [0.1, 0.2, 0.3], tag="lr")
    res = plot(run, "-o", tmp_path / "x.png")
    assert res.exit_code == 2
    assert (
        res.stderr.strip().startswith("adamdiag: error: nothing to plot") and len(res.stderr.strip().splitlines()) == 1
    )
    assert not (tmp_path / "x.png").exists()
