"""The compiled statistics kernel (adamdiag/analysis/_moments_kernel.c) against the torch/numpy path
of moments.py, and its vector loop against its plain loop, on real optimizer state.

The kernel is an optional build product; these tests skip without it except the first, which fails
when a C compiler is on the machine but the kernel did not build or load.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from adamdiag.analysis import moments_kernel
from adamdiag.analysis.moments import tensor_stats
from adamdiag.io.checkpoints import TensorMoments

needs_kernel = pytest.mark.skipif(not moments_kernel.available(), reason="moments kernel not built")


def test_kernel_is_built_where_a_compiler_is():
    """`pip install -e .` (make setup) compiles it; a silent build failure would only show as slowness."""
    import os

    if os.environ.get("ADAMDIAG_NO_KERNEL"):
        pytest.skip("disabled by ADAMDIAG_NO_KERNEL")
    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
        pytest.skip("no C compiler on this machine")
    assert moments_kernel.available(), "a C compiler is here but the moments kernel is missing: reinstall (make setup)"


def _adam_state(shape, steps=8, seed=0, dtype=torch.float32, amsgrad=False, eps=1e-8, row_scales=True):
    """Real torch.optim.Adam state: per-row gradient scales from 1e-10 to 1 (so √v̂ spans eps and a
    block of one row spans a narrow range: the kernel's bracket skipping is exercised)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(shape, generator=g).to(dtype))
    opt = torch.optim.Adam([p], lr=1e-3, eps=eps, amsgrad=amsgrad)
    if row_scales:
        scale = torch.logspace(-10, 0, shape[0]).reshape(-1, *([1] * (len(shape) - 1))).to(dtype)
    else:
        scale = torch.ones((), dtype=dtype)
    for k in range(steps):
        p.grad = (torch.randn(shape, generator=g).to(dtype) * scale * (0.5 ** (k % 3))).to(dtype)
        opt.step()
    st, grp = opt.state[p], opt.param_groups[0]
    return TensorMoments(
        name="w",
        index=0,
        group=0,
        shape=tuple(shape),
        step=int(st["step"]),
        lr=grp["lr"],
        beta1=grp["betas"][0],
        beta2=grp["betas"][1],
        eps=grp["eps"],
        weight_decay=0.0,
        amsgrad=amsgrad,
        exp_avg=st["exp_avg"].clone(),
        exp_avg_sq=st["exp_avg_sq"].clone(),
        max_exp_avg_sq=st["max_exp_avg_sq"].clone() if amsgrad else None,
        param=p.detach().clone(),
    )


def _both(t: TensorMoments, monkeypatch, **kw):
    """tensor_stats with the kernel, then with the torch/numpy path."""
    fast = tensor_stats(t, **kw)
    with monkeypatch.context() as mp:
        mp.setattr(moments_kernel, "available", lambda: False)
        ref = tensor_stats(t, **kw)
    return fast, ref


def _assert_same(fast, ref, rel=1e-5):
    """Counts, extremes and quantiles equal exactly (the same float32 values are compared and
    selected); sums to float32 rounding over ~1e6 terms (the kernel's float lanes are flushed to
    double every 1024 elements; torch's float32 norm of a 1M-element bf16 chunk was 3e-6 off the
    float64 value where the kernel's was 7e-8)."""

    def same(a, b) -> bool:
        return a == b or (isinstance(b, float) and math.isnan(b) and isinstance(a, float) and math.isnan(a))

    assert fast.nonfinite == ref.nonfinite
    assert fast.numel == ref.numel
    for key in ("frac_sqrt_vhat_below_eps", "frac_sqrt_vhat_below_10eps", "frac_v_zero", "v_max", "quantiles_exact"):
        assert same(getattr(fast, key), getattr(ref, key)), key
    assert fast.sqrt_vhat_q == ref.sqrt_vhat_q
    assert fast.eff_step_q == ref.eff_step_q
    for key in ("v_mean", "m_abs_mean", "update_rms", "update_max", "update_ratio_rms", "param_rms"):
        a, b = getattr(fast, key), getattr(ref, key)
        if b is None or math.isnan(b):
            assert same(a, b), key
        else:
            assert a == pytest.approx(b, rel=rel), key


@needs_kernel
@pytest.mark.parametrize("shape", [(5,), (3, 7), (33, 31), (300, 1000)])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_kernel_equals_torch_path(shape, amsgrad, monkeypatch):
    """Sizes below one vector, off the 8-lane and block grid, and above the bracket-selection size."""
    t = _adam_state(shape, amsgrad=amsgrad)
    fast, ref = _both(t, monkeypatch, chunk=1 << 16)
    _assert_same(fast, ref)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_equals_torch_path_half_precision(dtype, monkeypatch):
    t = _adam_state((200, 1500), dtype=dtype, row_scales=False, eps=1e-3)
    fast, ref = _both(t, monkeypatch, chunk=1 << 16)
    _assert_same(fast, ref)


@needs_kernel
def test_kernel_nonfinite_zero_and_tf_convention(monkeypatch):
    """NaN/Inf in m, v and the parameter, v = 0 elements, and the TF eps convention: the blocks
    holding them go to the plain loop; the result still equals the torch path."""
    t = _adam_state((300, 1000), steps=5)
    t.exp_avg[3, :5] = float("nan")
    t.exp_avg_sq[100, 7] = float("inf")
    t.exp_avg_sq[200, 100:300] = 0.0
    t.param[250, 9] = float("-inf")
    for convention in ("torch", "tf"):
        fast, ref = _both(t, monkeypatch, chunk=1 << 15, convention=convention)
        _assert_same(fast, ref)
        assert fast.nonfinite == 6 and fast.frac_v_zero > 0


@needs_kernel
def test_kernel_quantiles_equal_a_full_partition():
    """A 3M-element tensor streamed in 1M chunks: quantiles selected by the kernel's brackets are the
    order statistics of all values (nearest rank), not an approximation."""
    from adamdiag.analysis.moments import QUANTILES, _order_stats_reference

    t = _adam_state((1500, 2000), steps=3)
    st = tensor_stats(t)
    v = t.exp_avg_sq.reshape(-1).numpy()
    qs = {k: q for k, q in QUANTILES.items() if 0 < q < 1}
    ref = _order_stats_reference(v, qs)
    bc2 = 1 - t.beta2**t.step
    for k in qs:
        assert st.sqrt_vhat_q[k] == math.sqrt(max(ref[k], 0.0) / bc2), k
    assert st.quantiles_exact


def _random_chunk(n, seed, with_nan=False):
    rng = np.random.default_rng(seed)
    v = (rng.standard_normal(n) ** 2 * np.repeat(10.0 ** rng.uniform(-16, -2, n // 512 + 1), 512)[:n]).astype(
        np.float32
    )
    m = (rng.standard_normal(n) * np.sqrt(v) * 0.1).astype(np.float32)
    p = rng.standard_normal(n).astype(np.float32)
    if with_nan:
        m[rng.integers(0, n, 3)] = np.nan
        v[rng.integers(0, n, 2)] = np.inf
        p[rng.integers(0, n, 2)] = np.nan
        v[rng.integers(0, n, 50)] = 0.0
    return torch.from_numpy(m), torch.from_numpy(v), torch.from_numpy(p)


def _run(m, v, p, spans, plain):
    params = moments_kernel.Params.of(1e-8, 1e-8, 1e-7, spans)
    acc = moments_kernel.Acc.fresh()
    kept = np.empty((max(len(spans), 1), m.numel() + 8), np.float32)
    kept_n = np.zeros(moments_kernel.MAX_SPANS, np.int64)
    moments_kernel.chunk_stats(m, v, v, p, params, acc, kept, kept_n, plain=plain)
    rows = [np.sort(kept[j, : kept_n[j]]) for j in range(len(spans))]
    return acc, rows


@needs_kernel
@pytest.mark.skipif(not moments_kernel.vector_path(), reason="no AVX2 on this CPU: the plain loop is all there is")
@pytest.mark.parametrize("with_nan", [False, True])
def test_vector_loop_equals_plain_loop(with_nan):
    """Every field of the accumulator and every bracket's kept values, the vector loop (blocks of
    1024, bracket skipping, XOR membership, left-pack) against the plain loop, for tails and inner
    brackets, on 100003 elements (not a multiple of 8)."""
    m, v, p = _random_chunk(100_003, seed=1, with_nan=with_nan)
    vals = np.sort(v.numpy()[np.isfinite(v.numpy())])
    q = lambda f: float(vals[int(f * (vals.size - 1))])  # noqa: E731
    spans = [(-math.inf, q(0.02)), (q(0.3), q(0.31)), (q(0.5), q(0.52)), (q(0.97), math.inf)]
    fast, fast_rows = _run(m, v, p, spans, plain=False)
    ref, ref_rows = _run(m, v, p, spans, plain=True)
    for name, _ in moments_kernel.Acc._fields_:
        a, b = getattr(fast, name), getattr(ref, name)
        if name == "lt_lo":
            assert list(a) == list(b)
        elif isinstance(b, float):
            assert a == pytest.approx(b, rel=1e-6), name
        else:
            assert a == b, name
    for a, b in zip(fast_rows, ref_rows):
        assert np.array_equal(a, b)
    # and against numpy directly
    fin = np.isfinite(m.numpy()) & np.isfinite(v.numpy())
    d = v.numpy()[fin]
    for (lo, hi), row, below in zip(spans, fast_rows, fast.lt_lo):
        assert np.array_equal(row, np.sort(d[(d >= lo) & (d <= hi)]))
        assert below == int(np.count_nonzero(d < lo))


@needs_kernel
def test_float_sum_overflow_is_redone_in_double():
    """v near float32's max: the vector loop's float lanes overflow; the block is summed in double."""
    n = 4096
    v = torch.full((n,), 3e37)
    m = torch.full((n,), 1e-3)
    acc, _ = _run(m, v, None, [], plain=False)
    assert acc.sum_v == pytest.approx(n * float(np.float32(3e37)), rel=1e-12)
    assert math.isfinite(acc.sum_v)


@needs_kernel
def test_bad_arguments_are_refused():
    m = torch.zeros(16)
    params = moments_kernel.Params.of(1e-8, 1e-8, 1e-7, [(0.0, 1.0)])
    acc = moments_kernel.Acc.fresh()
    kn = np.zeros(moments_kernel.MAX_SPANS, np.int64)
    with pytest.raises(ValueError):
        moments_kernel.chunk_stats(m.double(), m, m, None, params, acc, np.empty((1, 24), np.float32), kn)
    with pytest.raises(ValueError):  # no room for the kept values
        moments_kernel.chunk_stats(m, m, m, None, params, acc, np.empty((1, 20), np.float32), kn)
    with pytest.raises(ValueError):
        moments_kernel.Params.of(1e-8, 1e-8, 1e-7, [(0.0, 1.0)] * (moments_kernel.MAX_SPANS + 1))


@needs_kernel
@pytest.mark.parametrize("plain", [False, True])
def test_eps_counts_at_the_boundary(plain):
    """√v exactly at a threshold is not below it (as numpy's float32 √v < t): values 2^-20, whose
    square root 2^-10 is exact, against t1 = 2^-10, with neighbours one float step away."""
    t1 = 2.0**-10
    at = np.float32(2.0**-20)
    v = np.array([at, np.nextafter(at, np.float32(0)), np.nextafter(at, np.float32(1)), 0.0] * 1030, np.float32)
    m = np.full(v.size, 1e-6, np.float32)
    params = moments_kernel.Params.of(1e-8, t1, 2 * t1, [])
    acc = moments_kernel.Acc.fresh()
    kept = np.empty((1, v.size + 8), np.float32)
    moments_kernel.chunk_stats(
        torch.from_numpy(m),
        torch.from_numpy(v),
        torch.from_numpy(v),
        None,
        params,
        acc,
        kept,
        np.zeros(moments_kernel.MAX_SPANS, np.int64),
        plain=plain,
    )
    s = np.sqrt(np.maximum(v, 0))
    assert acc.below1 == int(np.count_nonzero(s < np.float32(t1))) == 2 * 1030
    assert acc.below2 == v.size
    assert acc.zero == 1030


def test_a_library_from_another_version_is_refused(tmp_path, monkeypatch):
    """An editable install not rebuilt after a pull keeps an old .so: its struct layout may differ, so
    it must be refused (with a warning naming the fix), never misread."""
    from pathlib import Path

    from kernel_util import build_with_other_abi

    so = build_with_other_abi(
        Path(moments_kernel.__file__).parent / "_moments_kernel.c", "ADAMDIAG_KERNEL_ABI", tmp_path
    )
    monkeypatch.delenv("ADAMDIAG_NO_KERNEL", raising=False)
    monkeypatch.setattr(moments_kernel, "_library_path", lambda: so)
    moments_kernel._lib.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="another version"):
            assert not moments_kernel.available()
    finally:
        moments_kernel._lib.cache_clear()


@pytest.mark.parametrize("kernel", [True, False])
def test_v_mean_is_exact_in_both_paths(kernel, monkeypatch):
    """Σv is accumulated in double in the kernel's vector loop and the torch path alike, so v_mean equals
    a float64 reference to 1e-12: the checkpoint decay ratio subtracts β2^Δ·v̄_a from v̄_b, nearly equal
    numbers, and a float32 sum (rel. ~1e-6) used to make the two paths print different implied g²/v̂."""
    if kernel and not moments_kernel.available():
        pytest.skip("kernel not built")
    t = _adam_state((300, 1000), row_scales=True)
    with monkeypatch.context() as mp:
        if not kernel:
            mp.setattr(moments_kernel, "available", lambda: False)
        s = tensor_stats(t, chunk=1 << 16)
    ref = float(t.exp_avg_sq.double().mean())
    assert s.v_mean == pytest.approx(ref, rel=1e-12)
