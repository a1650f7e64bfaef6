"""Moment statistics (chunked, fast) against the plain-loop reference on real optimizer state."""

from __future__ import annotations

import math

import pytest
import torch

from adamdiag.analysis.adam_ref import decay_ratio_ref, moment_stats_ref
from adamdiag.analysis.moments import decay_ratio, effective_eps, tensor_stats
from adamdiag.io.checkpoints import TensorMoments

# 2 shared CPU cores: intra-op threads only oversubscribe them (15x slower under load).


def _train(
    shape=(40, 25), steps=30, dtype=torch.float32, amsgrad=False, eps=1e-8, zero_after=None, seed=0, grad_scale=1.0
):
    """Real torch.optim.Adam on one tensor; gradients shrink (and stop after ``zero_after``) so that
    √v̂ spans eps."""
    g = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(shape, generator=g).to(dtype))
    opt = torch.optim.Adam([p], lr=1e-3, eps=eps, amsgrad=amsgrad)
    scales = torch.logspace(-10, 0, shape[-1]).to(dtype)  # per column: some columns' v under eps²
    for k in range(steps):
        grad = torch.randn(shape, generator=g).to(dtype) * scales * grad_scale
        if zero_after is not None and k >= zero_after:
            grad = torch.zeros_like(grad)
        p.grad = grad
        opt.step()
    return p, opt


def _moments(p, opt, name="w") -> TensorMoments:
    st = opt.state[p]
    grp = opt.param_groups[0]
    return TensorMoments(
        name=name,
        index=0,
        group=0,
        shape=tuple(p.shape),
        step=int(st["step"]),
        lr=grp["lr"],
        beta1=grp["betas"][0],
        beta2=grp["betas"][1],
        eps=grp["eps"],
        weight_decay=grp["weight_decay"],
        amsgrad=grp["amsgrad"],
        exp_avg=st["exp_avg"],
        exp_avg_sq=st["exp_avg_sq"],
        max_exp_avg_sq=st.get("max_exp_avg_sq"),
        param=p.detach(),
    )


def _flat(x):
    return [float(v) for v in x.detach().reshape(-1).double().tolist()]


def _check(stats, t: TensorMoments, convention="torch", rel=1e-6):
    ref = moment_stats_ref(
        _flat(t.exp_avg),
        _flat(t.exp_avg_sq),
        step=t.step,
        lr=t.lr,
        beta1=t.beta1,
        beta2=t.beta2,
        eps=t.eps,
        v_max=_flat(t.max_exp_avg_sq) if t.max_exp_avg_sq is not None else None,
        convention=convention,
    )
    assert stats.nonfinite == ref["nonfinite"]
    for key in ("v_mean", "v_max", "m_abs_mean", "update_rms", "update_max"):
        assert getattr(stats, key) == pytest.approx(ref[key], rel=rel), key
    for key in ("frac_sqrt_vhat_below_eps", "frac_sqrt_vhat_below_10eps"):
        assert getattr(stats, key) == ref[key], key
    for q in ("min", "p01", "p50", "p99", "max"):
        assert stats.sqrt_vhat_q[q] == pytest.approx(ref["sqrt_vhat_q"][q], rel=rel), q
        assert stats.eff_step_q[q] == pytest.approx(ref["eff_step_q"][q], rel=rel), q
    return ref


@pytest.mark.parametrize("amsgrad", [False, True])
def test_tensor_stats_match_reference(amsgrad):
    p, opt = _train(amsgrad=amsgrad, zero_after=20)
    t = _moments(p, opt)
    s = tensor_stats(t)
    ref = _check(s, t)
    # The data really spans eps: some but not all elements are eps-dominated (the test can fail).
    assert 0 < ref["frac_sqrt_vhat_below_eps"] < 1
    assert s.numel == 1000 and s.shape == [40, 25] and s.step == 30 and s.label == "w"
    assert s.frac_v_zero == 0.0
    t.exp_avg_sq = t.exp_avg_sq.clone()
    t.exp_avg_sq[:4] = 0.0  # rows that never got a gradient
    if t.max_exp_avg_sq is not None:
        t.max_exp_avg_sq = t.max_exp_avg_sq.clone()
        t.max_exp_avg_sq[:4] = 0.0
    z = tensor_stats(t)
    assert z.frac_v_zero == pytest.approx(0.1)
    assert z.frac_sqrt_vhat_below_eps >= 0.1
    assert s.param_rms == pytest.approx(math.sqrt(float((p.detach().double() ** 2).mean())), rel=1e-6)


