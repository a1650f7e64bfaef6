"""The monitor's compiled fused pass (adamdiag/monitor/_monitor_kernel.c) against its torch path and a
float64 evaluation of the same definitions, on Adam state from a real training loop."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from kernel_util import build_with_other_abi
from monitor_loops import regression_data, train

from adamdiag.monitor import kernel
from adamdiag.monitor.stats import (
    CNT_10EPS,
    CNT_EPS,
    CPU_CHUNK,
    NBINS,
    NSCALAR,
    NUMEL,
    STEP,
    SUM_G2,
    SUM_UPD,
    SUM_V,
    SUM_VHAT_DEN,
    StatsEngine,
)

pytestmark = pytest.mark.skipif(not kernel.available(), reason="monitor kernel not built (or ADAMDIAG_NO_KERNEL)")

SUMS = (SUM_G2, SUM_V, SUM_VHAT_DEN, SUM_UPD)
COUNTS = (CNT_EPS, CNT_10EPS, STEP, NUMEL)

VARIANTS = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-3, eps=3e-4),
    "adam-amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-3, eps=3e-4, amsgrad=True),
    "adam-l2": lambda ps: torch.optim.Adam(ps, lr=1e-3, eps=3e-4, weight_decay=0.01),
    "adamw-fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, eps=3e-4, weight_decay=0.1, fused=True),
}


def _trained(variant: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A real MSE training loop (20 full-batch steps); the first weight spans two torch-path chunks."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(520, 512), torch.nn.Tanh(), torch.nn.Linear(512, 1))
    assert model[0].weight.numel() > CPU_CHUNK
    opt = VARIANTS[variant](list(model.parameters()))
    train(model, opt, 20, data=regression_data(seed=3, n=64, d=520))
    return model, opt


def _items(model: torch.nn.Module, opt: torch.optim.Optimizer, variant: str) -> list[tuple]:
    group = opt.param_groups[0]
    wd = float(group["weight_decay"]) if variant == "adam-l2" else 0.0
    return [(p.grad, p if wd else None, wd, opt.state[p], group) for p in model.parameters()]


def _reference(grad: torch.Tensor, p: torch.Tensor | None, wd: float, st: dict, group: dict) -> list[float]:
    """The row's definitions evaluated in float64 from the same float32 inputs (the quotient g/max(d, t1)
    in float32, as both paths divide)."""
    g = grad if p is None else torch.add(grad, p.detach(), alpha=wd)
    v = st["exp_avg_sq"]
    d = st["max_exp_avg_sq"] if group.get("amsgrad") else v
    step = torch.as_tensor(st["step"], dtype=torch.float64)
    bc = -torch.expm1(step * math.log(group["betas"][1]))
    thr1 = bc.float() * (group["eps"] ** 2)
    thr2 = bc.float() * (100.0 * group["eps"] ** 2)
    q = g / torch.clamp(d, min=thr1)
    ex = torch.bitwise_right_shift(d.reshape(-1).view(torch.int32), 23).bitwise_and(NBINS - 1)
    return [
        float((g.double() ** 2).sum()),
        float(v.double().sum()),
        float(d.double().sum()),
        float((d < thr1).sum()),
        float((d < thr2).sum()),
        float((g.double() * q.double()).sum() * bc),
        float(step),
        float(d.numel()),
        *torch.bincount(ex, minlength=NBINS).double().tolist(),
    ]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kernel_row_equals_torch_path_and_float64(variant: str) -> None:
    model, opt = _trained(variant)
    fused, torch_path = StatsEngine(use_kernel=True), StatsEngine(use_kernel=False)
    below = 0
    for item in _items(model, opt, variant):
        ref = _reference(*item)
        k = fused.tensor_row(*item).tolist()
        t = torch_path.tensor_row(*item).tolist()
        for c in SUMS:  # double sums in another order: rel 1e-12; the torch path sums chunks in float32
            assert k[c] == pytest.approx(ref[c], rel=1e-12, abs=0), (variant, c)
            assert t[c] == pytest.approx(ref[c], rel=1e-5, abs=0), (variant, c)
        for c in COUNTS:
            assert k[c] == t[c] == ref[c], (variant, c)
        assert k[NSCALAR:] == t[NSCALAR:] == ref[NSCALAR:], variant  # every histogram bin
        below += int(0 < k[CNT_EPS] < k[CNT_10EPS] < k[NUMEL])
    assert below > 0  # on the large weight, some elements below eps and more below 10·eps, not all


def test_vector_loop_equals_plain_loop_and_non_finite_values() -> None:
    """Real state with NaN (both signs), ±inf, ±0, subnormals and values at the thresholds planted; an
    odd length so the vector loop hands a tail to the plain loop."""
    model, opt = _trained("adam-amsgrad")
    p = model[0].weight
    st = opt.state[p]
    n = p.numel() - 3
    g = p.grad.reshape(-1)[:n].clone()
    v = st["exp_avg_sq"].reshape(-1)[:n].clone()
    d = st["max_exp_avg_sq"].reshape(-1)[:n].clone()
    t1, t2 = 1e-8, 1e-6
    specials = [math.nan, -math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-40, -1e-40, t1, t2, 1.1e-8, 9e-7]
    for i, x in enumerate(specials):
        d[1000 * i + 5] = x
        g[777 * i + 1] = x if math.isfinite(x) else 1.0
    accs = {}
    for plain in (False, True):
        for dd in (d, v):  # amsgrad (d is another tensor) and plain Adam (d is v)
            acc = accs[plain, dd is v] = kernel.MonAcc()
            kernel.monitor_stats(g, v, dd, t1, t2, acc, plain=plain)
    for same in (False, True):
        a, b = accs[False, same], accs[True, same]
        dd = v if same else d
        assert math.isnan(a.sum_d) == math.isnan(b.sum_d) == (not same)
        for f in ("sum_g2", "sum_v", "sum_d", "sum_upd"):
            x, y = getattr(a, f), getattr(b, f)
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-12, abs=0), (f, same)
        assert (
            (a.below1, a.below2, a.n)
            == (b.below1, b.below2, b.n)
            == (
                int((dd < t1).sum()),
                int((dd < t2).sum()),
                n,
            )
        )
        ex = torch.bitwise_right_shift(dd.view(torch.int32), 23).bitwise_and(NBINS - 1)
        assert list(a.hist) == list(b.hist) == torch.bincount(ex, minlength=NBINS).tolist()
    assert accs[False, False].hist[NBINS - 1] == 4 and accs[False, False].hist[0] >= 4  # NaN/inf; 0/subnormal


def test_not_used_for_other_tensors_or_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16, strided views and (by the environment variable) every tensor keep the torch path."""
    x = torch.ones(64, 32)
    assert kernel.usable(x, x)
    assert not kernel.usable(x.t(), x)
    assert not kernel.usable(x.to(torch.bfloat16), x)
    assert not kernel.usable(x.double(), x)
    monkeypatch.setenv("ADAMDIAG_NO_KERNEL", "1")
    kernel._lib.cache_clear()
    try:
        assert not kernel.available() and not kernel.usable(x)
        model, opt = _trained("adam")
        item = _items(model, opt, "adam")[0]
        row = StatsEngine().tensor_row(*item).tolist()  # the torch path, same counts and bins
        assert row[NSCALAR:] == _reference(*item)[NSCALAR:]
    finally:
        monkeypatch.delenv("ADAMDIAG_NO_KERNEL")
        kernel._lib.cache_clear()
    assert kernel.available()


