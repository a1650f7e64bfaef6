"""A Hugging Face Trainer run read from its ``trainer_state.json``. Since transformers 5, ``report_to`` defaults to
``"none"``: the Trainer writes no TensorBoard files, and the ``log_history`` in every ``checkpoint-N/trainer_state.json``
is the only log the run leaves. The run below (a real Trainer, report_to="tensorboard" so that both logs exist;
its targets move at step 80: a blowup) is scanned from its TensorBoard events and from its trainer_state.json:
the same tags, values, verdict and blowup step."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.io.events import read_run
from adamdiag.pipeline.scan import scan_paths

SHIFT_AT = 80


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    pytest.importorskip("tensorboard")
    from hf_toy import Regressor, ShiftableData, move_targets_at, training_args
    from transformers import Trainer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    out = tmp_path_factory.mktemp("hf") / "out"
    data = ShiftableData()
    torch.manual_seed(0)
    args = training_args(str(out), "tensorboard", save_steps=40)
    Trainer(model=Regressor(), args=args, train_dataset=data, callbacks=[move_targets_at(data, SHIFT_AT)]).train()
    return out


def test_the_state_reads_as_the_tensorboard_log(hf_run: Path) -> None:
    tb = read_run(next(hf_run.glob("runs/*")))
    st = read_run(hf_run / "checkpoint-120" / "trainer_state.json")
    for tag in ("train/loss", "train/grad_norm", "train/learning_rate"):
        a = tb.scalars[tb.scalars["tag"] == tag].sort_values("step")
        b = st.scalars[st.scalars["tag"] == tag].sort_values("step")
        assert a["step"].tolist() == b["step"].tolist(), tag
        # TensorBoard stores float32, the JSON the float64 the Trainer computed
        np.testing.assert_allclose(a["value"].to_numpy(), b["value"].to_numpy(), rtol=1e-6, err_msg=tag)
    assert any("trainer_state.json" in n for n in st.notes)


def test_scan_of_a_run_without_tensorboard(hf_run: Path, tmp_path: Path) -> None:
    """The output dir as report_to="none" leaves it (no runs/): found by its trainer_state.json, read from the
    newest checkpoint's, the same verdict and blowup step as from the TensorBoard log."""
    bare = tmp_path / "out"
    shutil.copytree(hf_run, bare, ignore=shutil.ignore_patterns("runs"))
    (from_state,) = scan_paths([bare]).runs
    (from_tb,) = scan_paths([hf_run]).runs
    assert from_tb.run.endswith(next(hf_run.glob("runs/*")).name)
    assert from_state.loss_tag == from_tb.loss_tag == "train/loss"
    assert from_state.verdict == from_tb.verdict and from_state.blowup_step == from_tb.blowup_step
    assert from_state.blowup_step is not None and SHIFT_AT <= from_state.blowup_step <= SHIFT_AT + 4
    (note,) = [f for f in from_state.findings if f.id == "AD901" and "trainer_state.json" in f.message]
    assert "checkpoint-120" in note.message
    # HF clips at max_grad_norm=1.0 by default and logs the norm before clipping: without the TensorBoard args
    # summary, the clip comes from the TrainingArguments pickled beside the state (read without running code)
    (clip,) = [f for f in from_state.findings if f.id == "AD601"]
    assert "checkpoint-120/training_args.bin" in clip.message and "at 1 " in clip.message
    assert [f.id for f in from_tb.findings if f.id == "AD601"] == ["AD601"]


def test_training_args_pickle_runs_no_code(tmp_path: Path) -> None:
    """Only TrainingArguments' own classes become stand-ins; any other global ends the read with {}."""
    import os
    import pickle

    from adamdiag.io.trainer_state import training_arguments

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, ("touch " + str(tmp_path / "ran"),))

    f = tmp_path / "training_args.bin"
    torch.save({"max_grad_norm": 1.0, "x": Evil()}, f, pickle_module=pickle)
    assert training_arguments(f) == {}
    assert not (tmp_path / "ran").exists()


def test_damaged_state_is_one_line(hf_run: Path, tmp_path: Path) -> None:
    bare = tmp_path / "out"
    shutil.copytree(hf_run, bare, ignore=shutil.ignore_patterns("runs", "checkpoint-40", "checkpoint-80"))
    f = bare / "checkpoint-120" / "trainer_state.json"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncated mid-write
    res = CliRunner().invoke(app, ["scan", str(bare)])
    assert res.exit_code == 2 and "not valid JSON" in res.output and "Traceback" not in res.output
    f.write_text(json.dumps({"global_step": 3}))
    res = CliRunner().invoke(app, ["scan", str(bare)])
    assert res.exit_code == 2 and "no log_history" in res.output


def test_training_args_pickled_by_python_3_11_2(tmp_path: Path) -> None:
    """CPython 3.11.0-3.11.4 (Debian 12's /usr/bin/python3) pickle an enum member as getattr(Enum, "NAME"): read
    the same (the member by its lower-cased name), still without importing anything."""
    import enum
    import pickle
    import types

    pytest.importorskip("transformers")
    from transformers import TrainingArguments

    class Debian311Pickler(pickle.Pickler):
        def reducer_override(self, obj):  # noqa: ANN001, ANN201
            if isinstance(obj, enum.Enum):
                return getattr, (type(obj), obj.name)
            return NotImplemented

    from adamdiag.io.trainer_state import training_arguments

    args = TrainingArguments(str(tmp_path / "o"), max_grad_norm=0.5, adam_beta2=0.95, report_to="none", use_cpu=True)
    f = tmp_path / "training_args.bin"
    torch.save(args, f, pickle_module=types.SimpleNamespace(Pickler=Debian311Pickler, __name__="pickle"))
    assert b"getattr" in f.read_bytes()
    got = training_arguments(f)
    assert (got["max_grad_norm"], got["adam_beta2"], got["lr_scheduler_type"]) == (0.5, 0.95, "linear")


def test_replay_finds_the_states_log(hf_run: Path, tmp_path: Path) -> None:
    """replay compares against the logged loss: for a checkpoint of an output dir without TensorBoard files, that
    log is the output dir's trainer_state.json (was: "no TensorBoard event files found ... pass --logdir")."""
    from adamdiag.replay.runner import find_run_dir

    bare = tmp_path / "out"
    shutil.copytree(hf_run, bare, ignore=shutil.ignore_patterns("runs"))
    assert find_run_dir(bare / "checkpoint-80", None) == bare.resolve()
    assert find_run_dir(bare / "checkpoint-80", bare) == bare
