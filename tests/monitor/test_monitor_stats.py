"""The monitor's per-tensor statistics equal exact torch computations on the live Adam state."""

from __future__ import annotations

import math

import pytest
import torch
from monitor_loops import mlp, train

from adamdiag.monitor import AdamMonitor
from adamdiag.monitor.stats import CPU_CHUNK, QUANTILE_FACTOR, SMALL, StatsEngine


def _model(big: bool, device: str = "cpu") -> torch.nn.Module:
    """Small tensors (the packed path) and, with ``big``, one tensor larger than a chunk (the chunked
    path, 2 chunks); ``big`` only where the chunked path differs (amsgrad, for-each) — it is slow."""
    torch.manual_seed(0)
    width = 520 if big else 40
    m = torch.nn.Sequential(torch.nn.Linear(width, 512), torch.nn.Linear(512, 3), torch.nn.Linear(3, 2))
    if big:
        assert m[0].weight.numel() > CPU_CHUNK > SMALL > m[1].weight.numel()
    return m.to(device)


def _grads(model: torch.nn.Module, step: int) -> None:
    """Gradients whose per-element scale spans 1e-7 … 1 (log-uniform): √v̂ fills many histogram
    bins and falls below eps for a fraction of the elements."""
    g = torch.Generator().manual_seed(1000 + step)
    for p in model.parameters():
        scale = 10.0 ** (-7 * torch.rand(p.shape, generator=g))
        # Decaying gradients after step 3: r < 1, and the fraction below eps grows.
        decay = 1.0 if step <= 3 else 0.05
        p.grad = (torch.randn(p.shape, generator=g) * scale * decay).to(device=p.device, dtype=p.dtype)


def _exact(p: torch.Tensor, st: dict, group: dict, p_before: torch.Tensor | None = None) -> dict[str, float]:
    b2, eps = group["betas"][1], group["eps"]
    t = float(st["step"])
    bc = 1 - b2**t
    v = st["exp_avg_sq"].double()
    den = (st["max_exp_avg_sq"] if group.get("amsgrad") else st["exp_avg_sq"]).double() / bc
    g = p.grad.double()
    if group["weight_decay"] and not group.get("decoupled_weight_decay"):
        g = g + group["weight_decay"] * p_before.double()  # Adam's L2 decay uses the pre-step p
    sq = den.sqrt().flatten()
    srt = torch.sort(sq).values
    return {
        "g2_mean": float((g * g).mean()),
        "vhat_mean": float((v / bc).mean()),
        "frac_below_eps": float((sq < eps).double().mean()),
        "frac_below_10eps": float((sq < 10 * eps).double().mean()),
        "update_rms": math.sqrt(float((g * g / den.clamp(min=eps * eps)).mean())),
        "p01": _icdf(srt, 0.01),
        "p50": _icdf(srt, 0.5),
        "p99": _icdf(srt, 0.99),
    }


def _sqrt_vhat(p: torch.Tensor, st: dict, group: dict) -> torch.Tensor:
    """√ of the denominator's v̂ (max_exp_avg_sq under amsgrad), float64, flat."""
    den = st["max_exp_avg_sq"] if group.get("amsgrad") else st["exp_avg_sq"]
    return (den.double() / (1 - group["betas"][1] ** float(st["step"]))).sqrt().flatten()


def _icdf(x: torch.Tensor, q: float) -> float:
    """The exact inverted-CDF quantile (the ⌈q·n⌉-th smallest element): what a histogram reads.
    torch.quantile interpolates between neighbours instead; on a 6-element tensor the two differ
    by far more than a bin, on large tensors by less than the gap between neighbouring elements."""
    s = x if bool((x[1:] >= x[:-1]).all()) else torch.sort(x.flatten()).values
    return float(s[max(0, math.ceil(q * s.numel()) - 1)])


