"""Optimizer checkpoints real users pass, beyond the plain torch.optim.Adam file: bitsandbytes 8-bit
Adam (fixtures written by bitsandbytes itself, read without it), torch's other optimizers (read in
their own eps convention, or refused naming them), ZeroRedundancyOptimizer and FSDP2 state dicts
(2 gloo ranks), pickle protocols 4/5, Hugging Face Adafactor, Lightning weights-only checkpoints.
Every number is compared with the live optimizer state (or what the library itself reports)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from checkpoint_truth import assert_stats_match_library
from torch import nn
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.errors import NotAdamError, UntrustedCheckpointError
from adamdiag.io.checkpoints import open_checkpoint
from adamdiag.pipeline.summary import summarize_checkpoint

FIX = Path(__file__).parent.parent / "fixtures" / "bnb"
BNB_TRUTH = json.loads((FIX / "truth.json").read_text())
runner = CliRunner()


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.LayerNorm(16), nn.Linear(16, 4))


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(32, 8, generator=g), torch.randn(32, 4, generator=g)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


def _nearest_rank(x: torch.Tensor) -> dict[str, float]:
    s = torch.sort(x.double().flatten()).values
    n = s.numel()
    return {
        k: float(s[round(q * (n - 1))])
        for k, q in (("min", 0.0), ("p01", 0.01), ("p50", 0.5), ("p99", 0.99), ("max", 1.0))
    }


def _one_line_exit_2(args: list[str], *needles: str) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


# --- bitsandbytes ---------------------------------------------------------------------------------
def uses_bnb(fn):
    """The test uses bitsandbytes itself (skipped where it is absent)."""
    fn.uses_bnb = True
    return fn


@pytest.fixture(autouse=True)
def _no_bitsandbytes(request, monkeypatch):
    """The reader must not need bitsandbytes: unimportable here, except for tests that ask for it."""
    if not getattr(request.function, "uses_bnb", False):
        for name in [m for m in sys.modules if m == "bitsandbytes" or m.startswith("bitsandbytes.")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, "bitsandbytes", None)


@pytest.mark.parametrize("name", ["adam8bit.pt", "paged_adamw8bit.pt", "hf_adamw_bnb_8bit/checkpoint-3"])
def test_bnb_8bit_adam_read_as_bitsandbytes_dequantizes_it(name):
    truth = BNB_TRUTH[name]
    assert {t["bits"] for t in truth.values()} == {8, 32}  # both kinds of state in every file
    s = summarize_checkpoint(FIX / name)
    assert s.optimizer == "Adam/AdamW (bitsandbytes 8-bit)" and s.convention == "torch"
    assert_stats_match_library(s.tensors, truth)
    assert all(t.update_rms is not None and math.isfinite(t.update_rms) for t in s.tensors)
    assert any("v = 0 there need not mean 'never received a gradient'" in w for w in s.warnings)
    ck = open_checkpoint(FIX / name)
    assert all(e.hyper["decoupled_weight_decay"] is True for e in ck.entries)  # bnb's kernels: p *= 1-lr·wd


def test_bnb_dequantization_in_chunks_is_the_same(monkeypatch):
    """Large tensors are dequantized a chunk of whole blocks at a time: with chunks of 512 elements
    the fixture's 5120-element weight goes through 10 of them and must give the same values."""
    from adamdiag.io.checkpoints import lazy_moments

    whole = {t.name: (t.exp_avg, t.exp_avg_sq) for t in open_checkpoint(FIX / "adam8bit.pt").tensors()}
    monkeypatch.setattr(lazy_moments, "CHUNK", 512)
    for t in open_checkpoint(FIX / "adam8bit.pt").tensors():
        assert torch.equal(t.exp_avg, whole[t.name][0]) and torch.equal(t.exp_avg_sq, whole[t.name][1]), t.name


