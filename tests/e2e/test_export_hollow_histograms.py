"""`export --histograms` never writes rows that say nothing without saying so (review F15, item 4).

Two real ways torch's SummaryWriter writes them: ``add_histogram`` of a tensor that is exactly zero (a
gradient histogram logged before ``backward()``, a frozen parameter: min = max = sum = 0 at every step)
and ``add_histogram_raw`` with ``num=0`` (what TF2 writes for an empty tensor, read as zeros): the first
are true and kept, with one warning naming the tag; the second have no values, so their min, max, sum
and sum_squares are written empty, with one warning naming the tag and how many rows."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from adamdiag.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    out = tmp_path_factory.mktemp("hollow") / "run"
    w = SummaryWriter(str(out))
    g = torch.Generator().manual_seed(0)
    for step in range(4):
        w.add_scalar("loss", 1.0 / (step + 1), step)
        w.add_histogram("grads/fc.weight", torch.randn(64, generator=g), step)
        w.add_histogram("grads/frozen.weight", torch.zeros(64), step)
        if step == 2:
            w.add_histogram_raw(
                "act/out",
                min=0,
                max=0,
                num=0,
                sum=0,
                sum_squares=0,
                bucket_limits=[],
                bucket_counts=[],
                global_step=step,
            )
        else:
            w.add_histogram("act/out", torch.rand(16, generator=g) + 0.5, step)
    w.close()
    return out


def export(run: Path, *flags: str):
    res = runner.invoke(app, ["export", str(run), "--histograms", "-o", "-", *flags])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    return rows, [ln for ln in res.stderr.splitlines() if ln.strip()]


def test_empty_rows_are_written_empty_and_named_once(run):
    rows, warnings = export(run)
    assert len(rows) == 12  # every event is a row, as `tags` counts them
    (empty,) = [r for r in rows if float(r["num"]) == 0]
    assert empty["tag"] == "act/out" and empty["step"] == "2"
    assert [empty[k] for k in ("min", "max", "sum", "sum_squares")] == ["", "", "", ""]
    (w,) = [w for w in warnings if "act/out" in w]
    assert w.startswith("adamdiag: warning: ") and "1 of 4 rows hold no values (num = 0)" in w


def test_an_all_zero_tag_is_kept_and_named_once(run):
    rows, warnings = export(run)
    frozen = [r for r in rows if r["tag"] == "grads/frozen.weight"]
    assert len(frozen) == 4 and all(float(r["num"]) == 64 and float(r["max"]) == 0 for r in frozen)
    (w,) = [w for w in warnings if "grads/frozen.weight" in w]
    assert "all zeros in every row (4" in w
    assert not [w for w in warnings if "fc.weight" in w and "frozen" not in w]  # a real tag: no warning
    assert len(warnings) == 2


def test_q_silences_them_and_the_file_is_the_same(run, tmp_path):
    rows_q, warnings_q = export(run, "-q")
    assert warnings_q == [] and rows_q == export(run)[0]
    out = tmp_path / "h.csv"
    res = runner.invoke(app, ["export", str(run), "--histograms", "-o", str(out)])
    assert res.exit_code == 0 and "act/out" in res.stderr and "wrote 12 histogram rows" in res.stderr
    assert list(csv.DictReader(out.open())) == rows_q