VARIANTS = {
    "adam-for-loop": lambda ps: torch.optim.Adam(ps, lr=1e-3, eps=1e-3, foreach=False),
    "adam-foreach": lambda ps: torch.optim.Adam(ps, lr=1e-3, eps=1e-3, foreach=True),
    "adam-fused": lambda ps: torch.optim.Adam(ps, lr=1e-3, eps=1e-3, fused=True),
    "adam-amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-3, eps=1e-3, amsgrad=True),
    "adam-l2": lambda ps: torch.optim.Adam(ps, lr=1e-3, eps=1e-3, weight_decay=0.01),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3, eps=1e-3, weight_decay=0.1),
    "adamw-groups": lambda ps: torch.optim.AdamW(
        [{"params": ps[:2], "eps": 1e-4, "betas": (0.9, 0.99)}, {"params": ps[2:]}], lr=1e-3, eps=1e-3
    ),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_stats_equal_exact_torch(variant: str) -> None:
    _check_stats(variant, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_stats_equal_exact_torch_on_cuda(variant: str) -> None:
    """The same on CUDA (skipped without it): the device path — histograms kept on the device, GPU-sized
    chunks, the per-step gradient-norm ring — against exact torch computations on the live state."""
    _check_stats(variant, "cuda")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_stats_on_the_gpu_path_equal_exact_torch(variant: str) -> None:
    """The path a GPU takes — no host read of a chunk's histogram (the eps counts always by comparison,
    the clamp always applied), GPU-sized chunks, no compiled kernel — run on a CPU, so a run without a
    GPU covers its logic; the CUDA test above adds the CUDA kernels themselves."""
    _check_stats(variant, "cpu", device_path=True)


def _check_stats(variant: str, device: str, device_path: bool = False) -> None:
    model = _model(big=variant in ("adam-amsgrad", "adam-foreach"), device=device)
    opt = VARIANTS[variant](list(model.parameters()))
    mon = AdamMonitor(opt, model=model, every=1)
    if device_path:
        mon._engine = StatsEngine(device_path=True)
    names = dict(model.named_parameters())
    prev: dict[str, float] = {}
    for step in range(1, 6):
        _grads(model, step)
        before = {id(p): p.detach().clone() for p in model.parameters()}
        opt.step()
        for group in opt.param_groups:
            for p in group["params"]:
                name = next(n for n, q in names.items() if q is p)
                ex = _exact(p, opt.state[p], group, before[id(p)])
                got = mon.last[name]
                for k in ("g2_mean", "vhat_mean", "update_rms"):
                    # Adam's L2 decay: the monitor keeps grad + wd·p from before the step (a pre-hook): exact too.
                    rel = 2e-5
                    assert got[k] == pytest.approx(ex[k], rel=rel), (variant, name, k, step)
                for k in ("frac_below_eps", "frac_below_10eps"):
                    # a comparison of v with eps²·(1-β2^t) instead of √v̂ with eps: 1-ulp ties aside, exact
                    assert abs(got[k] - ex[k]) <= 2.0 / p.numel(), (variant, name, k, step)
                for q in ("p01", "p50", "p99"):
                    ratio = got[f"sqrt_vhat_{q}"] / ex[q]
                    assert 1 / QUANTILE_FACTOR <= ratio <= QUANTILE_FACTOR, (variant, name, q, ratio)
                if name in prev:  # r = mean g² / mean v̂ of the previous step, from v_t alone
                    assert got["r"] == pytest.approx(ex["g2_mean"] / prev[name], rel=1e-4)
                else:
                    assert math.isnan(got["r"])
                prev[name] = ex["vhat_mean"]
        glob = mon.last["global"]
        n_all = sum(p.numel() for p in model.parameters())
        g2_all = sum(mon.last[n]["g2_mean"] * p.numel() for n, p in names.items()) / n_all
        assert glob["g2_mean"] == pytest.approx(g2_all, rel=1e-9)
        # All-parameter quantiles from the merged histograms, also across groups whose bias
        # corrections differ (adamw-groups: β2 0.99 and 0.999): within one bin of the exact ones.
        sq_all = torch.cat([_sqrt_vhat(p, opt.state[p], g) for g in opt.param_groups for p in g["params"]])
        for qf in (0.01, 0.5, 0.99):
            ratio = glob[f"sqrt_vhat_p{round(qf * 100):02d}"] / _icdf(sq_all, qf)
            assert 1 / QUANTILE_FACTOR <= ratio <= QUANTILE_FACTOR, (variant, "global", qf, ratio)
    # the decaying gradients pushed elements below eps: the fractions were not trivially 0
    assert 0 < mon.last["global"]["frac_below_eps"] < 1
    # the per-step gradient-norm estimate ran on the state's device, and nothing failed on the way (the
    # monitor never raises into training: a failure would only show as its one-line warning)
    assert all(w.grad_norm.count == 5 for w in mon._watches), [w.grad_norm.count for w in mon._watches]
    assert mon.enabled and not mon._warned, mon._warned
    mon.close()


def test_bf16_state() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 32).to(torch.bfloat16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-3)
    mon = AdamMonitor(opt, model=model, every=1)
    for step in range(1, 4):
        _grads(model, step)
        opt.step()
    st = opt.state[model.weight]
    assert st["exp_avg_sq"].dtype == torch.bfloat16
    ex = _exact(model.weight, st, opt.param_groups[0])
    got = mon.last["weight"]
    for k in ("g2_mean", "vhat_mean", "update_rms"):
        assert got[k] == pytest.approx(ex[k], rel=1e-4)


