"""The batched sweep (vmap + stacked Adam) against the reference: K sequential replays with the real
torch.optim.Adam/AdamW; and the reference against the training loop itself."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from adamdiag.replay.checkpoint import load_replay_checkpoint
from adamdiag.replay.engine import replay_one, replay_sequential
from adamdiag.replay.protocol import Variant, make_variants, validate_spec
from adamdiag.replay.sweep import VmapUnsupported, replay_batched

CPU = torch.device("cpu")


class Net(nn.Module):
    """Two layers, a 0-dim parameter, and one used only on even steps (no gradient on odd ones:
    torch.optim.Adam then skips it, its step counter falls behind the others)."""

    def __init__(self, bn: bool = False) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.l1 = nn.Linear(6, 16)
        self.bn = nn.BatchNorm1d(16) if bn else None
        self.l2 = nn.Linear(16, 3)
        self.temp = nn.Parameter(torch.tensor(0.7))
        self.extra = nn.Parameter(torch.randn(3) * 0.1)

    def forward(self, x: torch.Tensor, even: bool) -> torch.Tensor:
        h = self.l1(x)
        if self.bn is not None:
            h = self.bn(h)
        out = self.l2(torch.tanh(h)) * self.temp
        return out + self.extra if even else out


def batch(t: int):
    g = torch.Generator().manual_seed(t)
    x = torch.randn(24, 6, generator=g)
    return {"x": x, "y": torch.sin(x[:, :3] * 2), "even": t % 2 == 0}


def loss(model: nn.Module, b) -> torch.Tensor:
    return ((model(b["x"], b["even"]) - b["y"]) ** 2).mean()


def make_checkpoint(
    path: Path, *, kind: str, bn: bool = False, steps: int = 20, clip: float | None = None, continue_for: int = 0
) -> list[float]:
    """Train ``steps`` steps with real torch.optim, save, then train ``continue_for`` more; returns the
    losses of the continuation (what a replay from the checkpoint must reproduce)."""
    model = Net(bn)
    # custom groups from named_parameters(): the saved param_names let replay match them to the model
    named = dict(model.named_parameters())
    decay = [(n, named[n]) for n in ("l1.weight", "l2.weight")]
    rest = [(n, p) for n, p in named.items() if n not in ("l1.weight", "l2.weight")]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0, "lr": 5e-3}]
    if kind == "adamw_amsgrad":
        opt = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, amsgrad=True)
    elif kind == "adam_l2":
        opt = torch.optim.Adam(groups, lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    else:
        opt = torch.optim.Adam(groups, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, maximize=True)
    out = []
    for t in range(1, steps + continue_for + 1):
        if t == steps + 1:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": steps}, path)
        opt.zero_grad()
        ls = loss(model, batch(t))
        if t > steps:
            out.append(float(ls.detach()))
        ls.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    if continue_for == 0:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": steps}, path)
    return out


def spec_for(bn: bool = False, clip: float | None = None):
    return validate_spec({"model": Net(bn), "batch": batch, "loss": loss, "clip_grad_norm": clip}, "test:entry", "test")


def variants_for(ckpt) -> list[Variant]:
    g = ckpt.param_groups[0]
    orig = Variant("original", g["eps"], g["betas"][1], g["lr"])
    return make_variants(orig, ["1e-3"], None, None) + make_variants(orig, None, ["0.5"], ["3e-2"], grid=True)[1:]


def rel(a: list[float], b: list[float]) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-30)))


def rel_nan(a: list[float], b: list[float]) -> float:
    """rel() where both are finite; NaN (no gradient at that step) must sit at the same steps."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert (np.isnan(a) == np.isnan(b)).all()
    ok = ~np.isnan(a)
    return rel(list(a[ok]), list(b[ok])) if ok.any() else 0.0


CASES = [("adamw_amsgrad", 0.05), ("adam_l2", None), ("adam_maximize", 0.1)]


