"""A Lightning run read from its CSVLogger ``metrics.csv`` (Lightning's logger when told so, and its default when
neither tensorboard nor tensorboardX is installed). The run below logs through a CSVLogger and a TensorBoardLogger
at once (its targets move at global step 60: a blowup); scanned from either folder it reads the same: the same
tags and values, verdict and blowup step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.io.events import read_run
from adamdiag.pipeline.scan import scan_paths

SHIFT_AT = 60


@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("lightning")
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning_toy import fit_shifted

    out = tmp_path_factory.mktemp("pl")
    fit_shifted(
        [CSVLogger(out, name="csv"), TensorBoardLogger(out, name="tb")],
        tag="train_loss",
        shift_at=SHIFT_AT,
        log_every=1,
    )
    return out


def test_the_csv_reads_as_the_tensorboard_log(lightning_run: Path) -> None:
    csv = read_run(lightning_run / "csv" / "version_0")
    tb = read_run(lightning_run / "tb" / "version_0")
    for tag in ("train_loss", "epoch"):
        a = tb.scalars[tb.scalars["tag"] == tag].sort_values("step")
        b = csv.scalars[csv.scalars["tag"] == tag].sort_values("step")
        assert a["step"].tolist() == b["step"].tolist(), tag
        np.testing.assert_allclose(a["value"].to_numpy(), b["value"].to_numpy(), rtol=1e-6, err_msg=tag)
    assert any("CSVLogger" in n for n in csv.notes)


def test_scan_of_the_csv_run(lightning_run: Path) -> None:
    reports = {
        Path(r.run).parent.name: r
        for r in scan_paths([lightning_run / "csv" / "version_0", lightning_run / "tb" / "version_0"]).runs
    }
    assert set(reports) == {"csv", "tb"}  # both named: each is diagnosed
    a, b = reports["csv"], reports["tb"]
    assert a.loss_tag == b.loss_tag == "train_loss"
    assert a.verdict == b.verdict and a.blowup_step == b.blowup_step
    assert a.blowup_step is not None and SHIFT_AT - 2 <= a.blowup_step <= SHIFT_AT + 3


def test_one_training_in_both_loggers_is_diagnosed_once(lightning_run: Path) -> None:
    """Found by the search under their parent, the two logs of one training are one run: the event files'
    (adamdiag.pipeline.same_log), with a note naming the CSV log."""
    rep = scan_paths([lightning_run])
    assert [Path(r.run).parent.name for r in rep.runs] == ["tb"]
    assert any("csv/version_0: the same loss log as" in w for w in rep.warnings)


def test_other_csv_files_are_not_logs(tmp_path: Path) -> None:
    """A metrics.csv without a step column is not a CSVLogger file: nothing found, one line, exit 2."""
    (tmp_path / "metrics.csv").write_text("epoch,accuracy\n0,0.5\n")
    res = CliRunner().invoke(app, ["scan", str(tmp_path)])
    assert res.exit_code == 2 and "Lightning metrics.csv" in res.output and "Traceback" not in res.output


def test_fabrics_csv_logger_is_read_too(tmp_path: Path) -> None:
    """Lightning Fabric's own CSVLogger (``fabric.log_dict(..., step=step)``) writes the same file layout."""
    L = pytest.importorskip("lightning")
    from lightning.fabric.loggers import CSVLogger

    fabric = L.Fabric(accelerator="cpu", devices=1, loggers=CSVLogger(str(tmp_path), name="csv"))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model, opt = fabric.setup(model, opt)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1)
    for step in range(1, 151):
        idx = torch.randint(0, 256, (16,))
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx] + (50.0 if step > 100 else 0.0))
        opt.zero_grad()
        fabric.backward(loss)
        opt.step()
        fabric.log_dict({"train_loss": loss.item(), "lr": 1e-2}, step=step)
    fabric.logger.finalize("success")
    (rep,) = scan_paths([tmp_path]).runs
    assert rep.loss_tag == "train_loss" and rep.blowup_step == 101
    assert any(f.id == "AD901" and "CSVLogger" in f.message for f in rep.findings)