def test_quantile_tolerance_is_one_bin() -> None:
    """Over a wide spread of √v̂ the histogram quantiles stay within one bin of torch.quantile."""
    torch.manual_seed(3)
    p = torch.nn.Parameter(torch.zeros(50_000))
    opt = torch.optim.Adam([p], eps=1e-10)
    mon = AdamMonitor(opt, names=["p"], every=1)
    p.grad = torch.randn(50_000) * 10.0 ** (-10 * torch.rand(50_000))
    opt.step()
    sq = (opt.state[p]["exp_avg_sq"] / (1 - 0.999)).sqrt()
    for q in (0.01, 0.5, 0.99):
        got = mon.last["p"][f"sqrt_vhat_p{round(q * 100):02d}"]
        for exact in (_icdf(sq, q), float(torch.quantile(sq, q))):  # 50k elements: both definitions
            assert 1 / QUANTILE_FACTOR <= got / exact <= QUANTILE_FACTOR, (q, got, exact)


def test_merged_quantiles_across_bias_corrections() -> None:
    """Two equal groups with β2 0.99 and 0.9999 hold the same √v̂ spread while their v differ by
    100x (v = (1-β2)·g² at step 1): the all-parameter quantiles shift each group's bin edges by its
    own bias correction before merging (summing the raw-v histograms would be off by a factor 10)."""
    g = torch.Generator().manual_seed(7)
    a = torch.nn.Parameter(torch.zeros(4000))
    b = torch.nn.Parameter(torch.zeros(4000))
    opt = torch.optim.Adam([{"params": [a], "betas": (0.9, 0.99)}, {"params": [b], "betas": (0.9, 0.9999)}])
    mon = AdamMonitor(opt, names=["a", "b"], every=1)
    for _ in range(3):
        a.grad = torch.randn(4000, generator=g) * 10.0 ** (-4 * torch.rand(4000, generator=g))
        b.grad = torch.randn(4000, generator=g) * 10.0 ** (-4 * torch.rand(4000, generator=g) - 1)
        opt.step()
        sq = torch.cat([_sqrt_vhat(p, opt.state[p], grp) for grp in opt.param_groups for p in grp["params"]])
        for q in (0.01, 0.5, 0.99):
            ratio = mon.last["global"][f"sqrt_vhat_p{round(q * 100):02d}"] / _icdf(sq, q)
            assert 1 / QUANTILE_FACTOR <= ratio <= QUANTILE_FACTOR, (q, ratio)
    mon.close()


