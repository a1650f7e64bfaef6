"""torchao's low-bit Adam states (OptimState8bit / 4bit / Fp8 tensor subclasses), read without torchao: files
torchao itself wrote (tools/runlab/make_torchao_fixtures.py; 0.18 for the fixtures, 0.11 and 0.9 held out),
compared with what torchao's own ``dequantize()`` gave for the live optimizer state (truth.json)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from checkpoint_truth import assert_stats_match_library
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.errors import InputError
from adamdiag.io.checkpoints import open_checkpoint
from adamdiag.pipeline.summary import summarize_checkpoint

FIX = Path(__file__).parent.parent / "fixtures" / "torchao"
FILES = [(FIX, f) for f in json.loads((FIX / "truth.json").read_text())["files"]]
OLDER = [(FIX / "older", f) for f in json.loads((FIX / "older" / "truth.json").read_text())["files"]]
KIND = {"OptimState8bit": "8-bit", "OptimState4bit": "4-bit", "OptimStateFp8": "fp8"}
runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_torchao(monkeypatch):
    """The reader must not need torchao: unimportable in these tests."""
    for name in [m for m in sys.modules if m == "torchao" or m.startswith("torchao.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchao", None)


def _truth(folder: Path, name: str) -> dict:
    return json.loads((folder / "truth.json").read_text())["files"][name]


def _sha(x: torch.Tensor) -> str:
    return hashlib.sha256(x.float().contiguous().numpy().tobytes()).hexdigest()


@pytest.mark.parametrize(("folder", "name"), FILES + OLDER, ids=[f for _, f in FILES + OLDER])
def test_moments_are_torchaos_own_dequantization_bit_for_bit(folder, name):
    truth = _truth(folder, name)
    kinds = {KIND[t["kind"]] for t in truth.values() if t["kind"] in KIND}
    assert len(kinds) == 1 and any(t["kind"] == "Tensor" for t in truth.values())  # quantized and float32 states
    s = summarize_checkpoint(folder / name)
    assert s.optimizer == f"Adam/AdamW (torchao {kinds.pop()})" and s.convention == "torch"
    assert_stats_match_library(s.tensors, truth)
    assert any("read as torchao dequantizes them" in w for w in s.warnings)
    for t in open_checkpoint(folder / name).tensors():
        for k, h in truth[t.name]["sha256"].items():
            assert _sha(getattr(t, k)) == h, (t.name, k)


def test_dequantization_in_chunks_is_the_same(monkeypatch):
    """Chunks of 512 elements: the 5120-element weights go through 10 of them (4-bit: 256 packed bytes each)."""
    from adamdiag.io.checkpoints import lazy_moments

    for name in ("adamw8bit.pt", "adamw4bit.pt", "adamwfp8.pt"):
        truth = _truth(FIX, name)
        monkeypatch.setattr(lazy_moments, "CHUNK", 512)
        for t in open_checkpoint(FIX / name).tensors():
            assert _sha(t.exp_avg) == truth[t.name]["sha256"]["exp_avg"], (name, t.name)
            assert _sha(t.exp_avg_sq) == truth[t.name]["sha256"]["exp_avg_sq"], (name, t.name)


def test_cli_inspect_json_and_hf_checkpoint_folder():
    res = runner.invoke(app, ["inspect", str(FIX / "hf_adamw_torch_4bit" / "checkpoint-3"), "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)["checkpoints"][0]
    truth = _truth(FIX, "hf_adamw_torch_4bit/checkpoint-3")
    assert data["optimizer"] == "Adam/AdamW (torchao 4-bit)" and data["step"] == 3
    w = next(t for t in data["tensors"] if t["name"] == "transformer.h.0.attn.c_attn.weight")
    assert w["sqrt_vhat_q"]["p50"] == pytest.approx(truth[w["name"]]["sqrt_vhat_q"]["p50"], rel=1e-7)


def test_replay_refuses_it_in_one_line():
    res = runner.invoke(app, ["replay", str(FIX / "adamw8bit.pt"), "--eps", "1e-3"])
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "torchao low-bit optimizer state" in err and "Traceback" not in err


def _stand_in(cls_name: str, shape: tuple[int, ...], **fields):
    from adamdiag.io.checkpoints import torchao_lowbit

    cls = next(c for n, c in torchao_lowbit._stand_ins().items() if n.endswith("." + cls_name))
    x = torch.Tensor._make_wrapper_subclass(cls, shape)
    x.__setstate__(fields)
    return x


def test_stand_in_holds_no_values_and_damage_is_named(tmp_path):
    """A stand-in refuses every operation (it has no storage); codes or scales that do not fit the shape are
    one InputError naming the state, not a wrong value."""
    from adamdiag.io.checkpoints import torchao_lowbit

    qmap = torch.linspace(-1, 1, 256)
    ok = _stand_in(
        "OptimState8bit", (16, 32), codes=torch.zeros(16, 32, dtype=torch.uint8), scale=torch.ones(2), qmap=qmap
    )
    with pytest.raises(RuntimeError, match="holds codes, not values"):
        ok + 1
    got = torchao_lowbit.unwrap({"state": {0: {"exp_avg": ok}}}, tmp_path / "x.pt")["state"][0]["exp_avg"]
    assert torch.equal(got.dequantize(), torch.full((16, 32), float(qmap[0])))
    bad = [
        _stand_in(
            "OptimState8bit", (16, 32), codes=torch.zeros(16, 32, dtype=torch.uint8), scale=torch.ones(3), qmap=qmap
        ),
        _stand_in(
            "OptimState4bit", (16, 32), codes=torch.zeros(512, dtype=torch.uint8), scale=torch.ones(4), qmap=qmap[:16]
        ),
        _stand_in("OptimState8bit", (16, 32), codes=torch.zeros(16, 32, dtype=torch.uint8), scale=torch.ones(2)),
        _stand_in("OptimStateFp8", (16, 32), codes=torch.zeros(16, 32), scale=torch.ones(2)),
    ]
    for x in bad:
        with pytest.raises(InputError, match="damaged"):
            torchao_lowbit.unwrap([x], tmp_path / "x.pt")


def test_damaged_model_safetensors_beside_the_optimizer_is_a_warning(tmp_path):
    """A checkpoint folder whose model.safetensors header is cut: the optimizer is still read (unnamed), the
    model file is named in one warning — was 'internal error: SafetensorError' (found by fuzzing this fixture)."""
    import shutil

    ck = tmp_path / "checkpoint-3"
    shutil.copytree(FIX / "hf_adamw_torch_4bit" / "checkpoint-3", ck)
    f = ck / "model.safetensors"
    f.write_bytes(f.read_bytes()[:600])
    res = runner.invoke(app, ["inspect", str(ck), "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)["checkpoints"][0]
    assert data["optimizer"] == "Adam/AdamW (torchao 4-bit)"
    assert any("model.safetensors" in w and "not a readable safetensors file" in w for w in data["warnings"])


@pytest.mark.parametrize(
    ("ckpt", "named"),
    [
        ("torchao/adamw8bit.pt", "torchao 8-bit"),
        ("bnb/adam8bit.pt", "bitsandbytes 8-bit"),
        ("lookalikes/timm/Lamb.pt", "they hold LAMB state"),
    ],
)
def test_scan_offers_no_replay_it_would_refuse(tmp_path, ckpt, named):
    """A run whose checkpoint holds quantized state (torchao, bitsandbytes) or a look-alike of Adam (LAMB): scan
    reads it, and its recommendation has no `verify: adamdiag replay ...` (replay refuses those files) but says
    how to check it."""
    import math
    import shutil

    from torch.utils.tensorboard import SummaryWriter

    shutil.copy(FIX.parent / ckpt, tmp_path / "step_000005.pt")
    w = SummaryWriter(str(tmp_path))
    for t in range(1, 121):  # quiet decay, then a climb 1.25x per step with the gradient norm
        loss = math.exp(-t / 10) + 1e-3 if t < 60 else (1e-3 + math.exp(-6)) * 1.25 ** (t - 59)
        gn = 0.5 * math.exp(-t / 20) + 0.01 if t < 60 else 0.03 * 1.3 ** (t - 59)
        w.add_scalar("train/loss", loss, t)
        w.add_scalar("train/grad_norm", gn, t)
    w.close()
    res = runner.invoke(app, ["scan", str(tmp_path), "--format", "json"])
    assert res.exit_code == 0, res.output
    run = json.loads(res.stdout)["runs"][0]
    assert run["verdict"] in ("v_collapse", "lr_too_high") and "checkpoints" in run["sources"]
    rec = run["recommendation"]
    assert not rec.get("verify") and "cannot run on these checkpoints" in rec["message"]
    assert named in rec["message"]