def test_bnb_cli_json_and_one_state_optimizer_refused():
    res = runner.invoke(app, ["inspect", str(FIX / "adam8bit.pt"), "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)["checkpoints"][0]
    assert data["optimizer"] == "Adam/AdamW (bitsandbytes 8-bit)" and data["step"] == 5
    w = next(t for t in data["tensors"] if t["name"] == "0.weight")
    assert w["sqrt_vhat_q"]["p50"] == pytest.approx(
        BNB_TRUTH["adam8bit.pt"]["0.weight"]["sqrt_vhat_q"]["p50"], rel=1e-7
    )
    _one_line_exit_2(["inspect", str(FIX / "lion8bit.pt")], "bitsandbytes one-state optimizer", "no second moment")


@uses_bnb
def test_bnb_live_optimizer_and_its_own_dequantization(tmp_path):
    """The installed bitsandbytes: a fresh Adam8bit state read back equals the library's own
    dequantization of the live state (bit for bit), and the fixture's codes dequantize as it does."""
    bnb = pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as F

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 80), nn.ReLU(), nn.Linear(80, 4))
    opt = bnb.optim.Adam8bit(model.parameters(), lr=1e-2, min_8bit_size=256)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(16, 64, generator=g)).pow(2).mean().backward()
        opt.step()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "a.pt")
    # bitsandbytes before 0.45 did not override state_dict(): torch's own, keys state1/qmap1/... flat
    flat = torch.optim.Optimizer.state_dict(opt)
    assert "qmap1" in flat["state"][0] and "__bnb_optimizer_quant_state__" not in flat["state"][0]
    torch.save({"model": model.state_dict(), "optimizer": flat}, tmp_path / "flat.pt")
    check_both = [t for f in ("a.pt", "flat.pt") for t in open_checkpoint(tmp_path / f).tensors()]
    assert len(check_both) == 2 * len(list(model.parameters()))
    params = dict(model.named_parameters())
    for t in check_both:
        st = opt.state[params[t.name]]
        for k, mine in ((1, t.exp_avg), (2, t.exp_avg_sq)):
            s = st[f"state{k}"]
            if s.dtype == torch.uint8:
                # the optimizer's blocks: one absmax per 256 elements (what its kernels quantize with)
                assert st[f"absmax{k}"].numel() == -(-s.numel() // 256)
                ref = F.dequantize_blockwise(s, absmax=st[f"absmax{k}"], code=st[f"qmap{k}"], blocksize=256)
            else:
                ref = s
            assert torch.equal(mine, ref), (t.name, k)
        assert t.step == st["step"] == 3


# --- torch.optim: which states are Adam's, in which eps convention --------------------------------
def _live_frac_below_eps(opt: torch.optim.Optimizer, p: torch.Tensor) -> float:
    """Fraction of elements where eps dominates the optimizer's own denominator √v + eps (RAdam,
    SparseAdam: eps on the un-corrected √v)."""
    v = opt.state[p]["exp_avg_sq"]
    return float((v.sqrt() < opt.param_groups[0]["eps"]).double().mean())


def test_radam_is_read_in_its_own_eps_convention(tmp_path):
    model = _net()
    # eps 1e-2: in the range of √v here, so the convention decides the fraction
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2, eps=1e-2)
    _train(model, opt, 8)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "radam.pt")
    s = summarize_checkpoint(tmp_path / "radam.pt")
    assert (s.optimizer, s.convention) == ("RAdam", "tf")
    assert any("from step 6 on" in w for w in s.warnings)  # ρ_t > 5 first at t=6 for β2=0.999
    params = dict(model.named_parameters())
    fracs = []
    for t in s.tensors:
        p = params[t.name]
        fracs.append(_live_frac_below_eps(opt, p))
        assert t.frac_sqrt_vhat_below_eps == pytest.approx(fracs[-1], abs=1e-12), t.name
        st = opt.state[p]
        ref = _nearest_rank((st["exp_avg_sq"].double() / (1 - 0.999 ** int(st["step"]))).sqrt())
        assert t.sqrt_vhat_q == pytest.approx(ref, rel=1e-12)
    assert 0 < sum(fracs) < len(fracs)  # the check above tells the conventions apart


