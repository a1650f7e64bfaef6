"""Checkpoint inputs as users lay them out, each on real artifacts (torch.save, SummaryWriter): a linked
``checkpoints/`` folder; checkpoints holding ``argparse.Namespace`` or numpy scalars; a file given to the
command that does not take its kind (found by a first-user review)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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


# --- F17: data-only extras a training script saves beside the states --------------------------------
def _extras() -> dict:
    import argparse

    import numpy as np

    return {
        "args": argparse.Namespace(lr=1e-2, name="run7"),
        "best": np.float64(0.5),
        "epoch": np.int64(3),
        "rng": np.random.RandomState(0).get_state(),  # ('MT19937', uint32 array, ...)
        "dtype": np.dtype("float32"),
    }


@pytest.mark.parametrize("protocol", [2, 4])  # 4: read by the restricted Python unpickler, not torch's own
def test_namespace_and_numpy_extras_load_without_trust(tmp_path: Path, protocol: int) -> None:
    import numpy as np

    from adamdiag.io.checkpoints import torch_load

    f = tmp_path / "step_000002.pt"
    torch.save(_adam_state(**_extras()), f, pickle_protocol=protocol)
    obj, _ = torch_load(f, trust=False)
    assert obj["args"].lr == 1e-2 and obj["best"] == np.float64(0.5) and obj["rng"][1].dtype == np.uint32
    res = runner.invoke(app, ["inspect", str(f)])
    assert res.exit_code == 0 and "trust-checkpoint" not in res.output, res.output


def test_scan_reads_checkpoints_with_extras_and_still_refuses_code(tmp_path: Path) -> None:
    """scan used to refuse each such checkpoint, one identical AD902 line per file."""
    import fractions

    run = write_torch(tmp_path / "run", 40)
    ck = run / "checkpoints"
    ck.mkdir()
    for s in (10, 20):
        torch.save(_adam_state(**_extras()), ck / f"step_{s:06d}.pt")
    res = runner.invoke(app, ["scan", str(run), "--format", "json"])
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["runs"]
    assert "checkpoints" in r["sources"] and not [w for w in r["warnings"] if "unpickling" in w]
    # a global outside torch's list and these extras is still refused, by name
    torch.save(_adam_state(ratio=fractions.Fraction(1, 3)), ck / "step_000030.pt")
    res = runner.invoke(app, ["inspect", str(ck / "step_000030.pt")])
    assert res.exit_code == 2 and "GLOBAL fractions.Fraction" in res.output and "--trust-checkpoint" in res.output


def test_the_same_refusal_in_many_checkpoints_is_one_line(tmp_path: Path) -> None:
    """scan printed one identical "needs arbitrary unpickling" line per checkpoint (20 for a 20-checkpoint
    run): now one line with the count, the first file and the last; JSON keeps every file."""
    import fractions

    run = write_torch(tmp_path / "run", 40)
    ck = run / "checkpoints"
    ck.mkdir()
    for s in (10, 20, 30):
        torch.save(_adam_state(ratio=fractions.Fraction(1, 3)), ck / f"step_{s:06d}.pt")
    res = runner.invoke(app, ["scan", str(run)])
    assert res.exit_code == 0, res.output
    said = [ln.strip() for ln in res.stdout.splitlines() if "fractions.Fraction" in ln]
    assert said == [
        "- 3 files (checkpoints/step_000010.pt … checkpoints/step_000030.pt): loading it needs arbitrary "
        "unpickling (Unsupported global: GLOBAL fractions.Fraction); rerun with --trust-checkpoint only if you "
        "trust the file: that runs code from it"
    ], res.stdout
    res = runner.invoke(app, ["scan", str(run), "--format", "json"])
    (r,) = json.loads(res.stdout)["runs"]
    assert len([w for w in r["warnings"] if "fractions.Fraction" in w]) == 3


# --- F6: a file given to the command that does not take its kind -------------------------------------
@pytest.mark.parametrize("legacy", [False, True])
def test_a_checkpoint_given_to_scan_is_named_not_called_corrupt(tmp_path: Path, legacy: bool) -> None:
    f = tmp_path / "step_000002.pt"
    torch.save(_adam_state(), f, _use_new_zipfile_serialization=not legacy)
    for cmd in ("scan", "check"):
        res = runner.invoke(app, [cmd, str(f)])
        assert res.exit_code == 2
        (line,) = res.stderr.splitlines()
        assert line == (
            f"adamdiag: error: {f} is a torch checkpoint, not an event file: scan takes run folders or event "
            f"files (pass the checkpoint with --checkpoints), and `adamdiag inspect {f}` reads it"
        )


def test_an_event_file_or_safetensors_given_to_inspect_is_named(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    run = write_torch(tmp_path / "run", 10)
    (ev,) = run.glob("events.out.tfevents*")
    res = runner.invoke(app, ["inspect", str(ev)])
    assert res.exit_code == 2
    assert res.stderr.splitlines() == [
        f"adamdiag: error: {ev} is a TensorBoard event file, not a checkpoint: `adamdiag scan {ev}` reads it"
    ]
    ck = tmp_path / "checkpoint-100"
    ck.mkdir()
    st = ck / "model.safetensors"
    save_file({k: v.contiguous() for k, v in _adam_state()["model"].items()}, str(st))
    res = runner.invoke(app, ["inspect", str(st)])
    assert res.exit_code == 2
    assert res.stderr.splitlines() == [
        f"adamdiag: error: {st} is a safetensors file: model weights, no optimizer state; pass the checkpoint "
        f"folder ({ck}) or its optimizer file"
    ]
    res = runner.invoke(app, ["scan", str(st)])
    assert res.exit_code == 2 and "is a safetensors file (model weights), not an event file" in res.stderr
    # a file of neither kind is still "not a readable torch checkpoint"
    (tmp_path / "notes.pt").write_text("hello\n")
    res = runner.invoke(app, ["inspect", str(tmp_path / "notes.pt")])
    assert res.exit_code == 2 and "not a readable torch checkpoint" in res.stderr


def test_a_class_of_the_training_script_is_named_even_with_trust(tmp_path: Path) -> None:
    """A config class defined in the training script (its __main__) cannot be unpickled elsewhere, even with
    --trust-checkpoint; torch's "Can't get attribute 'Cfg' on <module '__main__'…>" now says why."""
    import subprocess
    import sys

    f = tmp_path / "ck.pt"
    script = (
        "import dataclasses, sys, torch\n"
        "@dataclasses.dataclass\nclass Cfg:\n    lr: float = 0.1\n"
        "opt = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())\n"
        "torch.save({'optimizer': opt.state_dict(), 'cfg': Cfg()}, sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", script, str(f)], check=True, timeout=120)
    res = runner.invoke(app, ["inspect", str(f), "--trust-checkpoint"])
    assert res.exit_code == 2
    assert res.stderr.splitlines()[-1] == (
        f"adamdiag: error: {f}: could not be loaded even with --trust-checkpoint: it holds a __main__.Cfg object, "
        "a class of the training script that unpickling must import; save it as a dict or argparse.Namespace instead"
    )
