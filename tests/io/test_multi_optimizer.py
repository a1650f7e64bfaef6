"""Several optimizers in one checkpoint: a Lightning GAN (manual optimization, Adam + AdamW + SGD in
``optimizer_states``), and ``optimizers: [...]`` / ``{name: ...}`` files (Muon + AdamW, Adafactor +
AdamW). Every Adam-family optimizer is analysed with the right names and its own hyperparameters, each
tensor says which optimizer it belongs to, the others are listed as what they are."""

from __future__ import annotations

import json

import make_checkpoints as mk
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.errors import InputError
from adamdiag.io.checkpoints import open_checkpoint
from adamdiag.pipeline.summary import compare_checkpoints, summarize_checkpoint


@pytest.fixture(scope="module")
def gan(tmp_path_factory):
    pytest.importorskip("lightning")
    return mk.write_lightning_gan(tmp_path_factory.mktemp("gan"))


def test_lightning_gan_every_adam_optimizer_by_name(gan):
    path, truth = gan
    ck = open_checkpoint(path)
    assert ck.layout == "lightning" and ck.optimizer == "Adam+AdamW"
    assert ck.other_optimizers == [
        {"index": 2, "key": "optimizer_states.2", "type": ck.other_optimizers[0]["type"]}
    ] and ck.other_optimizers[0]["type"].startswith("SGD")
    seen = {0: set(), 1: set()}
    for t in ck.tensors():
        i = t.optimizer["index"]
        assert t.optimizer == {"index": i, "key": f"optimizer_states.{i}", "type": ["Adam", "AdamW"][i]}
        ref = truth[i][t.name]  # a wrong name or optimizer fails here or on the values
        assert torch.equal(t.exp_avg, ref["exp_avg"]) and torch.equal(t.exp_avg_sq, ref["exp_avg_sq"]), t.name
        assert t.step == ref["step"] and t.group == ref["group"]
        assert (t.beta1, t.beta2) == ((0.5, 0.999) if i == 0 else (0.9, 0.99))  # each optimizer its own
        seen[i].add(t.name)
    assert seen == {0: set(truth[0]), 1: set(truth[1])}
    assert any("not Adam: SGD" in w for w in ck.warnings)


def test_inspect_json_carries_the_optimizer_of_each_tensor(gan):
    path, truth = gan
    res = CliRunner().invoke(app, ["inspect", str(path), "--format", "json"])
    assert res.exit_code == 0, res.output
    (c,) = json.loads(res.stdout)["checkpoints"]
    assert {(t["optimizer"]["index"], t["optimizer"]["type"]) for t in c["tensors"]} == {(0, "Adam"), (1, "AdamW")}
    assert len(c["tensors"]) == len(truth[0]) + len(truth[1])
    assert [o["index"] for o in c["other_optimizers"]] == [2]


def test_decay_ratios_pair_tensors_of_the_same_optimizer(gan, tmp_path):
    path, _ = gan
    later, _ = mk.write_lightning_gan(tmp_path, steps=12)
    out = compare_checkpoints(path, later)
    assert len(out["tensors"]) == 10 and not out["skipped"]
    # state index 0 exists in both optimizers: each pair must be one tensor, not gen vs disc
    labels = [t["label"] for t in out["tensors"]]
    assert len(set(labels)) == 10


def _train(model: nn.Module, opts: list[torch.optim.Optimizer], steps: int = 3) -> None:
    for _ in range(steps):
        for o in opts:
            o.zero_grad()
        model(torch.randn(8, 16)).pow(2).mean().backward()
        for o in opts:
            o.step()


