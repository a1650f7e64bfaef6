"""``torch.distributed.checkpoint`` written by ``HuggingFaceStorageWriter`` (safetensors + index): the
flattened Adam state read by name and compared with the live optimizer; the hyperparameters this
writer cannot store are unknown (NaN, ``<name>_source = "unknown"``), never a default."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from adamdiag.io.checkpoints import find_checkpoints, open_checkpoint
from adamdiag.pipeline.summary import summarize_checkpoint


def _write(out, *, prefix: bool) -> dict:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    msd, osd = get_state_dict(model, opt, options=StateDictOptions(flatten_optimizer_state_dict=True))
    # safetensors stores tensors only: the param groups' plain numbers cannot go in
    osd = {k: v for k, v in osd.items() if isinstance(v, torch.Tensor)}
    sd = {"model": msd, "optim": osd} if prefix else {**msd, **osd}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # single process: DCP warns that no process group exists
        dcp.save(sd, storage_writer=dcp.HuggingFaceStorageWriter(path=str(out)))
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (st, p.detach().clone()) for p, st in opt.state.items()}


@pytest.mark.parametrize("prefix", [False, True])
def test_hf_storage_writer_checkpoint_by_name(tmp_path, prefix):
    out = tmp_path / "ckpt"
    truth = _write(out, prefix=prefix)
    assert (out / "model.safetensors.index.json").is_file()
    assert find_checkpoints(tmp_path) == [out]
    ck = open_checkpoint(out)
    assert (ck.layout, ck.name_mapping, ck.step) == ("dcp-hf", "fqn", 3)
    seen = set()
    for t in ck.tensors():
        st, param = truth[t.name]
        assert torch.equal(t.exp_avg, st["exp_avg"]) and torch.equal(t.exp_avg_sq, st["exp_avg_sq"]), t.name
        assert torch.equal(t.param, param), t.name  # model keys (model.<fqn> with a prefix) by name
        assert math.isnan(t.eps) and t.hyper_source["eps"] == "unknown"
        seen.add(t.name)
    assert seen == set(truth)
    assert any("not stored" in w for w in ck.warnings)
    s = summarize_checkpoint(out)
    t = s.tensors[0]
    assert t.to_dict()["beta2_source"] == "unknown"
    assert math.isclose(t.v_mean, float(truth[t.name][0]["exp_avg_sq"].double().mean()), rel_tol=1e-9)


def test_plain_safetensors_model_is_no_optimizer_checkpoint(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp_path / "model.safetensors"))
    assert find_checkpoints(tmp_path) == []