@pytest.mark.parametrize(("kind", "clip"), CASES)
def test_reference_replay_equals_the_training_loop(tmp_path, kind, clip):
    """Replaying from a checkpoint with the original settings IS the training: bit for bit."""
    path = tmp_path / "ck.pt"
    truth = make_checkpoint(path, kind=kind, clip=clip, continue_for=15)
    ckpt = load_replay_checkpoint(path)
    curve = replay_one(spec_for(clip=clip), ckpt, variants_for(ckpt)[0], 15, CPU)
    assert curve.losses == truth
    if clip is not None:  # the clip is active in these runs, so the test covers it
        unclipped = replay_one(spec_for(clip=None), ckpt, variants_for(ckpt)[0], 15, CPU)
        assert unclipped.losses != truth


@pytest.mark.parametrize(("kind", "clip"), CASES)
def test_batched_sweep_equals_sequential_torch_adam(tmp_path, kind, clip):
    path = tmp_path / "ck.pt"
    make_checkpoint(path, kind=kind, clip=clip)
    ckpt = load_replay_checkpoint(path)
    variants = variants_for(ckpt)
    assert [v.name for v in variants] == ["original", "eps=0.001", "beta2=0.5,lr=0.03"]
    # the outcome rule's moments, globally and for named tensors (a matrix, the 0-dim temperature, and
    # `extra`, which gets no gradient on odd steps)
    named = ["l1.weight", "temp", "extra"]
    seq = replay_sequential(spec_for(clip=clip), ckpt, variants, 30, CPU, named=named)
    bat = replay_batched(spec_for(clip=clip), ckpt, variants, 30, CPU, named=named)
    for s, b in zip(seq, bat):
        assert len(s.losses) == len(b.losses) == 30
        assert rel(s.losses, b.losses) <= 1e-5
        assert rel(s.update_rms[1:], b.update_rms[1:]) <= 1e-4
        assert rel(s.sqrt_vhat, b.sqrt_vhat) <= 1e-4
        assert np.allclose(s.frac_eps, b.frac_eps, atol=1e-3)
        assert list(s.moments) == list(b.moments) == ["global", *named]
        for scope in s.moments:
            ms, mb = s.moments[scope], b.moments[scope]
            assert rel_nan(ms.g2_mean, mb.g2_mean) <= 1e-4, scope
            assert rel_nan(ms.vhat_prev_mean, mb.vhat_prev_mean) <= 1e-4, scope
            assert rel(ms.median_sqrt_vhat, mb.median_sqrt_vhat) <= 1e-4, scope
        # the moments are what they claim: the median is one of the elements, r = g²/v̂ is finite
        assert all(x > 0 for x in s.moments["global"].median_sqrt_vhat)
        assert np.isnan(s.moments["extra"].g2_mean[0]) and not np.isnan(s.moments["extra"].g2_mean[1])
    # the variants really differ (the test would pass trivially otherwise)
    assert rel(seq[0].losses, seq[2].losses) > 1e-3
    # the checkpoint in memory is untouched by the replays: a second replay gives the same numbers
    again = replay_sequential(spec_for(clip=clip), ckpt, variants[:1], 30, CPU)
    assert again[0].losses == seq[0].losses


def test_batched_truncates_after_nonfinite_like_sequential(tmp_path):
    """A variant whose loss goes non-finite stops there, in both paths, without touching the others."""
    path = tmp_path / "ck.pt"
    make_checkpoint(path, kind="adam_l2")
    ckpt = load_replay_checkpoint(path)
    g = ckpt.param_groups[0]
    orig = Variant("original", g["eps"], g["betas"][1], g["lr"])
    variants = [orig, Variant("huge lr", g["eps"], g["betas"][1], 1e30)]
    seq = replay_sequential(spec_for(), ckpt, variants, 20, CPU)
    bat = replay_batched(spec_for(), ckpt, variants, 20, CPU)
    assert len(seq[1].losses) == len(bat[1].losses) < 20
    assert not math.isfinite(seq[1].losses[-1]) and not math.isfinite(bat[1].losses[-1])
    assert rel(seq[0].losses, bat[0].losses) <= 1e-5 and len(bat[0].losses) == 20