def test_amsgrad_uses_max_v_in_the_denominator():
    p, opt = _train(amsgrad=True, zero_after=10)
    t = _moments(p, opt)
    with_max = tensor_stats(t)
    t.max_exp_avg_sq = None
    t.amsgrad = False
    plain = tensor_stats(t)
    # v decayed after the gradients stopped; max v did not: smaller updates with amsgrad.
    assert with_max.update_rms < plain.update_rms
    assert with_max.v_mean == plain.v_mean  # v_mean is always exp_avg_sq's


def test_tf_convention_uses_rescaled_eps():
    p, opt = _train(eps=1e-4, steps=5)
    t = _moments(p, opt)
    s = tensor_stats(t, "tf")
    assert s.eps_effective == pytest.approx(1e-4 / math.sqrt(1 - 0.999**5))
    _check(s, t, convention="tf")
    assert tensor_stats(t, "torch").update_rms > s.update_rms  # larger effective eps: smaller step
    assert effective_eps(1e-8, 0.25, "tf") == pytest.approx(2e-8)


def test_chunking_and_bf16_upcast():
    p, opt = _train(shape=(33, 31), dtype=torch.bfloat16, steps=12)
    t = _moments(p, opt)
    assert t.exp_avg_sq.dtype == torch.bfloat16
    a = tensor_stats(t)
    b = tensor_stats(t, chunk=7)  # chunk boundaries inside rows
    _check(a, t)
    for key in ("v_mean", "update_rms", "frac_sqrt_vhat_below_eps", "update_max"):
        assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-6)
    assert a.sqrt_vhat_q == b.sqrt_vhat_q


def test_nonfinite_elements_are_counted_and_left_out():
    p, opt = _train(steps=8)
    t = _moments(p, opt)
    t.exp_avg_sq = t.exp_avg_sq.clone()
    t.exp_avg = t.exp_avg.clone()
    t.exp_avg_sq[0, 0] = float("nan")
    t.exp_avg[1, 1] = float("inf")
    s = tensor_stats(t)
    assert s.nonfinite == 2
    assert math.isfinite(s.v_mean) and math.isfinite(s.update_rms)
    _check(s, t)


def test_sampled_quantiles_are_close_and_flagged():
    p, opt = _train(shape=(300, 200), steps=10)
    t = _moments(p, opt)
    exact = tensor_stats(t)
    sampled = tensor_stats(t, exact_limit=1000)
    assert exact.quantiles_exact and not sampled.quantiles_exact
    assert sampled.sqrt_vhat_q["min"] == exact.sqrt_vhat_q["min"]  # exact always
    assert sampled.sqrt_vhat_q["max"] == exact.sqrt_vhat_q["max"]
    assert sampled.sqrt_vhat_q["p50"] == pytest.approx(exact.sqrt_vhat_q["p50"], rel=0.05)
    assert sampled.v_mean == exact.v_mean


def test_step_unknown_means_no_bias_correction():
    p, opt = _train(steps=3)
    t = _moments(p, opt)
    t.step = None
    s = tensor_stats(t)
    assert s.sqrt_vhat_q["max"] == pytest.approx(math.sqrt(float(t.exp_avg_sq.double().max())), rel=1e-12)
    assert any("no bias correction" in n for n in s.notes)


