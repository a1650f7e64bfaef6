"""Megatron-core dist checkpoints (``torch_dist``: Megatron-LM's ``--ckpt-format torch_dist``, NeMo 2), written by
megatron-core 0.16.1 itself (tools/runlab/make_megatron_fixtures.py: its FP32Optimizer and ``dist_checkpointing.save``,
2 gloo ranks, tensor parallel 2) — read without megatron-core or a process group.

The state is keyed ``optimizer.state.<exp_avg|exp_avg_sq>.<sharded key>`` with the transformer layers stacked on a
leading axis, the shards of the tensor-parallel ranks put together from DCP's chunk table; the param groups (without
their ``params``) and the common step sit in ``common.pt``. torch's own reader refuses nothing here, but adamdiag's
allow-list unpickler did: megatron-core's ``.metadata`` carries its cached SavePlan."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from adamdiag.errors import InputError
from adamdiag.io.checkpoints import open_checkpoint

FIX = Path(__file__).parent.parent / "fixtures" / "megatron" / "fp32_tp2"
TRUTH = json.loads((FIX / "truth.json").read_text())
CKPT = FIX / "iter_0000020"


# The same run written by an earlier megatron-core: 0.14/0.15 pickle their own subclasses of DCP's Metadata and
# SavePlan (MCoreMetadata, MCoreSavePlan) into .metadata, read as the torch classes they extend (was: refused as
# "needs arbitrary unpickling").
WRITERS = {"0.16.1": FIX, "0.14.0": FIX.parent / "fp32_tp2_mcore014"}


@pytest.mark.parametrize("version", sorted(WRITERS))
def test_moments_equal_megatrons_own(version: str) -> None:
    fix = WRITERS[version]
    truth = json.loads((fix / "truth.json").read_text())
    assert truth["megatron_core"] == version
    ck = open_checkpoint(fix / "iter_0000020")
    assert (ck.layout, ck.step, ck.optimizer, ck.name_mapping) == ("dcp", 20, "AdamW", "fqn")
    seen = set()
    for t in ck.tensors():
        ref = truth["tensors"][t.name]
        v, m = t.exp_avg_sq.double(), t.exp_avg.double()
        assert v.numel() == ref["numel"], t.name
        # the same numbers: the mean of the same float32 values, summed in another order
        assert float(v.mean()) == pytest.approx(ref["v_mean"], rel=1e-12), t.name
        assert float(v.max()) == ref["v_max"], t.name
        assert float(m.abs().mean()) == pytest.approx(ref["m_abs_mean"], rel=1e-6), t.name
        seen.add(t.name)
    assert seen == set(truth["tensors"])
    # the layers stacked on a leading axis, the tensor-parallel halves joined
    shapes = {e.name: tuple(e.shape) for e in ck.entries}
    assert shapes["decoder.layers.mlp.linear_fc1.weight"] == (2, 32, 8)
    assert shapes["decoder.layers.mlp.linear_fc2.weight"] == (2, 8, 32)


def test_hyperparameters_from_common_pt() -> None:
    """lr, betas, eps and the step come from common.pt; the weight decay differs between Megatron's two groups
    (0.1 on matrices, 0 on biases) and the file does not say which parameter is in which: unknown, not guessed."""
    ck = open_checkpoint(CKPT)
    for e in ck.entries:
        h = e.hyper
        assert (h["lr"], h["beta1"], h["beta2"], h["eps"], h["group_step"]) == (1e-3, 0.9, 0.95, 1e-8, 20)
        assert h["weight_decay"] != h["weight_decay"]  # NaN: unknown


def test_megatron_root_with_iterations(tmp_path: Path) -> None:
    """Megatron-LM's save folder (latest_checkpointed_iteration.txt + iter_XXXXXXX/): every iteration found."""
    from adamdiag.io.checkpoints import find_checkpoints

    root = tmp_path / "save"
    shutil.copytree(FIX, root)
    shutil.copytree(root / "iter_0000020", root / "iter_0000010")
    found = sorted(p.name for p in find_checkpoints(root))
    assert found == ["iter_0000010", "iter_0000020"]


def _with_common(tmp_path: Path, edit) -> Path:
    d = tmp_path / "iter_0000020"
    shutil.copytree(CKPT, d)
    common = torch.load(d / "common.pt", weights_only=True)
    edit(common)
    torch.save(common, d / "common.pt")
    return d


def test_groups_that_agree_give_every_parameter_their_values(tmp_path: Path) -> None:
    def same_wd(common: dict) -> None:
        for g in common["optimizer"]["param_groups"]:
            g["weight_decay"] = 0.1

    d = _with_common(tmp_path, same_wd)
    assert {e.hyper["weight_decay"] for e in open_checkpoint(d).entries} == {0.1}
    # replay then rebuilds the run's AdamW: one group, the common step in every state
    from adamdiag.replay.checkpoint import load_replay_checkpoint

    rc = load_replay_checkpoint(d)
    (group,) = rc.param_groups
    assert (group["lr"], tuple(group["betas"]), group["eps"], group["weight_decay"]) == (1e-3, (0.9, 0.95), 1e-8, 0.1)
    assert all(float(st["step"]) == 20 for st in rc.optim_state["state"].values())