@pytest.mark.parametrize("kind", ["adam_l2", "adam_maximize"])
def test_recorded_g2_is_what_adam_put_into_v(tmp_path, kind):
    """mean g² as recorded = mean of (v_t - β2·v_{t-1})/(1-β2) of the real optimizer's step (L2 weight
    decay and maximize included), and mean v̂_{t-1} its bias-corrected state before the step."""
    path = tmp_path / "ck.pt"
    make_checkpoint(path, kind=kind)
    ckpt = load_replay_checkpoint(path)
    curve = replay_one(spec_for(), ckpt, variants_for(ckpt)[0], 1, CPU)
    saved = torch.load(path, weights_only=True)
    model = Net()
    model.load_state_dict(saved["model"])
    named = dict(model.named_parameters())
    groups = [
        {"params": [named[n] for n in ("l1.weight", "l2.weight")], "weight_decay": 0.1},
        {
            "params": [p for n, p in named.items() if n not in ("l1.weight", "l2.weight")],
            "weight_decay": 0.0,
            "lr": 5e-3,
        },
    ]
    beta2 = 0.99 if kind == "adam_l2" else 0.999
    opt = torch.optim.Adam(groups, lr=1e-2, betas=(0.9, beta2), eps=1e-8, maximize=kind == "adam_maximize")
    opt.load_state_dict(saved["optimizer"])
    loss(model, batch(21)).backward()
    used = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
    before = {p: opt.state[p]["exp_avg_sq"].clone() for p in used}
    k = {p: float(opt.state[p]["step"]) for p in used}
    opt.step()
    n = sum(p.numel() for p in used)
    g2 = sum(float(((opt.state[p]["exp_avg_sq"] - beta2 * before[p]) / (1 - beta2)).sum()) for p in used) / n
    vprev = sum(float((before[p] / (1 - beta2 ** k[p])).sum()) for p in used) / n
    m = curve.moments["global"]
    assert abs(m.g2_mean[0] - g2) <= 1e-3 * abs(g2)
    assert abs(m.vhat_prev_mean[0] - vprev) <= 1e-5 * abs(vprev)


def test_median_sample_is_the_same_elements_in_both_engines(tmp_path, monkeypatch):
    """Above OUTCOME_MEDIAN_SAMPLE elements the median √v̂ is taken over a strided sample; both engines
    take the same one (here forced on a small model)."""
    import adamdiag.replay.engine as engine

    monkeypatch.setattr(engine, "OUTCOME_MEDIAN_SAMPLE", 7)
    assert engine.median_stride(100) == 15
    path = tmp_path / "ck.pt"
    make_checkpoint(path, kind="adam_l2")
    ckpt = load_replay_checkpoint(path)
    variants = variants_for(ckpt)
    seq = replay_sequential(spec_for(), ckpt, variants, 5, CPU, named=["l1.weight"])
    bat = replay_batched(spec_for(), ckpt, variants, 5, CPU, named=["l1.weight"])
    for s, b in zip(seq, bat):
        for scope in ("global", "l1.weight"):
            assert rel(s.moments[scope].median_sqrt_vhat, b.moments[scope].median_sqrt_vhat) <= 1e-4


def test_stop_rule_ends_variants_alike_in_both_engines(tmp_path):
    """A decided blowup ends a variant where the rule says, in both engines; a spent budget cuts every
    variant short and marks it truncated."""
    import time

    from adamdiag.replay.engine import StopRule

    path = tmp_path / "ck.pt"
    make_checkpoint(path, kind="adam_l2")
    ckpt = load_replay_checkpoint(path)
    variants = variants_for(ckpt)
    # variant "decided" once it has 3 steps (whatever its losses), settled 5 steps in
    rule = StopRule(stop_after=lambda losses: 5 if len(losses) >= 3 else None, every=1)
    seq = replay_sequential(spec_for(), ckpt, variants, 12, CPU, stop=rule)
    bat = replay_batched(spec_for(), ckpt, variants, 12, CPU, stop=rule)
    assert [len(c.losses) for c in seq] == [len(c.losses) for c in bat] == [5, 5, 5]
    assert not any(c.truncated for c in seq + bat)
    assert rel(seq[2].losses, bat[2].losses) <= 1e-5
    spent = StopRule(deadline=time.monotonic() - 1)
    bat = replay_batched(spec_for(), ckpt, variants, 12, CPU, stop=spent)
    assert all(c.truncated and len(c.losses) == 1 for c in bat)
    one = replay_one(spec_for(), ckpt, variants[0], 12, CPU, stop=spent)
    assert one.truncated and len(one.losses) == 1
    seq = replay_sequential(spec_for(), ckpt, variants, 12, CPU, stop=spent)
    assert all(c.truncated and not c.losses for c in seq)  # not even started


