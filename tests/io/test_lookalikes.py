"""Adam's look-alikes — optimizers that store Adam's keys (exp_avg, exp_avg_sq) with another update or another v
— in files timm 1.0.31, torch-optimizer 0.3.0 and galore-torch 1.0 wrote (tools/runlab/make_lookalike_fixtures.py): each is named;
refused where its v or its step is not Adam's, read with a warning where only the step is modified, and never
replayed. Before, all of them read silently as 'unknown-adam'."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.io.checkpoints import _optimizer_kind, lookalikes
from adamdiag.pipeline.summary import summarize_checkpoint

FIX = Path(__file__).parent.parent / "fixtures" / "lookalikes"
TRUTH = json.loads((FIX / "truth.json").read_text())
runner = CliRunner()

# file -> (name, convention) when read; the refusal's words when refused (from each optimizer's source: what its
# v and its step are)
READ = {
    "timm/AdamP.pt": ("AdamP", "torch"),
    "timm/Lamb.pt": ("LAMB", "torch"),
    "timm/NAdamLegacy.pt": ("NAdam", "torch"),
    "torch_optimizer/AdaBound.pt": ("AdaBound", "tf"),
    "torch_optimizer/AdaMod.pt": ("AdaMod", "tf"),
    "torch_optimizer/AdamP.pt": ("AdamP", "torch"),
    "torch_optimizer/DiffGrad.pt": ("diffGrad", "tf"),
    "torch_optimizer/Lamb.pt": ("LAMB (torch-optimizer)", "torch"),
    "torch_optimizer/QHAdam.pt": ("QHAdam", "torch"),
    "torch_optimizer/RAdam.pt": ("RAdam", "tf"),
    "torch_optimizer/Ranger.pt": ("Ranger (RAdam, Lookahead)", "tf"),
    "torch_optimizer/RangerQH.pt": ("RangerQH (QHAdam, Lookahead)", "torch"),
    "torch_optimizer/SWATS.pt": ("SWATS", "tf"),
    "galore_torch/AdamW_transformers_legacy.pt": ("AdamW (transformers' legacy)", "tf"),
    "dcp/timm_Lamb": ("LAMB", "torch"),  # saved with torch.distributed.checkpoint
}
REFUSED = {
    "timm/Adan.pt": "Adan state (three betas",
    "timm/Adopt.pt": "ADOPT state",
    "timm/LaProp.pt": "LaProp state",
    "timm/Mars.pt": "MARS state",
    "timm/NvNovoGrad.pt": "NovoGrad state (one second moment per tensor",
    "timm/AdafactorBigVision.pt": "Adafactor (timm AdafactorBigVision)",
    "timm/AdaBelief.pt": "AdaBelief (exp_avg_var)",
    "torch_optimizer/NovoGrad.pt": "NovoGrad state",
    "torch_optimizer/RangerVA.pt": "RangerVA state",
    "torch_optimizer/Yogi.pt": "Yogi state (its v moves additively",
    "torch_optimizer/MADGRAD.pt": "MADGRAD (grad_sum_sq)",
    "galore_torch/GaLore.pt": "GaLore state (the m and v of its projected parameters",
    "dcp/torch_optimizer_Yogi": "Yogi state (its v moves additively",  # saved with torch.distributed.checkpoint
}
# Adam-shaped states nothing tells from Adam's: read as before
PLAIN = {"timm/AdamWLegacy.pt", "timm/NAdamW.pt", "timm/RAdamLegacy.pt"}


def test_every_fixture_has_an_expectation():
    assert set(TRUTH) == set(READ) | set(REFUSED) | PLAIN


@pytest.mark.parametrize("name", sorted(READ))
def test_read_named_with_what_differs(name):
    want, convention = READ[name]
    s = summarize_checkpoint(FIX / name)
    assert (s.optimizer, s.convention) == (want, convention)
    note = next(x.note for x in (*lookalikes.LOOKALIKES, lookalikes._RANGER_QH) if x.name == want)
    assert note and note in s.warnings
    assert s.replay_refusal and want in s.replay_refusal
    truth = TRUTH[name]["moments"]
    assert {t.name for t in s.tensors} == set(truth)
    for t in s.tensors:  # the stored moments, as the library left them
        assert t.m_abs_mean == pytest.approx(truth[t.name]["m_abs_mean"], rel=1e-6)
        assert t.v_mean == pytest.approx(truth[t.name]["v_mean"], rel=1e-6)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_in_one_line_naming_it(name):
    res = runner.invoke(app, ["inspect", str(FIX / name)])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    # GaLore's file pickles its GaLoreProjector objects: read as inert stand-ins, said in one warning first
    assert len(lines) == 1 or (len(lines) == 2 and "inert stand-ins" in lines[0]), lines
    err = lines[-1]
    assert "Traceback" not in res.output, res.output
    assert "not an Adam optimizer state" in err and REFUSED[name] in err, err
    assert "damaged" not in err and "such as Lion" not in err  # what NovoGrad and AdaBelief read as before


@pytest.mark.parametrize("name", ["timm/Lamb.pt", "torch_optimizer/QHAdam.pt", "timm/Adan.pt"])
def test_replay_refuses_them(name):
    res = runner.invoke(app, ["replay", str(FIX / name), "--eps", "1e-3"])
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert (
        "replay re-runs torch.optim.Adam/AdamW" in err and name.split("/")[1].removesuffix(".pt").lower() in err.lower()
    ), err


def _adam_state() -> dict:
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 4))
    opt = torch.optim.Adam([p], lr=1e-3)
    p.grad = torch.randn(4, 4)
    opt.step()
    return opt.state_dict()


@pytest.mark.parametrize(
    ("extra", "want"),
    [
        ({"max_coeff": 10.0, "min_coeff": 0.01, "max_grad_norm": 0.0, "bias_correction": True}, "LAMB"),  # DeepSpeed
        ({"grad_averaging": True, "max_grad_norm": 1.0, "bias_correction": True}, "LAMB"),  # apex FusedLAMB
        ({"max_grad_norm": 0.0, "bias_correction": True}, None),  # apex's old FusedAdam: Adam
    ],
)
def test_fused_lamb_group_keys(extra, want):
    """DeepSpeed's FusedLamb and apex's FusedLAMB need CUDA: their param-group keys (from their source) on a real
    torch Adam state; apex's old FusedAdam, whose groups also carry max_grad_norm, stays Adam."""
    osd = _adam_state()
    osd["param_groups"] = [{**g, **extra} for g in osd["param_groups"]]
    got = lookalikes.identify(osd)
    assert (got.name if got else None) == want