def test_groups_that_differ_in_lr_are_said_and_replay_refuses(tmp_path: Path) -> None:
    def other_lr(common: dict) -> None:
        common["optimizer"]["param_groups"][1]["lr"] = 5e-4

    d = _with_common(tmp_path, other_lr)
    ck = open_checkpoint(d)
    assert any("first group's are used" in w for w in ck.warnings)
    from adamdiag.replay.checkpoint import load_replay_checkpoint

    with pytest.raises(InputError, match="no map from parameters to groups"):
        load_replay_checkpoint(d)


def test_without_common_pt_the_hyperparameters_are_unknown(tmp_path: Path) -> None:
    d = tmp_path / "iter_0000020"
    shutil.copytree(CKPT, d)
    (d / "common.pt").unlink()
    ck = open_checkpoint(d)
    assert any("without common.pt" in w for w in ck.warnings)
    assert all(e.hyper.get("lr") != e.hyper.get("lr") or e.hyper.get("lr") is None for e in ck.entries)


def test_distributed_optimizer_buffers_are_named_in_the_error(tmp_path: Path) -> None:
    """The legacy distrib_optim.pt (megatron-core's get_parameter_state_dp_zero: flat buffers per bucket, no
    parameter names) is one line naming what it is, exit 2 from the CLI."""
    from typer.testing import CliRunner

    from adamdiag.cli import app

    f = tmp_path / "distrib_optim.pt"
    key = (torch.bfloat16, torch.float32)
    flat = {"param": torch.randn(100), "exp_avg": torch.randn(100), "exp_avg_sq": torch.rand(100), "numel_unpadded": 98}
    torch.save(
        {"buckets_coalesced": True, "per_bucket_numel": [[100]], "per_bucket_numel_unpadded": [[98]], 0: {key: flat}}, f
    )
    res = CliRunner().invoke(app, ["inspect", str(f)])
    assert res.exit_code == 2
    assert "distributed-optimizer buffers" in res.output and "torch_dist" in res.output
    assert "Traceback" not in res.output


def test_nemo_style_common_state(tmp_path: Path) -> None:
    """NeMo 2 saves through Lightning: the optimizer's common part under ``optimizer_states`` (a list) and the step
    as ``global_step``. Read the same (the common.pt of the fixture rearranged that way)."""

    def as_nemo(common: dict) -> None:
        common["optimizer_states"] = [common.pop("optimizer")]
        common["global_step"] = common.pop("iteration")

    d = _with_common(tmp_path, as_nemo)
    ck = open_checkpoint(d)
    assert ck.step == 20
    assert {(e.hyper["lr"], e.hyper["eps"], e.hyper["group_step"]) for e in ck.entries} == {(1e-3, 1e-8, 20)}


def test_distributed_optimizer_fully_reshardable_layout(tmp_path: Path) -> None:
    """The distributed optimizer's fully_reshardable format (megatron-core 0.16 distrib_optimizer.py): the fp32
    master weight as state key ``param``, the step in every param group of common.pt's nested ``optimizer``.
    Written here with torch's own DCP writer from the fixture's moments, the model weights in bf16: the master
    copy, not the bf16 weight, is what Adam's update is measured against."""
    import torch.distributed.checkpoint as dcp

    ck = open_checkpoint(CKPT)
    items: dict[str, torch.Tensor] = {}
    for t in ck.tensors():
        items[f"optimizer.state.exp_avg.{t.name}"] = t.exp_avg.clone()
        items[f"optimizer.state.exp_avg_sq.{t.name}"] = t.exp_avg_sq.clone()
        items[f"optimizer.state.param.{t.name}"] = t.param.float().clone()
        items[t.name] = t.param.to(torch.bfloat16)
    d = tmp_path / "iter_0000020"
    dcp.save(items, checkpoint_id=str(d))
    group = {"lr": 1e-3, "betas": (0.9, 0.95), "eps": 1e-8, "bias_correction": True, "step": 20}
    common = {
        "optimizer": {
            "optimizer": {"param_groups": [{**group, "weight_decay": 0.1}, {**group, "weight_decay": 0.0}]},
            "param_state_sharding_type": "fully_reshardable",
        },
        "iteration": 20,
    }
    torch.save(common, d / "common.pt")
    again = open_checkpoint(d)
    assert again.step == 20
    assert {(e.hyper["lr"], e.hyper["beta2"], e.hyper["group_step"]) for e in again.entries} == {(1e-3, 0.95, 20)}
    ref = {t.name: t for t in ck.tensors()}
    for t in again.tensors():
        assert torch.equal(t.exp_avg_sq, ref[t.name].exp_avg_sq)
        assert t.param.dtype == torch.float32 and torch.equal(t.param, ref[t.name].param.float())


def test_megatron_lm_args_in_common_pt_and_a_damaged_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Megatron-LM puts its argparse ``args`` into the common state: read inertly (nothing imported). A truncated
    common.pt costs the hyperparameters, not the moments: a warning, and the shards are still read."""
    import argparse

    def with_args(common: dict) -> None:
        common["args"] = argparse.Namespace(lr=1e-3, adam_beta2=0.95, clip_grad=1.0)

    d = _with_common(tmp_path / "a", with_args)
    assert {e.hyper["lr"] for e in open_checkpoint(d).entries} == {1e-3}
    f = d / "common.pt"
    f.write_bytes(f.read_bytes()[:100])
    ck = open_checkpoint(d)
    assert any(w.startswith(str(f)) and "unknown" in w for w in ck.warnings)
    assert len(list(ck.tensors())) == len(TRUTH["tensors"])