@pytest.mark.parametrize("amsgrad", [False, True])
def test_training_is_bit_identical_with_the_fused_pass(amsgrad: bool) -> None:
    """The monitor (every step, its fused pass on the large weight; L2 decay: the decayed-gradient
    scratch too) leaves the losses and parameters bit-identical."""
    from adamdiag.monitor import AdamMonitor
    from adamdiag.monitor.stats import SMALL

    data = regression_data(seed=5, n=64, d=300)

    def run(with_monitor: bool) -> tuple[list[float], list[torch.Tensor]]:
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(300, 256), torch.nn.Tanh(), torch.nn.Linear(256, 1))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-2, amsgrad=amsgrad)
        mon = AdamMonitor(opt, model=model, every=1) if with_monitor else None
        losses = train(model, opt, 30, data=data, batch=32)
        w = model[0].weight
        assert w.numel() > SMALL and kernel.usable(w.grad, opt.state[w]["exp_avg_sq"])  # the fused pass ran
        if mon is not None:
            assert mon.step == 30 and mon.last["0.weight"]["g2_mean"] > 0
            mon.close()
        return losses, [p.detach().clone() for p in model.parameters()]

    l0, p0 = run(False)
    l1, p1 = run(True)
    assert l0 == l1
    assert all(torch.equal(a, b) for a, b in zip(p0, p1))


def test_a_library_from_another_version_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An editable install not rebuilt after a pull keeps an old .so whose struct layout may differ: it
    is refused with a warning naming the fix (the torch path runs), never misread."""
    so = build_with_other_abi(
        Path(kernel.__file__).parent / "_monitor_kernel.c", "ADAMDIAG_MONITOR_KERNEL_ABI", tmp_path
    )
    monkeypatch.delenv("ADAMDIAG_NO_KERNEL", raising=False)
    monkeypatch.setattr(kernel, "_library_path", lambda: so)
    kernel._lib.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="another version"):
            assert not kernel.available()
    finally:
        kernel._lib.cache_clear()