def test_timm_cautious_update_is_said():
    osd = copy.deepcopy(torch.load(FIX / "timm/AdamWLegacy.pt", weights_only=True)["optimizer"])
    assert _optimizer_kind(osd)[1] == []
    osd["param_groups"][0]["caution"] = True  # timm's C-AdamW: AdamWLegacy(caution=True)
    assert any("cautious update" in w for w in _optimizer_kind(osd)[1])


def test_swats_after_its_switch_to_sgd_is_refused():
    osd = copy.deepcopy(torch.load(FIX / "torch_optimizer/SWATS.pt", weights_only=True)["optimizer"])
    assert lookalikes.identify(osd).refuse is None
    osd["param_groups"][0]["phase"] = "SGD"
    assert "switched to SGD" in lookalikes.identify(osd).refuse


def test_transformers_legacy_adamw_without_bias_correction():
    """correct_bias=False (BERT's recipe): its m and v enter the step undivided — read with the divisors (1, 1)."""
    from adamdiag.io.checkpoints import open_checkpoint

    ck = open_checkpoint(FIX / "galore_torch/AdamW_transformers_legacy.pt")
    assert all(e.hyper["bias"] is None for e in ck.entries)
    raw = torch.load(FIX / "galore_torch/AdamW_transformers_legacy.pt", weights_only=True)
    raw["optimizer"]["param_groups"][0]["correct_bias"] = False
    from adamdiag.io.checkpoints import entries_from_state_dict

    entries, _ = entries_from_state_dict(raw["optimizer"], FIX / "x.pt")
    assert all(e.hyper["bias"] == (1.0, 1.0) for e in entries)


def test_galore_over_bitsandbytes_is_refused(tmp_path):
    """galore-torch's GaLoreAdamW8bit keeps bitsandbytes' 8-bit state plus a `projector` per projected parameter:
    the bitsandbytes reader, which runs first, refuses it naming GaLore (a real bitsandbytes file, a projector
    entry added: galore's own class needs bitsandbytes and CUDA here)."""
    raw = torch.load(FIX.parent / "bnb" / "adam8bit.pt", weights_only=True)
    st = raw["optimizer"]["state"]
    st[0] = {**st[0], "projector": {"rank": 4}}
    torch.save(raw, tmp_path / "galore8bit.pt")
    res = runner.invoke(app, ["inspect", str(tmp_path / "galore8bit.pt")])
    assert res.exit_code == 2 and "GaLore (bitsandbytes 8-bit)" in res.stderr, res.output


@pytest.mark.parametrize("name", ["timm/Lamb.pt", "dcp/timm_Lamb"])
def test_a_step_kept_in_the_param_group_is_the_checkpoints_step(name):
    """timm's LAMB (as FusedAdam) counts its step in the param group: the checkpoint's step in both layouts (the DCP
    reader took only per-parameter steps before)."""
    assert summarize_checkpoint(FIX / name).step == 3