def test_batchnorm_cannot_be_vmapped_and_the_command_falls_back(tmp_path):
    """BatchNorm in train mode updates its buffers in place: vmap refuses, the command warns and
    replays one by one (same numbers as the sequential reference)."""
    import numpy as np

    from adamdiag.replay.runner import Plan, replay_variants

    path = tmp_path / "ck.pt"
    make_checkpoint(path, kind="adam_l2", bn=True)
    ckpt = load_replay_checkpoint(path)
    variants = variants_for(ckpt)
    with pytest.raises(VmapUnsupported):
        replay_batched(spec_for(bn=True), ckpt, variants, 3, CPU)
    plan = Plan(
        checkpoint=path,
        ckpt=ckpt,
        spec=spec_for(bn=True),
        run_dir=tmp_path,
        logged_steps=np.arange(1, 21),
        logged_values=np.ones(20),
        rule=None,
        steps=5,
        variants=variants,
    )
    warns: list[str] = []
    curves, mode = replay_variants(plan, [0, 1, 2], CPU, sequential=False, warnings=warns)
    assert mode == "sequential"
    assert len(warns) == 1 and "cannot be batched with torch.func.vmap" in warns[0]
    ref = replay_sequential(spec_for(bn=True), ckpt, variants, 5, CPU)
    assert [c.losses for c in curves] == [r.losses for r in ref]


@pytest.mark.gpu
def test_cuda_sweep_equals_cpu_sweep(tmp_path):
    path = tmp_path / "ck.pt"
    make_checkpoint(path, kind="adamw_amsgrad", clip=0.05)
    ckpt = load_replay_checkpoint(path)
    variants = variants_for(ckpt)
    cpu = replay_batched(spec_for(clip=0.05), ckpt, variants, 30, CPU)
    gpu = replay_batched(spec_for(clip=0.05), ckpt, variants, 30, torch.device("cuda"))
    ref_gpu = replay_sequential(spec_for(clip=0.05), ckpt, variants, 30, torch.device("cuda"))
    for c, g, r in zip(cpu, gpu, ref_gpu):
        assert rel(c.losses, g.losses) <= 1e-4  # TF32/other kernels: agreement to float32 noise, not bits
        assert rel(r.losses, g.losses) <= 1e-4


def _lam(k: int) -> float:
    return min(1.0, (k + 1) / 10) * 0.97**k  # warm-up, then decay: the lr changes every step


def test_lr_schedule_is_replayed(tmp_path):
    """A run with a LambdaLR scheduler: with the optional lr_schedule key the reference replay is the
    training bit for bit, and the batched sweep follows the same schedule (scaled per variant)."""
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lam)
    truth = []
    for t in range(1, 36):
        if t == 21:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 20}, tmp_path / "ck.pt")
        opt.zero_grad()
        ls = loss(model, batch(t))
        if t > 20:
            truth.append(float(ls.detach()))
        ls.backward()
        opt.step()
        sched.step()
    ckpt = load_replay_checkpoint(tmp_path / "ck.pt")

    def spec(schedule):
        return validate_spec({"model": Net(), "batch": batch, "loss": loss, "lr_schedule": schedule}, "t:e", "t")

    variants = variants_for(ckpt)
    with_sched = spec(lambda t: 1e-2 * _lam(t - 1))  # the lr update t used: LambdaLR's base_lr * λ(t-1)
    assert replay_one(with_sched, ckpt, variants[0], 15, CPU).losses == truth
    assert replay_one(spec(None), ckpt, variants[0], 15, CPU).losses != truth  # the schedule matters here
    seq = replay_sequential(with_sched, ckpt, variants, 15, CPU)
    bat = replay_batched(with_sched, ckpt, variants, 15, CPU)
    for s, b in zip(seq, bat):
        assert rel(s.losses, b.losses) <= 1e-5