def _muon_adamw():
    """modded-nanogpt style: Muon on the hidden matrices, AdamW on the rest."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    hidden = [model[2].weight]
    rest = [p for p in model.parameters() if p is not model[2].weight]
    opts = [torch.optim.Muon(hidden, lr=0.02), torch.optim.AdamW(rest, lr=1e-3, betas=(0.9, 0.95))]
    _train(model, opts)
    return model, opts


def test_optimizers_list_muon_and_adamw(tmp_path):
    model, (muon, adamw) = _muon_adamw()
    path = tmp_path / "step_3.pt"
    torch.save({"model": model.state_dict(), "optimizers": [muon.state_dict(), adamw.state_dict()], "step": 3}, path)
    s = summarize_checkpoint(path)
    assert {t.optimizer["key"] for t in s.tensors} == {"optimizers.1"}
    assert [o["key"] for o in s.other_optimizers] == ["optimizers.0"]
    names = {t.name for t in s.tensors}
    assert names == {"0.weight", "0.bias", "2.bias", "4.weight", "4.bias"}  # model order, Muon's one skipped
    assert {t.beta2 for t in s.tensors} == {0.95}
    live = {id(p): n for n, p in model.named_parameters()}
    truth = {live[id(p)]: adamw.state[p]["exp_avg_sq"] for g in adamw.param_groups for p in g["params"]}
    for t in open_checkpoint(path).tensors():
        assert torch.equal(t.exp_avg_sq, truth[t.name]), t.name


def test_optimizers_dict_adafactor_and_adamw(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 1))
    opts = {
        "adafactor": torch.optim.Adafactor(model[0].parameters(), lr=1e-2),
        "adamw": torch.optim.AdamW(model[1].parameters(), lr=1e-3),
    }
    _train(model, list(opts.values()))
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optimizers": {k: o.state_dict() for k, o in opts.items()}}, path)
    ck = open_checkpoint(path)
    assert {(t.name, t.optimizer["key"]) for t in ck.tensors()} == {
        ("1.weight", "optimizers.adamw"),
        ("1.bias", "optimizers.adamw"),
    }
    assert ck.other_optimizers[0]["key"] == "optimizers.adafactor"


def test_only_non_adam_optimizers_is_still_refused_naming_them(tmp_path):
    model, (muon, _) = _muon_adamw()
    path = tmp_path / "muon.pt"
    torch.save({"optimizers": [muon.state_dict()]}, path)
    with pytest.raises(InputError, match="not an Adam optimizer state"):
        open_checkpoint(path)


def test_inspect_text_names_the_optimizer_when_there_are_several(gan):
    path, _ = gan
    res = CliRunner().invoke(app, ["inspect", str(path)])
    assert res.exit_code == 0, res.output
    assert "o0:0/0" in res.output and "o1:0/0" in res.output and "not Adam: SGD" in res.output


def test_dcp_with_two_adam_optimizers_and_an_sgd(tmp_path):
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4), nn.Linear(4, 1))
    opts = {
        "optim_g": torch.optim.Adam(model[0].parameters(), lr=2e-4, betas=(0.5, 0.999)),
        "optim_d": torch.optim.AdamW(model[2].parameters(), lr=1e-3, betas=(0.9, 0.99)),
        "optim_h": torch.optim.SGD(model[3].parameters(), lr=0.1, momentum=0.9),
    }
    _train(model, list(opts.values()))
    sd = {"model": get_model_state_dict(model)}
    sd.update({k: get_optimizer_state_dict(model, o) for k, o in opts.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # single process: no process group
        dcp.save(sd, checkpoint_id=str(tmp_path / "dcp"))
    ck = open_checkpoint(tmp_path / "dcp")
    live = {id(p): n for n, p in model.named_parameters()}
    truth = {(k, live[id(p)]): st for k, o in opts.items() for p, st in o.state.items()}
    got = set()
    for t in ck.tensors():
        key = t.optimizer["key"]
        assert torch.equal(t.exp_avg_sq, truth[(key, t.name)]["exp_avg_sq"]), (key, t.name)
        assert t.beta2 == (0.999 if key == "optim_g" else 0.99)
        got.add((key, t.name))
    assert got == {k for k in truth if k[0] != "optim_h"}
    assert ck.optimizer == "Adam+AdamW" and [o["key"] for o in ck.other_optimizers] == ["optim_h"]