def test_decay_ratio_pure_decay_and_reference():
    # Run 1: gradients until step 20, checkpoint, gradients stop for the second half of the
    # columns only... simpler: one tensor decays purely (no gradient), one keeps receiving them.
    g = torch.Generator().manual_seed(3)
    a_live = torch.nn.Parameter(torch.randn(20, 10, generator=g))
    b_live = torch.nn.Parameter(torch.randn(20, 10, generator=g))
    opt = torch.optim.Adam([a_live, b_live], lr=1e-3)
    snaps = {}
    for step in range(1, 61):
        a_live.grad = torch.randn(20, 10, generator=g) if step <= 30 else torch.zeros(20, 10)
        b_live.grad = torch.randn(20, 10, generator=g)
        opt.step()
        if step in (30, 60):
            snaps[step] = {
                k: {kk: (vv.clone() if torch.is_tensor(vv) else vv) for kk, vv in v.items()}
                for k, v in opt.state_dict()["state"].items()
            }

    def tm(step, idx):
        st = snaps[step][idx]
        return TensorMoments(
            name=None,
            index=idx,
            group=0,
            shape=(20, 10),
            step=int(st["step"]),
            lr=1e-3,
            beta1=0.9,
            beta2=0.999,
            eps=1e-8,
            weight_decay=0.0,
            amsgrad=False,
            exp_avg=st["exp_avg"],
            exp_avg_sq=st["exp_avg_sq"],
        )

    pure = decay_ratio(tm(30, 0), tm(60, 0))
    live = decay_ratio(tm(30, 1), tm(60, 1))
    assert pure["delta_steps"] == 30
    assert pure["frac_pure_decay"] == 1.0 and pure["ratio_q"]["p50"] == pytest.approx(1.0, abs=1e-5)
    assert pure["mean_g2_implied"] == pytest.approx(0.0, abs=1e-3 * pure["mean_v_from"])
    assert live["frac_pure_decay"] < 0.2 and live["ratio_q"]["p50"] > 1.5
    assert live["r_interval"] == pytest.approx(1.0, rel=0.3)  # unit-variance gradients, v̂ ≈ E[g²] = 1
    ref = decay_ratio_ref(_flat(tm(30, 1).exp_avg_sq), _flat(tm(60, 1).exp_avg_sq), step_a=30, step_b=60, beta2=0.999)
    for q in ("min", "p01", "p50", "p99", "max"):
        assert live["ratio_q"][q] == pytest.approx(ref["ratio_q"][q], rel=1e-6)
    assert live["mean_g2_implied"] == pytest.approx(ref["mean_g2_implied"], rel=1e-6)
    assert live["frac_pure_decay"] == ref["frac_pure_decay"]
    sampled = decay_ratio(tm(30, 1), tm(60, 1), exact_limit=10, chunk=17)
    assert sampled["mean_g2_implied"] == pytest.approx(live["mean_g2_implied"], rel=1e-6)
    assert not sampled["quantiles_exact"]
    with pytest.raises(ValueError):
        bad = tm(60, 1)
        bad.step = None
        decay_ratio(tm(30, 1), bad)


# --- exact quantiles by bracketed selection vs a full partition ----------------------------


