"""`adamdiag replay` from a `torch.distributed.checkpoint` directory (what FSDP2 / `get_state_dict`
users save): optimizer state keyed by parameter name, two param groups, nested and flattened; the
replay reproduces the logged loss bit for bit."""

from __future__ import annotations

import json
import textwrap
import warnings
from pathlib import Path

import pytest
from realruns import project_module
from typer.testing import CliRunner

from adamdiag.cli import app

PROJECT = textwrap.dedent("""
    import torch
    from torch import nn

    def make_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 2))

    def batch(t):
        g = torch.Generator().manual_seed(t)
        x = torch.randn(24, 6, generator=g)
        return x, torch.sin(x[:, :2] * 2)

    def loss(model, b):
        x, y = b
        return ((model(x) - y) ** 2).mean()

    def groups(model):  # built by hand, in another order than model.parameters(): no-decay group first
        named = list(model.named_parameters())
        return [{"params": [p for n, p in named if p.ndim < 2], "weight_decay": 0.0},
                {"params": [p for n, p in named if p.ndim >= 2], "weight_decay": 0.1}]

    def adamdiag_replay(checkpoint):
        return {"model": make_model(), "batch": batch, "loss": loss}
""")


def _train(root: Path, flatten: bool) -> Path:

    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    from torch.utils.tensorboard import SummaryWriter

    mod = project_module(root, "dcp_project", PROJECT)
    model = mod.make_model()
    opt = torch.optim.AdamW(mod.groups(model), lr=1e-2)
    writer = SummaryWriter(str(root / "run"))
    for t in range(1, 31):
        if t == 11:
            msd, osd = get_state_dict(model, opt, options=StateDictOptions(flatten_optimizer_state_dict=flatten))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "torch.distributed is disabled ... single process": intended
                dcp.save({"model": msd, "optim": osd, "step": 10}, checkpoint_id=str(root / "run" / "ckpt_10"))
        opt.zero_grad()
        ls = mod.loss(model, mod.batch(t))
        writer.add_scalar("train/loss", float(ls.detach()), t)  # the loss of update t at step t
        ls.backward()
        opt.step()
    writer.close()
    return root / "run" / "ckpt_10"


@pytest.mark.parametrize("flatten", [False, True])
def test_dcp_directory_replays_bit_for_bit(tmp_path, flatten):
    ckpt = _train(tmp_path, flatten)
    assert (ckpt / ".metadata").is_file()
    res = CliRunner().invoke(
        app,
        [
            "replay",
            str(ckpt),
            "--entry",
            f"{tmp_path / 'dcp_project.py'}:adamdiag_replay",
            "--steps",
            "15",
            "--device",
            "cpu",
            "--format",
            "json",
        ],
    )
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["start_step"] == 10
    assert d["fidelity"]["reproduced"] and d["fidelity"]["max_rel_dev"] == 0.0, d["fidelity"]
    assert d["fidelity"]["compared_steps"] == 15
    # the names in the state put the hand-built groups right: no shape guessing
    assert not any("matched by shape" in w for w in d["warnings"])
