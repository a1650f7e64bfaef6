"""Transformer Engine's ``FusedAdam(master_weights=True)`` (Megatron/NeMo with TE) keeps each parameter's fp32
master weight in its optimizer state as ``master_param``; its ``state_dict()`` returns every state unscaled in
fp32 beside the group's ``step`` (TE 2.x fused_adam.py). TE needs CUDA: the state below is written as that
``state_dict()`` returns it. The master weight, not the bf16 model weight, is the parameter the update is measured
against."""

from __future__ import annotations

from pathlib import Path

import torch

from adamdiag.io.checkpoints import open_checkpoint


def test_master_param_is_the_parameter(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4).to(torch.bfloat16)
    master = {n: p.detach().float() + 1e-3 for n, p in model.named_parameters()}  # not what bf16 rounds to
    state = {
        i: {"exp_avg": torch.randn_like(m), "exp_avg_sq": torch.rand_like(m), "master_param": m.clone()}
        for i, m in enumerate(master.values())
    }
    group = {"params": [0, 1], "lr": 1e-3, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1, "step": 7}
    group |= {"bias_correction": True, "amsgrad": False}
    f = tmp_path / "model_optim.pt"
    torch.save({"model": model.state_dict(), "optimizer": {"state": state, "param_groups": [group]}}, f)
    ck = open_checkpoint(f)
    got = {t.name: t for t in ck.tensors()}
    assert set(got) == set(master)
    for name, m in master.items():
        assert got[name].param is not None and got[name].param.dtype == torch.float32
        assert torch.equal(got[name].param, m)
        assert got[name].step == 7
