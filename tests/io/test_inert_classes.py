"""Checkpoints that pickle objects of the training's own classes — a whole model
(``torch.save({"model": model, "optimizer": opt.state_dict()})``, as YOLOv5 and many research scripts
do) — are read without importing or running anything from them: an object the pickle rebuilds as an empty
instance plus its state (NEWOBJ + BUILD) becomes an inert stand-in, a pickled ``nn.Module`` is read as its
parameters (names in model order), and a call the pickle makes to a global outside torch's safe list (REDUCE:
``os.system(...)``, ``Fraction("1/3")``) is still refused, naming it (tests/io/test_checkpoints.py)."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.io.checkpoints import open_checkpoint
from adamdiag.pipeline.summary import summarize_checkpoint

runner = CliRunner()

MODULE = textwrap.dedent(
    """
    import pathlib
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU())
            self.head = torch.nn.Linear(8, 8)  # the same shape as nothing else: names come from the order
            self.out = torch.nn.Linear(8, 8)

        def forward(self, x):
            return self.out(self.head(self.body(x)))

    class Buffer:
        '''Keeps its statistics as functions of its own class, as mmengine's HistoryBuffer does: pickled (protocol 2)
        as getattr(Buffer, "mean").'''

        def __init__(self):
            self.values = [1.0, 2.0]
            self.methods = {"mean": Buffer.mean}

        def mean(self):
            return sum(self.values) / len(self.values)

    class Reach:
        '''Pickles as getattr(<a global torch allows>, "__globals__"): a way from an allowed object to anything.'''

        def __reduce__(self):
            import torch._utils

            return (getattr, (torch._utils._rebuild_tensor_v2, "__globals__"))

    class Sneaky:
        '''Would write a file when unpickled the normal way (its __setstate__ runs on BUILD).'''

        def __init__(self, marker):
            self.marker = str(marker)

        def __setstate__(self, state):
            pathlib.Path(state["marker"]).write_text("ran")
            self.__dict__.update(state)
    """
)


@pytest.fixture
def saved(tmp_path, monkeypatch):
    """A model of a training script's own class pickled whole beside its optimizer, and a reference file with
    the same state saved as plain dicts; the script's module is gone when the checkpoint is read."""
    (tmp_path / "train_script_models.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("train_script_models")
    torch.manual_seed(0)
    model = mod.Net()
    opt = torch.optim.AdamW(
        [
            {"params": [p for n, p in model.named_parameters() if n.endswith("weight")], "weight_decay": 0.01},
            {"params": [p for n, p in model.named_parameters() if n.endswith("bias")], "weight_decay": 0.0},
        ],
        lr=1e-3,
    )
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(16, 6)).pow(2).mean().backward()
        opt.step()
    marker = tmp_path / "ran"
    extras = {"epoch": 2, "sneaky": mod.Sneaky(marker)}
    torch.save({"model": model, "optimizer": opt.state_dict(), **extras}, tmp_path / "last.pt")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "reference.pt")
    del sys.modules["train_script_models"]
    (tmp_path / "train_script_models.py").unlink()
    return tmp_path


def test_a_pickled_model_is_read_as_its_parameters_without_running_code(saved, capfd):
    ck = open_checkpoint(saved / "last.pt")
    assert not (saved / "ran").exists()  # Sneaky.__setstate__ never ran
    assert "inert stand-ins, no code from the file runs" in capfd.readouterr().err
    ref = open_checkpoint(saved / "reference.pt")
    # names from the pickled module's own parameter order, as certain as from its state_dict (two param groups
    # interleaved back into it; the (8,) vectors and the two 8x8 layers leave some places open)
    assert ck.name_mapping == ref.name_mapping
    assert [e.name for e in ck.entries] == [e.name for e in ref.entries]
    assert "body.0.weight" in {e.name for e in ck.entries}  # the one 8x6 tensor
    a, b = summarize_checkpoint(saved / "last.pt"), summarize_checkpoint(saved / "reference.pt")
    assert [(t.name, t.sqrt_vhat_q) for t in a.tensors] == [(t.name, t.sqrt_vhat_q) for t in b.tensors]