def test_sparse_adam_tf_convention_and_no_weight_decay(tmp_path):
    torch.manual_seed(0)
    emb = nn.Embedding(50, 8, sparse=True)
    opt = torch.optim.SparseAdam(emb.parameters(), lr=1e-2, eps=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        opt.zero_grad()
        emb(torch.randint(0, 50, (10,), generator=g)).pow(2).sum().backward()
        opt.step()
    torch.save({"model": emb.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "sparse.pt")
    s = summarize_checkpoint(tmp_path / "sparse.pt")
    (t,) = s.tensors
    assert (s.optimizer, s.convention, t.name, t.weight_decay) == ("SparseAdam", "tf", "weight", 0.0)
    assert t.frac_sqrt_vhat_below_eps == pytest.approx(_live_frac_below_eps(opt, emb.weight), abs=1e-12)
    assert not any("unknown" in w for w in s.warnings)


@pytest.mark.parametrize(
    "kw",
    [
        {"maximize": True},
        {"amsgrad": True, "fused": True},
        {"decoupled_weight_decay": True, "weight_decay": 0.1},
        {"foreach": True, "amsgrad": True},
    ],
    ids=["maximize", "amsgrad_fused", "adam_decoupled", "foreach_amsgrad"],
)
def test_adam_flags(tmp_path, kw):
    model = _net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, eps=1e-6, **kw)
    _train(model, opt, 4)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "a.pt")
    s = summarize_checkpoint(tmp_path / "a.pt")
    assert s.optimizer == ("AdamW" if kw.get("decoupled_weight_decay") else "Adam") and s.convention == "torch"
    params = dict(model.named_parameters())
    for t in s.tensors:
        st = opt.state[params[t.name]]
        v = st["max_exp_avg_sq"] if kw.get("amsgrad") else st["exp_avg_sq"]
        assert t.sqrt_vhat_q == pytest.approx(_nearest_rank((v.double() / (1 - 0.999**4)).sqrt()), rel=1e-12)
        assert t.step == 4


def test_differentiable_adam_state(tmp_path):
    """differentiable=True (torch's own use: non-leaf parameters, gradients set by hand)."""
    torch.manual_seed(0)
    ws = [torch.randn(16, 8, requires_grad=True).clone(), torch.randn(16, requires_grad=True).clone()]
    opt = torch.optim.Adam(ws, lr=1e-2, differentiable=True)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for w in ws:
            w.grad = torch.randn(w.shape, generator=g)
        opt.step()
    torch.save({"optimizer": opt.state_dict()}, tmp_path / "d.pt")
    s = summarize_checkpoint(tmp_path / "d.pt")
    for t, w in zip(s.tensors, ws):
        ref = _nearest_rank((opt.state[w]["exp_avg_sq"].detach().double() / (1 - 0.999**3)).sqrt())
        assert t.label == f"group 0 / index {t.index}" and t.sqrt_vhat_q == pytest.approx(ref, rel=1e-12)


def test_adafactor_with_beta1_is_refused_not_read_as_adam(tmp_path):
    """Hugging Face Adafactor with beta1 keeps exp_avg + exp_avg_sq on 1-D tensors — Adafactor's
    moments (β2 = 1-t^-0.8, m an EMA of the update), not Adam's: the file is refused, naming it."""
    tf_opt = pytest.importorskip("transformers.optimization")
    model = _net()
    opt = tf_opt.Adafactor(model.parameters(), lr=1e-3, scale_parameter=False, relative_step=False, beta1=0.9)
    _train(model, opt, 3)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "af.pt")
    with pytest.raises(NotAdamError, match=r"Adafactor \(exp_avg_sq_row/exp_avg_sq_col\)"):
        open_checkpoint(tmp_path / "af.pt")
    _one_line_exit_2(["inspect", str(tmp_path / "af.pt")], "not an Adam optimizer state")


def test_lbfgs_is_named(tmp_path):
    model = _net()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 8), torch.randn(16, 4)

    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    opt.step(closure)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "lbfgs.pt")
    _one_line_exit_2(["inspect", str(tmp_path / "lbfgs.pt")], "LBFGS (old_dirs/old_stps/H_diag)")


