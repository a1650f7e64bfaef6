"""First-user review (session 11) input regressions, each on real artifacts (torch.save, SummaryWriter):
a linked ``checkpoints/`` folder (F13); checkpoints holding ``argparse.Namespace`` or numpy scalars (F17);
a file given to the command that does not take its kind (F6)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from events_util import write_torch
from torch import nn
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.io.checkpoints import find_checkpoints

runner = CliRunner()


def _adam_state(**extra: object) -> dict:
    """A real Adam checkpoint ({model, optimizer, step, ...extra}) after two steps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 8)).pow(2).mean().backward()
        opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 2, **extra}


# --- F13: a linked checkpoints/ folder -------------------------------------------------------------
def test_a_linked_checkpoints_folder_is_followed_and_a_loop_ends(tmp_path: Path) -> None:
    """``run/checkpoints -> /elsewhere/ckpt`` (checkpoints on another volume) was walked past silently,
    and scan then said "no optimizer checkpoint found"."""
    store = tmp_path / "scratch" / "ckpt"
    store.mkdir(parents=True)
    torch.save(_adam_state(), store / "step_000010.pt")
    (store / "again").symlink_to(store, target_is_directory=True)  # a loop: entered once
    run = write_torch(tmp_path / "run", 40)
    (run / "checkpoints").symlink_to(store, target_is_directory=True)
    skipped: list[str] = []
    assert find_checkpoints(run, skipped=skipped) == [run / "checkpoints" / "step_000010.pt"]
    assert skipped == []
    res = runner.invoke(app, ["scan", str(run), "--format", "json"])
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["runs"]
    assert "checkpoints" in r["sources"]


def test_a_linked_folder_named_like_a_checkpoint_file_is_followed(tmp_path: Path) -> None:
    """A link named like a checkpoint file (``step_50.pt -> folder``) is followed like any folder link: what
    it holds is found; an empty one is named as an empty folder would be."""
    full = tmp_path / "full"
    full.mkdir()
    torch.save(_adam_state(), full / "optimizer_5.pt")
    (tmp_path / "empty").mkdir()
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "step_50.pt").symlink_to(full, target_is_directory=True)
    (ck / "step_60.pt").symlink_to(tmp_path / "empty", target_is_directory=True)
    skipped: list[str] = []
    assert find_checkpoints(ck, skipped=skipped) == [ck / "step_50.pt" / "optimizer_5.pt"]
    assert skipped == [
        f"skipped {ck / 'step_60.pt'}: a link to a directory named like a checkpoint file, with no checkpoint "
        "in it (no DCP, HF or DeepSpeed folder)"
    ]