def test_inspect_reads_it_and_says_so_once(saved):
    res = runner.invoke(app, ["inspect", str(saved / "last.pt")])
    assert res.exit_code == 0, res.output
    assert "body.0.weight" in res.stdout and "AdamW" in res.stdout
    assert res.stderr.count("inert stand-ins") == 1 and "train_script_models.Net" in res.stderr
    assert not (saved / "ran").exists()


def test_a_replay_from_a_pickled_model_is_the_replay_from_its_state_dict(tmp_path):
    """The lab's warm-restart run (tests/fixtures/sgdr/mlp_restart) with its model pickled whole in the start
    checkpoint: replay reads the module's parameters through the stand-ins, and every replayed number equals the
    replay from the state-dict checkpoint it was made from."""
    import json
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    src = root / "tests" / "fixtures" / "sgdr" / "mlp_restart"
    entry = f"{root / 'tools' / 'ood' / 'oodlab.py'}:adamdiag_replay"
    run = tmp_path / "mlp_restart"
    shutil.copytree(src, run)
    ck = torch.load(run / "out" / "ckpt_1000.pt", weights_only=True)
    # the lab's MLP rebuilt from its state dict: Linear layers, parameter-free activations between them (only the
    # parameters travel through the stand-ins)
    last = max(int(k.split(".")[0]) for k in ck["model"])
    layers: list[torch.nn.Module] = []
    for i in range(last + 1):
        w = ck["model"].get(f"{i}.weight")
        layers.append(torch.nn.Linear(w.shape[1], w.shape[0]) if w is not None else torch.nn.Tanh())
    model = torch.nn.Sequential(*layers)
    model.load_state_dict(ck["model"])
    torch.save({**ck, "model": model}, run / "out" / "ckpt_1000.pt")

    def replay(path: Path) -> dict:
        args = ["replay", str(path), "--entry", entry, "--logdir", str(path.parents[1]), "--eps", "1e-2"]
        res = runner.invoke(app, [*args, "--device", "cpu", "--steps", "30", "--format", "json"])
        assert res.exit_code in (0, 1), res.output
        return json.loads(res.stdout)

    a, b = replay(run / "out" / "ckpt_1000.pt"), replay(src / "out" / "ckpt_1000.pt")
    assert [v["losses"] for v in a["variants"]] == [v["losses"] for v in b["variants"]]
    assert a["variants"][0]["losses"]  # something was replayed


def test_getattr_names_a_method_of_a_stand_in_but_reaches_nothing_real(tmp_path, monkeypatch):
    """mmengine's checkpoints pickle their HistoryBuffer's statistics methods as getattr(HistoryBuffer, "min"): on a
    stand-in that gives another stand-in and the file loads. getattr on anything real — an allowed global's
    __globals__, the road to builtins — is refused, naming it."""
    (tmp_path / "train_script_models.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("train_script_models")
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    torch.save(
        {"state_dict": model.state_dict(), "optimizer": opt.state_dict(), "hub": mod.Buffer()}, tmp_path / "a.pth"
    )
    torch.save({"state_dict": model.state_dict(), "optimizer": opt.state_dict(), "x": mod.Reach()}, tmp_path / "b.pth")
    del sys.modules["train_script_models"]
    (tmp_path / "train_script_models.py").unlink()
    res = runner.invoke(app, ["inspect", str(tmp_path / "a.pth"), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert "train_script_models.Buffer" in res.stderr
    res = runner.invoke(app, ["inspect", str(tmp_path / "b.pth")])
    assert res.exit_code == 2 and "GLOBAL getattr" in res.output and "--trust-checkpoint" in res.output
