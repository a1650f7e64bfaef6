"""An optimizer state stored in float16: ultralytics (YOLOv8/11) saves every training checkpoint's optimizer state
through ``convert_optimizer_state_dict_to_fp16`` — each float32 tensor of ``state`` (not ``step``) ``.half()`` —
so v, an average of squared gradients that is often 1e-10 and less, falls below float16's smallest step (6e-8) and
is stored as 0. Read naively, every such element is "never received a gradient", √v̂ < eps everywhere and the
update statistics are lr·m̂/eps (a 0.37 update RMS on the run below, whose true one is 1e-4). The state here is a
real ``torch.optim.AdamW`` state after 50 steps, converted exactly as that function does (ultralytics itself needs
torchvision, which this machine's CPU torch has no wheel of)."""

from __future__ import annotations

import copy
import json
import math

import torch
from typer.testing import CliRunner

from adamdiag.cli import app

runner = CliRunner()


def _state() -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(50):
        opt.zero_grad()
        (model(torch.randn(32, 64)).pow(2).mean() * 1e-3).backward()  # small gradients: v ~ 1e-12
        opt.step()
    return {"epoch": 3, "model": model.state_dict(), "optimizer": opt.state_dict()}


def convert_optimizer_state_dict_to_fp16(state_dict: dict) -> dict:
    """ultralytics.utils.torch_utils.convert_optimizer_state_dict_to_fp16, as it reads."""
    for state in state_dict["state"].values():
        for k, v in state.items():
            if k != "step" and isinstance(v, torch.Tensor) and v.dtype is torch.float32:
                state[k] = v.half()
    return state_dict


def _inspect(path) -> tuple[dict, str]:
    res = runner.invoke(app, ["inspect", str(path), "--format", "json"])
    assert res.exit_code == 0, res.output
    (ck,) = json.loads(res.stdout)["checkpoints"]
    text = runner.invoke(app, ["inspect", str(path)]).stdout
    return ck, text


def test_float16_zeros_are_not_read_as_gradient_free_or_as_huge_updates(tmp_path):
    full = _state()
    half = copy.deepcopy(full)
    half["optimizer"] = convert_optimizer_state_dict_to_fp16(half["optimizer"])
    torch.save(full, tmp_path / "full.pt")
    torch.save(half, tmp_path / "last.pt")
    ref, _ = _inspect(tmp_path / "full.pt")
    ck, text = _inspect(tmp_path / "last.pt")
    assert not any("float16" in w for w in ref["warnings"])
    assert all(t["update_rms"] is not None and t["update_rms"] < 1e-3 for t in ref["tensors"])
    (w,) = [w for w in ck["warnings"] if "stored in float16" in w]
    assert "ultralytics" in w and "not 'never received a gradient'" in w
    for t in ck["tensors"]:
        assert t["dtype"] == "float16" and t["frac_v_zero"] > 0.5
        assert t["update_rms"] is None and t["update_max"] is None  # not lr·m̂/eps
        assert t["unknown_inputs"]["update_rms"] == ["v (float16 zeros)"]
    assert "note: v=0: elements that never received" not in text  # the fp32 note would say the opposite


def test_float16_without_zeros_and_bfloat16_are_read_as_they_are(tmp_path):
    """Nothing below float16's range (large gradients), or bfloat16 (float32's range): no warning, numbers kept."""
    big = _state()
    for st in big["optimizer"]["state"].values():
        st["exp_avg_sq"] = (st["exp_avg_sq"] + 1e-4).half()
    torch.save(big, tmp_path / "big.pt")
    bf = _state()
    for st in bf["optimizer"]["state"].values():
        st["exp_avg_sq"] = st["exp_avg_sq"].bfloat16()
    torch.save(bf, tmp_path / "bf16.pt")
    for name in ("big.pt", "bf16.pt"):
        ck, _ = _inspect(tmp_path / name)
        assert not any("stored in float16" in w for w in ck["warnings"]), name
        assert all(t["update_rms"] is not None and math.isfinite(t["update_rms"]) for t in ck["tensors"]), name
