"""``--latest`` (adamdiag.io.checkpoints.latest): the checkpoint with the highest step *stated in the
file*, one code path for TF prefixes, the TF ``checkpoint`` file, Keras files and torch files, on the
committed TF/Keras fixtures (written by TensorFlow 2.21 / Keras 3.15) and torch files saved here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.errors import InputError
from adamdiag.io.checkpoints.latest import latest_checkpoint, single_checkpoint

TF = Path(__file__).resolve().parents[1] / "fixtures" / "tf"


def _inspect_latest(*paths: Path) -> tuple[list[dict], str]:
    res = CliRunner().invoke(app, ["inspect", *map(str, paths), "--latest", "--format", "json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)["checkpoints"], res.stderr


def _torch_ckpt(path: Path, steps: int, *, key: str | None = "global_step") -> None:
    """A real torch checkpoint after ``steps`` Adam steps; the step is stored under ``key`` (or only
    in the optimizer state when None)."""
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        m(torch.randn(4, 3)).square().mean().backward()
        opt.step()
    obj: dict = {"model": m.state_dict(), "optimizer": opt.state_dict()}
    if key is not None:
        obj[key] = steps * 100  # the run's step, not the optimizer's count: the file's own word wins
    torch.save(obj, path)


def test_tf1_directory_and_checkpoint_file_pick_the_highest_step():
    (ck,), err = _inspect_latest(TF / "tf1")
    assert ck["step"] == 60 and ck["path"].endswith("model.ckpt-60")
    assert "the newest of 2" in err
    # The TF `checkpoint` file (stale absolute paths, resolved in its directory): the same pick.
    (ck,), err = _inspect_latest(TF / "tf1" / "checkpoint")
    assert ck["step"] == 60 and "stale" in err
    # The whole fixture tree: 36 checkpoints of every layout (one RMSProp that does not open; 11 Keras HDF5 model
    # files at step 30, three of them without Adam state; 2 tf.keras SavedModels; 6 mixed-precision saves, all at 30).
    pick = latest_checkpoint(TF)
    assert (pick.path, pick.step, pick.step_from, pick.candidates) == (TF / "tf1" / "model.ckpt-60", 60, "file", 36)


def test_keras_tie_goes_to_the_file_that_states_its_hyperparameters():
    pick = latest_checkpoint(TF / "keras")
    # Six files are at step 30 (three runs, .keras and .weights.h5 each); ema_accum.keras is at 15
    # (4 micro-batches per update), although its .weights.h5 alone would say 30.
    assert pick.step == 30 and pick.path.suffix == ".keras"
    assert pick.path.name == "amsgrad.keras"  # of the three .keras files, the first by path
    assert any("are at step 30" in n and "states the most" in n for n in pick.notes)


def test_step_comes_from_the_file_not_the_name(tmp_path: Path):
    """Names that lie: CheckpointManager's ckpt-1 holds step 20; the torch files carry no number."""
    for f in (TF / "tf2").iterdir():
        shutil.copy(f, tmp_path / f.name)
    shutil.copy(TF / "keras" / "ema_accum.keras", tmp_path / "ema_accum.keras")  # step 15
    _torch_ckpt(tmp_path / "run-a.pt", 1)  # global_step 100 in the file
    _torch_ckpt(tmp_path / "run-b.pt", 2, key=None)  # only the optimizer's count: 2
    pick = latest_checkpoint(tmp_path)
    assert (pick.path.name, pick.step, pick.candidates) == ("run-a.pt", 100, 4)
    (tmp_path / "run-a.pt").unlink()
    # Now the TF2 bundle (step 20) beats Keras (15) and the bare optimizer count (2); by name it
    # would have been the lowest (1).
    pick = latest_checkpoint(tmp_path)
    assert (pick.path.name, pick.step, pick.step_from) == ("ckpt-1", 20, "file")


def test_checkpoint_file_naming_an_older_save_is_reported(tmp_path: Path):
    for f in (TF / "tf1").glob("model.ckpt-*"):
        shutil.copy(f, tmp_path / f.name)
    # What TF writes after a restart from the step-30 save: the file names 30 as the latest.
    (tmp_path / "checkpoint").write_text(
        'model_checkpoint_path: "model.ckpt-30"\nall_model_checkpoint_paths: "model.ckpt-30"\n'
    )
    pick = latest_checkpoint(tmp_path)
    assert pick.step == 60 and any("names model.ckpt-30 as the latest" in n for n in pick.notes)
    # Named itself, the checkpoint file lists only step 30: that is its latest.
    assert latest_checkpoint(tmp_path / "checkpoint").step == 30


def test_no_step_anywhere_and_nothing_found_are_one_line_errors(tmp_path: Path):
    for name in ("a.pt", "b.pt"):  # saved before the first optimizer step: no state, no number
        opt = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
        torch.save(opt.state_dict(), tmp_path / name)
    with pytest.raises(InputError, match="none of its 2 checkpoints states a step"):
        latest_checkpoint(tmp_path)
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["inspect", str(tmp_path / "empty"), "--latest"])
    assert res.exit_code == 2 and "no optimizer checkpoint found" in res.stderr and "Traceback" not in res.output


def test_replay_takes_a_directory_only_with_latest_when_it_holds_several(tmp_path: Path):
    res = CliRunner().invoke(app, ["replay", str(TF / "tf1")])
    assert res.exit_code == 2 and "holds 2 checkpoints" in res.stderr and "--latest" in res.stderr
    # the checkpoint to replay is the last before the blowup (scan names it), not the newest (review F7)
    assert "name the last one before the blowup (the one in `adamdiag scan RUN`'s verify: line)" in res.stderr
    # With --latest the pick (ckpt-60) reaches the replay runner, which asks for a neutral entry.
    res = CliRunner().invoke(app, ["replay", str(TF / "tf1"), "--latest"])
    assert res.exit_code == 2
    assert "model.ckpt-60 is a tf1 checkpoint" in res.stderr and "framework-neutral entry" in res.stderr
    # A directory that holds one checkpoint means that one.
    _torch_ckpt(tmp_path / "only.pt", 3)
    assert single_checkpoint(tmp_path, latest=False) == tmp_path / "only.pt"


def test_keras_modelcheckpoint_names_epochs_the_file_states_steps():
    """ModelCheckpoint('epoch{epoch:02d}.keras', save_freq=200) of the Keras blowup run: the files say
    steps 200…800 (the optimizer's iterations), the names say epochs 2…8."""
    pick = latest_checkpoint(TF.parent / "keras_blowup" / "ckpt")
    assert (pick.path.name, pick.step, pick.step_from, pick.candidates) == ("epoch08.keras", 800, "file", 4)