def test_eps_counts_from_the_histogram_are_exact() -> None:
    """On a CPU a chunk whose histogram has no element in a threshold's bin takes its count below
    eps (10·eps) from the histogram's lower bins and skips the clamp when none is below: here √v̂ sits
    in the bins right below and right above each threshold's bin (chunk 1) and far above (chunk 2),
    and the fractions equal the exact ones to the element, the update RMS torch's in float64."""
    n = CPU_CHUNK + 4096  # two chunks
    p = torch.nn.Parameter(torch.zeros(n))
    opt = torch.optim.Adam([p], eps=1e-3)
    mon = AdamMonitor(opt, names=["p"], every=1)
    g = torch.ones(n)
    # at step 1 √v̂ = |g|; v = 0.001·g² against thresholds 1e-9 (eps) and 1e-7 (10·eps)
    for i, x in enumerate((0.9e-3, 1.5e-3, 7e-3, 1.2e-2)):
        g[i * 1000 : (i + 1) * 1000] = x
    p.grad = g
    opt.step()
    got = mon.last["p"]
    assert got["frac_below_eps"] == 1000 / n and got["frac_below_10eps"] == 3000 / n
    den = opt.state[p]["exp_avg_sq"].double() / (1 - 0.999)
    exact = math.sqrt(float((g.double() ** 2 / den.clamp(min=1e-6)).mean()))
    assert got["update_rms"] == pytest.approx(exact, rel=1e-6)
    mon.close()


def test_monitor_does_not_perturb_training() -> None:
    """Bit-identical losses and parameters with and without the monitor (every step observed)."""

    def run(with_monitor: bool) -> tuple[list[float], list[torch.Tensor]]:
        model = mlp(seed=1)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        mon = AdamMonitor(opt, model=model, every=1) if with_monitor else None
        losses = train(model, opt, 60, batch=32)
        if mon is not None:
            assert mon.step == 60 and mon.last
            mon.close()
        return losses, [p.detach().clone() for p in model.parameters()]

    l0, p0 = run(False)
    l1, p1 = run(True)
    assert l0 == l1
    assert all(torch.equal(a, b) for a, b in zip(p0, p1))


def test_grad_norm_estimate_against_the_exact_norm() -> None:
    """The per-step gradient-norm estimate (a strided sample of the largest gradients) against the exact
    norm of all gradients, on the gradients of a real backward pass: within 10% on a model whose tensors
    are all sampled (the one-batch test compares ≥10x jumps), exact for tensors smaller than
    GN_SAMPLES (read whole); and a gap in the steps (a restart) drops the old points."""
    from adamdiag.monitor.stats import GN_MAX_TENSORS, GN_SAMPLES, GradNormRing

    m = _model(big=True)
    assert len(list(m.parameters())) <= GN_MAX_TENSORS
    ring = GradNormRing()
    gen = torch.Generator().manual_seed(0)
    for step in (1, 2, 3):
        m.zero_grad()
        m(torch.randn(64, 520, generator=gen)).square().mean().backward()
        ring.record(step, [p.grad for p in m.parameters()])
        exact = math.sqrt(sum(float(p.grad.double().square().sum()) for p in m.parameters()))
        assert ring.series()[1][-1] == pytest.approx(exact, rel=0.1)
    small = [torch.randn(GN_SAMPLES - 1, dtype=torch.float64), torch.randn(3, 4).t()]  # whole, non-contiguous
    ring.record(10, small)  # a gap after step 3: the series restarts
    steps, vals = ring.series()
    assert steps.tolist() == [10]
    assert vals[0] == pytest.approx(math.sqrt(sum(float(t.square().sum()) for t in small)), rel=1e-6)