def _distributions():
    import numpy as np

    rng = np.random.default_rng(3)
    n = 300_000  # above BRACKET_MIN_SIZE: the bracketed path runs
    rows = np.logspace(-12, -2, 600).repeat(n // 600) * rng.random(n)  # each chunk narrow: brackets skipped
    return {
        "lognormal": rng.lognormal(0, 6, n).astype(np.float32),
        "row_scaled": rows.astype(np.float32),
        "sorted": np.sort(rng.random(n)).astype(np.float32),
        "few_values": rng.integers(0, 5, n).astype(np.float32),  # ties: brackets touch and merge
        "zeros_then_tail": np.r_[np.zeros(n - 5000), rng.random(5000)].astype(np.float64),
    }


@pytest.mark.parametrize("name", list(_distributions()))
def test_bracketed_order_stats_equal_the_full_partition(name):

    from adamdiag.analysis.moments import (
        BRACKET_MIN_SIZE,
        QUANTILES,
        _BracketSelect,
        _order_stats,
        _order_stats_reference,
        _ranks,
    )

    values = _distributions()[name]
    assert values.size >= BRACKET_MIN_SIZE
    qs = dict(QUANTILES)
    desc = {f"eff_{k}": q for k, q in qs.items()}
    ref = _order_stats_reference(values, qs, desc)
    assert _order_stats(values, qs, desc) == ref
    # streamed in chunks, with each chunk's min/max (what tensor_stats does)
    ranks = _ranks(values.size, qs, desc)
    sel = _BracketSelect.for_array(values, list(ranks.values()))
    for i in range(0, values.size, 4096):
        c = values[i : i + 4096]
        sel.feed(c, float(c.min()), float(c.max()))
    got = sel.result(ranks)
    # zeros fill the lower bracket: the caller partitions. (few_values: tied sample values make
    # touching brackets, merged into one, so its ~60% kept values stay under the limit.)
    crowded = name == "zeros_then_tail"
    assert got is None if crowded else got == ref


def test_a_bracket_that_misses_its_rank_is_detected():
    """A sample from other data puts the brackets in the wrong place: no result, never a wrong one."""
    import numpy as np

    from adamdiag.analysis.moments import _BracketSelect, _order_stats_reference, _ranks

    values = np.random.default_rng(0).random(300_000)
    wrong_sample = np.sort(np.random.default_rng(1).random(65536) + 0.3)
    ranks = _ranks(values.size, {"p50": 0.5}, {})
    sel = _BracketSelect(wrong_sample, values.size, list(ranks.values()))
    sel.feed(values)
    assert sel.result(ranks) is None
    right = _BracketSelect(np.sort(values[::5]), values.size, list(ranks.values()))
    right.feed(values)
    assert right.result(ranks) == _order_stats_reference(values, {"p50": 0.5})


def test_large_tensor_quantiles_exact_with_nonfinite_elements(monkeypatch):
    """tensor_stats on a 300k-element Adam state with NaN/Inf elements: the quantiles selected while
    streaming equal those of a full partition of the finite values (the plain path)."""
    from adamdiag.analysis import moments

    p, opt = _train(shape=(600, 500), steps=6)
    t = _moments(p, opt)
    t.exp_avg_sq = t.exp_avg_sq.clone()
    t.exp_avg_sq[5, :7] = float("nan")
    t.exp_avg_sq[400, 3] = float("inf")
    fast = tensor_stats(t, chunk=1 << 14)
    # no full copy is made, so the quantiles stay exact above the copy limit too
    limited = tensor_stats(t, chunk=1 << 14, exact_limit=1000)
    assert limited.quantiles_exact and limited.sqrt_vhat_q == fast.sqrt_vhat_q
    monkeypatch.setattr(moments, "BRACKET_MIN_SIZE", 1 << 40)  # force the copy + full partition path
    plain = tensor_stats(t, chunk=1 << 14)
    assert fast.nonfinite == plain.nonfinite == 8
    assert fast.quantiles_exact and plain.quantiles_exact
    assert fast.sqrt_vhat_q == plain.sqrt_vhat_q and fast.eff_step_q == plain.eff_step_q
    _check(fast, t)


def test_decay_ratio_streamed_quantiles_equal_the_full_partition(monkeypatch):
    """Two checkpoints of a 300k-element tensor: the ratio quantiles selected while streaming equal a
    full partition of all ratios, and stay exact above the copy limit."""
    from adamdiag.analysis import moments

    g = torch.Generator().manual_seed(5)
    p = torch.nn.Parameter(torch.randn(600, 500, generator=g))
    opt = torch.optim.Adam([p], lr=1e-3)
    scales = torch.logspace(-4, 0, 500)
    snaps = []
    for step in range(1, 9):
        p.grad = torch.randn(600, 500, generator=g) * scales * (step <= 4 or torch.rand(1, generator=g).item())
        opt.step()
        if step in (4, 8):
            st = opt.state[p]
            snaps.append(
                TensorMoments(
                    name="w",
                    index=0,
                    group=0,
                    shape=(600, 500),
                    step=int(st["step"]),
                    lr=1e-3,
                    beta1=0.9,
                    beta2=0.999,
                    eps=1e-8,
                    weight_decay=0.0,
                    amsgrad=False,
                    exp_avg=st["exp_avg"].clone(),
                    exp_avg_sq=st["exp_avg_sq"].clone(),
                )
            )
    snaps[1].exp_avg_sq[3, :5] = float("nan")
    fast = decay_ratio(*snaps, chunk=1 << 14)
    limited = decay_ratio(*snaps, chunk=1 << 14, exact_limit=1000)
    monkeypatch.setattr(moments, "BRACKET_MIN_SIZE", 1 << 40)  # the plain path: every ratio, one partition
    plain = decay_ratio(*snaps, chunk=1 << 14)
    assert fast["n_used"] == plain["n_used"] == 300_000 - 5
    assert fast["quantiles_exact"] and limited["quantiles_exact"] and plain["quantiles_exact"]
    assert fast["ratio_q"] == plain["ratio_q"] == limited["ratio_q"]
    assert fast["ratio_q"]["min"] < fast["ratio_q"]["p50"] < fast["ratio_q"]["max"]  # a spread, not one value