# --- torch.save variants ---------------------------------------------------------------------------
class _RunsCode:
    """Unpickling this runs a shell command (what a malicious checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("protocol", [4, 5])
def test_pickle_protocol_4_and_5(tmp_path, zipped, protocol):
    """torch's weights_only loader reads pickle protocol 2 only (it called a protocol 4/5 file 'unsupported
    operand 149', a legacy one 'neither zip nor legacy format'): such files are read with the same
    allow-list applied by Python's unpickler — and what needs code is still refused, naming the global."""
    model = _net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, opt, 3)
    save = {"_use_new_zipfile_serialization": zipped, "pickle_protocol": protocol}
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "p.pt", **save)
    s = summarize_checkpoint(tmp_path / "p.pt")
    ref = _nearest_rank((opt.state[model[0].weight]["exp_avg_sq"].double() / (1 - 0.999**3)).sqrt())
    assert s.tensors[0].name == "0.weight" and s.tensors[0].sqrt_vhat_q == pytest.approx(ref, rel=1e-12)
    assert len(s.tensors) == 8 and s.step == 3
    res = runner.invoke(app, ["inspect", str(tmp_path / "p.pt")])
    assert res.exit_code == 0 and not res.stderr.strip(), res.output  # no torch protocol warning either

    import fractions

    torch.save({"optimizer": opt.state_dict(), "ratio": fractions.Fraction(1, 3)}, tmp_path / "ns.pt", **save)
    with pytest.raises(UntrustedCheckpointError, match="GLOBAL fractions.Fraction"):
        open_checkpoint(tmp_path / "ns.pt")
    marker = tmp_path / "ran"
    torch.save({"optimizer": opt.state_dict(), "x": _RunsCode(marker)}, tmp_path / "evil.pt", **save)
    _one_line_exit_2(["inspect", str(tmp_path / "evil.pt")], "GLOBAL posix.system", "--trust-checkpoint")
    assert not marker.exists()


# --- distributed: ZeroRedundancyOptimizer and FSDP2 (2 gloo ranks) -------------------------------
@pytest.fixture(scope="module")
def distributed(tmp_path_factory):
    import make_reach_checkpoints as mk

    out = tmp_path_factory.mktemp("reach")
    return out, mk.write(out)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["zero.pt", "fsdp2_full.pt"])
def test_zero_and_fsdp2_full_state_dicts(distributed, name):
    out, truth = distributed
    s = summarize_checkpoint(out / name)
    assert s.optimizer == "Adam" and s.step == 4
    assert s.name_mapping == ("fqn" if name.startswith("fsdp2") else "model-order")
    assert {t.name for t in s.tensors} == set(truth[name]) and len(s.tensors) == 8
    for t in s.tensors:
        ref = truth[name][t.name]
        assert list(t.shape) == ref["shape"] and t.step == ref["step"]
        assert t.sqrt_vhat_q == pytest.approx(ref["sqrt_vhat_q"], rel=1e-12), t.name
        assert t.v_mean == pytest.approx(ref["v_mean"], rel=1e-12)


@pytest.mark.slow
def test_one_ranks_dtensor_shards_are_refused(distributed):
    out, _ = distributed
    f = out / "fsdp2_sharded_rank0.pt"
    _one_line_exit_2(["inspect", str(f)], "one rank's shard", "full_state_dict=True")
    # trusted too: unpickled without its process group a DTensor is not the tensor its shape says
    res = runner.invoke(app, ["inspect", str(f), "--trust-checkpoint"])
    assert res.exit_code == 2 and "one rank's shard" in res.stderr and "Traceback" not in res.output


# --- Lightning ---------------------------------------------------------------------------------------
def test_lightning_weights_only_checkpoint_says_why(tmp_path):
    """Trainer.save_checkpoint(weights_only=True) — what ModelCheckpoint(save_weights_only=True) writes."""
    L = pytest.importorskip("lightning")

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(4, 1)

        def training_step(self, batch, _):
            return nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    data = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(Module(), torch.utils.data.DataLoader(data, batch_size=8))
    trainer.save_checkpoint(tmp_path / "w.ckpt", weights_only=True)
    trainer.save_checkpoint(tmp_path / "full.ckpt")
    _one_line_exit_2(["inspect", str(tmp_path / "w.ckpt")], "save_weights_only=True keeps no optimizer state")
    assert runner.invoke(app, ["inspect", str(tmp_path / "full.ckpt")]).exit_code == 0


def test_damaged_legacy_format_file_is_one_line(tmp_path):
    """torch's loader raises KeyError (an unknown layout name) on this damaged legacy-format file (torchao's
    states name their layout): one line, exit 2 — was an internal error (found by fuzzing)."""
    data = (FIX.parent / "torchao" / "adamw8bit_legacy_format.pt").read_bytes()
    assert data.count(b"torch.strided") >= 1
    f = tmp_path / "legacy.pt"
    f.write_bytes(data.replace(b"torch.strided", b"|orch.strided", 1))
    _one_line_exit_2(["inspect", str(f)], "not a readable torch checkpoint")
