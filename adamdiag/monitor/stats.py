"""Per-tensor Adam statistics from the live optimizer state, in a few cache-sized passes (on a CPU,
for contiguous float32 state, in one fused pass of the optional C kernel, :mod:`adamdiag.monitor.kernel`).

Everything here runs on the device that holds the state and produces, per tensor, one row of
:data:`ROW` numbers (sums and counts, so rows of shards and of tensors can simply be added —
the same property an all-reduce needs). The caller stacks the rows and moves them to the host
once per logging step.

The √v̂ histogram counts the binary exponent of each float32 v (its bits 23-30, read with an
integer shift of the float's bit pattern: no log, no bucketize, no clamp): :data:`NBINS` = 256
bins, bin k = v in [2^(k-127), 2^(k-126)), i.e. √v̂ in [2^((k-127)/2), 2^((k-126)/2)) / √(1-β2^t).
One bin is a factor √2 in √v̂ (:data:`QUANTILE_FACTOR`), over the whole float range; bin 0 holds
zeros and subnormals, bin 255 inf and NaN. The bias correction 1-β2^t is one number per row, so it
shifts the row's bin edges on the host instead of costing a pass over v on the device. A quantile
read from the histogram (:func:`hist_quantiles`, log-linear inside its bin) lies within one bin
width of the exact quantile of the same elements (the ⌈q·n⌉-th smallest) whenever that is a
normal float, of one tensor or of all tensors together (:func:`merged_quantiles`, also when the
rows' bias corrections differ).

>>> h = np.zeros((1, NBINS)); h[0, 127] = 10  # all v in [1, 2): √v̂ in [1, 1.414) at bc = 1
>>> f"{hist_quantiles(h, [0.5], np.ones(1))[0, 0]:.4g}"  # the bin's log-centre, 2^0.25
'1.189'
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from adamdiag.monitor import kernel as _kernel

NBINS = 256  # one bin per value of float32's 8 exponent bits
EXP_BIAS = 127  # float32's exponent bias: bin k holds v in [2^(k-127), 2^(k-126))
#: Width of one bin in log2 √v̂ (an octave of v is half an octave of √v).
BIN_WIDTH_LOG2 = 0.5
#: Tolerance of a histogram quantile against the exact one: a factor of one bin width, √2.
QUANTILE_FACTOR = 2.0**BIN_WIDTH_LOG2

# Columns of one tensor's row; the histogram follows them.
SUM_G2, SUM_V, SUM_VHAT_DEN, CNT_EPS, CNT_10EPS, SUM_UPD, STEP, NUMEL = range(8)
NSCALAR = 8
ROW = NSCALAR + NBINS

# Elements per pass: small enough that the scratch buffers stay in cache on a CPU (fresh 40 MB
# temporaries per op cost more in page faults than the arithmetic), large enough on a GPU that the
# kernel launches do not dominate.
CPU_CHUNK = 1 << 18
GPU_CHUNK = 1 << 24
# Tensors below this size are packed together and reduced per segment (index_add/bincount): the
# per-op overhead (~5-10 µs on a CPU) of ~20 ops per tensor would otherwise dominate small models.
SMALL = 1 << 16
PACK = 1 << 20


# (gradient, param or None, weight decay, state, group): with a param, the gradient Adam squared is
# gradient + wd·param (L2 decay); without, the gradient as given.
Item = tuple[Any, Any, float, dict[str, Any], dict[str, Any]]


class _Scratch:
    """Reusable buffers of one device (allocated once, reused every logging step)."""

    def __init__(self, torch: Any, device: Any, chunk: int) -> None:
        f = {"device": device, "dtype": torch.float32}
        self.chunk = chunk
        self.g = torch.empty(chunk, **f)
        self.v = torch.empty(chunk, **f)
        self.a = torch.empty(chunk, **f)
        self.b = torch.empty(chunk, **f)
        self.d = torch.empty(chunk, **f)
        # uint8 bin indices: the shift writes them directly (the int32 → uint8 wrap drops the sign
        # bit, so a NaN with the sign set lands in bin 255 too) and bincount is fastest on uint8
        self.idx = torch.empty(chunk, device=device, dtype=torch.uint8)


class StatsEngine:
    """Computes the rows; holds the scratch buffers per device.

    >>> import torch
    >>> p = torch.nn.Parameter(torch.ones(4)); opt = torch.optim.Adam([p])
    >>> p.grad = torch.full((4,), 0.5); opt.step()
    >>> row = StatsEngine().tensor_row(p.grad, None, 0.0, opt.state[p], opt.param_groups[0]).tolist()
    >>> row[SUM_G2], row[NUMEL]
    (1.0, 4.0)
    """

    def __init__(self, use_kernel: bool = True, device_path: bool = False) -> None:
        """``use_kernel=False`` keeps the torch passes also where the compiled kernel could run (the
        tests' comparison of the two paths); ``device_path=True`` takes the path a GPU takes on any
        device — GPU-sized chunks, no host read of a chunk's histogram, no kernel — so a CPU-only test
        run covers its logic (everything but the CUDA kernels themselves)."""
        import torch

        self.torch = torch
        self.use_kernel = use_kernel and not device_path
        self.device_path = device_path
        self._scratch: dict[Any, _Scratch] = {}
        self._layout: dict[Any, Any] = {}

    def scratch(self, device: Any) -> _Scratch:
        s = self._scratch.get(device)
        if s is None:
            chunk = CPU_CHUNK if device.type == "cpu" and not self.device_path else GPU_CHUNK
            s = self._scratch[device] = _Scratch(self.torch, device, chunk)
        return s

    def rows(self, items: list[Item]) -> list[Any]:
        """One row per item, in order (a list of 1-D float64 tensors)."""
        out: list[Any] = [None] * len(items)
        packs: dict[Any, list[int]] = {}
        for i, (grad, p, wd, st, group) in enumerate(items):
            v = st["exp_avg_sq"]
            if v.numel() < SMALL and not hasattr(v, "to_local"):
                packs.setdefault(v.device, []).append(i)
            else:
                out[i] = self.tensor_row(grad, p, wd, st, group)
        for idx in packs.values():
            lo = 0
            while lo < len(idx):  # packs of at most PACK elements
                hi, n = lo, 0
                while hi < len(idx) and (hi == lo or n + items[idx[hi]][3]["exp_avg_sq"].numel() <= PACK):
                    n += items[idx[hi]][3]["exp_avg_sq"].numel()
                    hi += 1
                sel = idx[lo:hi]
                for j, row in zip(sel, self.pack_rows([items[k] for k in sel])):
                    out[j] = row
                lo = hi
        return out

    def pack_rows(self, items: list[Item]) -> Any:
        """Rows of many small tensors from one pass over their concatenation (segment reductions)."""
        torch = self.torch
        dev = items[0][3]["exp_avg_sq"].device
        numels = [it[3]["exp_avg_sq"].numel() for it in items]
        b2 = [float(it[4]["betas"][1]) for it in items]
        eps = [float(it[4]["eps"]) for it in items]
        key = (dev, tuple(numels), tuple(b2), tuple(eps))
        cached = self._layout.get(key)
        if cached is None:
            if len(self._layout) > 64:
                self._layout.clear()
            t = len(items)
            seg = torch.repeat_interleave(torch.arange(t, device=dev), torch.tensor(numels, device=dev))
            cached = self._layout[key] = (
                seg,
                seg * NBINS,
                torch.tensor(b2, dtype=torch.float64, device=dev).log(),
                torch.tensor(eps, dtype=torch.float64, device=dev) ** 2,
                torch.tensor(numels, dtype=torch.float64, device=dev),
            )
        seg, seg64, logb2, eps2, nume = cached
        t = len(items)
        gs, vs, ds, steps = [], [], [], []
        for g, p, wd, st, group in items:
            if p is not None:
                g = g.float() + wd * p.detach().float()
            gs.append(g.reshape(-1))
            vs.append(st["exp_avg_sq"].reshape(-1))
            ds.append((st["max_exp_avg_sq"] if group.get("amsgrad") else st["exp_avg_sq"]).reshape(-1))
            s = st["step"]
            steps.append(s.reshape(1).to(device=dev, dtype=torch.float64) if torch.is_tensor(s) else float(s))
        if all(torch.is_tensor(s) for s in steps):
            step = torch.cat(steps)
        else:
            step = torch.tensor([float(s) for s in steps], dtype=torch.float64, device=dev)
        g = torch.cat(gs).float()
        v = torch.cat(vs).float()
        d = torch.cat(ds).float() if any(it[4].get("amsgrad") for it in items) else v
        bc = -torch.expm1(step * logb2)  # (T,) 1 - β2^t
        thr1 = (bc * eps2).float()
        thr1_e = thr1[seg]
        z = torch.zeros(t, dtype=torch.float64, device=dev)
        g2 = g * g
        sum_g2 = z.index_add(0, seg, g2.double())
        sum_v = z.index_add(0, seg, v.double())
        sum_d = z.index_add(0, seg, d.double()) if d is not v else sum_v
        c1 = z.index_add(0, seg, (d < thr1_e).double())
        c2 = z.index_add(0, seg, (d < 100.0 * thr1_e).double())
        upd = z.index_add(0, seg, (g2 / torch.maximum(d, thr1_e)).double()) * bc
        # the exponent bits of v (see the module docstring); & 255 drops the sign bit
        ex = torch.bitwise_right_shift(d.contiguous().view(torch.int32), 23).bitwise_and_(NBINS - 1)
        hist = torch.bincount(seg64 + ex, minlength=t * NBINS).reshape(t, NBINS)
        cols = torch.stack([sum_g2, sum_v, sum_d, c1, c2, upd, step, nume], 1)
        return torch.cat([cols, hist.double()], 1).unbind(0)

    def tensor_row(self, grad: Any, p: Any, wd: float, state: dict[str, Any], group: dict[str, Any]) -> Any:
        """One row (float64 tensor on the state's device) for one parameter after a step.

        g² is the gradient Adam squared: ``grad``, plus ``wd·p`` when ``p`` is given (Adam's L2 decay
        when the monitor has no pre-step copy of the decayed gradient). With amsgrad, v̂
        of g2/vhat/r is from ``exp_avg_sq`` (the EMA whose decay is the collapse), while the eps
        fractions, histogram and update RMS use ``max_exp_avg_sq`` (the denominator Adam divides by).
        """
        torch = self.torch
        v_full = _local(state["exp_avg_sq"])
        den_full = _local(state["max_exp_avg_sq"]) if group.get("amsgrad") else v_full
        g_full = _local(grad)
        step = state["step"]
        step_t = step if torch.is_tensor(step) else torch.tensor(float(step))
        step_t = step_t.to(device=v_full.device, dtype=torch.float64)
        beta2 = float(group["betas"][1])
        eps = float(group["eps"])
        p_full = _local(p.detach()) if p is not None else None

        # √v̂ < x  ⇔  v < x²·(1-β2^t): compare v itself (no sqrt, no division per element).
        bc = -torch.expm1(step_t * math.log(beta2))  # 1 - β2^t, exact for small t
        bc32 = bc.to(torch.float32)
        thr1 = bc32 * (eps * eps)
        thr2 = bc32 * (100.0 * eps * eps)
        # On a CPU a chunk's histogram is read back at no cost (no device sync): where no element
        # shares a threshold's bin, the count below it is the histogram's bins below (exact), and
        # where none is below eps the clamp is the identity: chunks whose √v̂ stays clear of eps skip
        # 2-3 passes. A GPU keeps the passes: reading the histogram would sync every chunk.
        host_hist = v_full.device.type == "cpu" and not self.device_path
        # Contiguous float32 on a CPU: one fused pass in C (_monitor_kernel.c; ~3x cheaper than the
        # ~8 torch passes below, the same counts and bins, sums in double). Everything else: torch.
        if host_hist and self.use_kernel:
            ts = (g_full, v_full, den_full) if p_full is None else (g_full, v_full, den_full, p_full)
            if _kernel.usable(*ts):
                return self._kernel_row(g_full, p_full, wd, v_full, den_full, step_t, bc, thr1, thr2)
        # The histogram bins that hold the thresholds (exponent bits of the float32 thresholds; read on
        # a CPU only: on a GPU .item() would be a sync per tensor).
        e1, e2 = (int(x.reshape(1).view(torch.int32).item()) >> 23 for x in (thr1, thr2)) if host_hist else (0, 0)

        s = self.scratch(v_full.device)
        n = v_full.numel()
        v1, d1, g1 = v_full.reshape(-1), den_full.reshape(-1), g_full.reshape(-1)
        p1 = p_full.reshape(-1) if p_full is not None else None
        parts: list[Any] = []  # per chunk: stacked sums
        hist = torch.zeros(NBINS, device=v_full.device, dtype=torch.int64)
        zero = torch.zeros((), device=v_full.device)
        from_hist = [0, 0]  # counts below thr1, thr2 read from the histogram (chunks that skipped the pass)
        for lo in range(0, n, s.chunk):
            hi = min(n, lo + s.chunk)
            k = hi - lo
            g, v, a, b, idx = s.g[:k], s.v[:k], s.a[:k], s.b[:k], s.idx[:k]
            if p1 is not None:
                torch.add(g1[lo:hi].float(), p1[lo:hi].float(), alpha=wd, out=g)
            else:
                g = _as_f32(g1[lo:hi], g)  # a view when already float32: no copy
            v = _as_f32(v1[lo:hi], v)
            den = v if d1 is v1 else _as_f32(d1[lo:hi], s.d[:k])
            sum_g2 = torch.dot(g, g)
            sum_v = v.sum()
            sum_den = den.sum() if d1 is not v1 else sum_v
            # The histogram: v's exponent bits straight from its bit pattern into uint8 (the wrap
            # drops the sign bit), then bincount; no log, no clamp, no float → int conversion.
            torch.bitwise_right_shift(den.view(torch.int32), 23, out=idx)
            hc = torch.bincount(idx, minlength=NBINS)
            hist += hc
            # count(den < thr): the comparison written as 0/1 floats and summed, 2 passes (a bool
            # comparison summed as int64 is ~2x slower on a CPU); exact, a chunk's count ≤ 2^24.
            # Skipped on a CPU when no element of the chunk is in the threshold's bin (see above).
            below1 = int(hc[:e1].sum()) if host_hist and not int(hc[e1]) else None
            below2 = int(hc[:e2].sum()) if host_hist and not int(hc[e2]) else None
            if below1 is None and below2 is None:
                host_hist = False  # both threshold bins are occupied here: likely in the next chunks too
            c1 = torch.lt(den, thr1, out=a).sum() if below1 is None else zero
            c2 = torch.lt(den, thr2, out=a).sum() if below2 is None else zero
            from_hist[0] += below1 or 0
            from_hist[1] += below2 or 0
            # Σ g²/max(v, eps²·bc), times bc: Σ g²/max(v̂, eps²) (clamp, divide, dot: 3 passes; no
            # clamp when no element is below eps²·bc).
            torch.div(g, den if below1 == 0 else torch.clamp(den, min=thr1, out=b), out=a)
            sum_upd = torch.dot(g, a)
            parts.append(torch.stack([sum_g2, sum_v, sum_den, c1, c2, sum_upd]).double())
        if parts:
            tot = torch.stack(parts).sum(0) if len(parts) > 1 else parts[0]
        else:
            tot = torch.zeros(6, device=v_full.device, dtype=torch.float64)
        if from_hist[0] or from_hist[1]:
            tot = tot + torch.tensor([0.0, 0.0, 0.0, *from_hist, 0.0], device=tot.device, dtype=tot.dtype)
        tot = torch.cat([tot[:5], (tot[5] * bc).reshape(1)])
        return torch.cat(
            [
                tot,
                step_t.reshape(1),
                torch.tensor([float(n)], device=v_full.device, dtype=torch.float64),
                hist.double(),
            ]
        )

    def _kernel_row(
        self,
        g_full: Any,
        p_full: Any,
        wd: float,
        v_full: Any,
        den_full: Any,
        step_t: Any,
        bc: Any,
        thr1: Any,
        thr2: Any,
    ) -> Any:
        """:meth:`tensor_row` of contiguous float32 CPU tensors from one fused pass of the compiled
        kernel (``_monitor_kernel.c``): the same columns, its sums accumulated in double."""
        torch = self.torch
        acc = _kernel.MonAcc()
        t1, t2 = float(thr1), float(thr2)  # float32 values, exactly as the torch path compares with
        g1, v1, d1 = g_full.reshape(-1), v_full.reshape(-1), den_full.reshape(-1)
        n = v1.numel()
        if p_full is None:
            _kernel.monitor_stats(g1, v1, d1, t1, t2, acc)
        else:
            # the L2-decayed gradient, written chunk by chunk into the cache-sized scratch by the same
            # torch op as the torch path (bitwise the same g), then read once by the kernel
            s, p1 = self.scratch(v1.device), p_full.reshape(-1)
            for lo in range(0, n, s.chunk):
                hi = min(n, lo + s.chunk)
                g = torch.add(g1[lo:hi], p1[lo:hi], alpha=wd, out=s.g[: hi - lo])
                _kernel.monitor_stats(g, v1[lo:hi], d1 if d1 is v1 else d1[lo:hi], t1, t2, acc)
        row = np.empty(ROW, dtype=np.float64)
        row[:NSCALAR] = (
            acc.sum_g2,
            acc.sum_v,
            acc.sum_d,
            acc.below1,
            acc.below2,
            acc.sum_upd * float(bc),
            float(step_t),
            float(n),
        )
        row[NSCALAR:] = np.ctypeslib.as_array(acc.hist)
        return torch.from_numpy(row)


def _as_f32(src: Any, buf: Any) -> Any:
    """``src`` itself when it is float32 and contiguous, else converted into ``buf``."""
    if src.dtype == buf.dtype and src.is_contiguous():
        return src
    return buf.copy_(src)


def _local(t: Any) -> Any:
    """The local shard of a DTensor (FSDP2), else the tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def bin_offset(bc: Any) -> Any:
    """log2 of the factor 1/√(1-β2^t) that turns a histogram of √v into one of √v̂ (≥ 0)."""
    return -0.5 * np.log2(bc)


def hist_quantiles(hist: Any, qs: Iterable[float], bc: Any) -> np.ndarray:
    """The q-quantiles of √v̂ of every row of ``hist`` (T×NBINS) at once, log-linearly interpolated
    inside the bin: a (T, Q) array, NaN for an empty row. ``bc`` = 1-β2^t per row.

    Within one bin width (:data:`QUANTILE_FACTOR`) of the exact quantile (the ⌈q·n⌉-th smallest
    √v̂) when that is a normal float. q=0 reads the lower edge of the first non-empty bin.

    >>> h = np.zeros((2, NBINS)); h[0, 127] = 1; h[1, 127] = 1
    >>> [f"{x:.4g}" for x in hist_quantiles(h, [0.0, 1.0], np.array([1.0, 0.25])).ravel()]  # √bc = 1/2: ×2
    ['1', '1.414', '2', '2.828']
    """
    h = np.asarray(hist, dtype=np.float64)
    qv = np.asarray(list(qs), dtype=np.float64)
    total = h.sum(1)
    cum = np.cumsum(h, 1)
    target = np.maximum(qv[None, :] * total[:, None], 1e-9)  # (T, Q); ≥ a tiny count for q=0
    k = (cum[:, None, :] < target[:, :, None]).sum(2).clip(0, NBINS - 1)  # first bin with cum >= target
    rows = np.arange(h.shape[0])[:, None]
    before = np.where(k > 0, cum[rows, np.maximum(k - 1, 0)], 0.0)
    cnt = h[rows, k]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(cnt > 0, (target - before) / cnt, 0.5).clip(0.0, 1.0)
        off = bin_offset(np.asarray(bc, dtype=np.float64))[:, None]
    out = np.exp2(BIN_WIDTH_LOG2 * (k + frac - EXP_BIAS) + off)
    return np.where(total[:, None] > 0, out, np.nan)


def merged_quantiles(hist: Any, qs: Iterable[float], bc: Any) -> np.ndarray:
    """The q-quantiles of √v̂ over all rows together (shape (Q,)), exact-edged also when the rows'
    bias corrections differ (param groups with different β2, parameters at different steps).

    Rows with the same correction share their bin edges and are summed; with several corrections the
    cumulative count is the sum of each group's piecewise-linear (in log √v̂) cumulative count, and
    the quantile is read from it on the union of their edges — on one group, the same reading as
    :func:`hist_quantiles`.

    >>> h = np.zeros((2, NBINS)); h[0, 127] = 1; h[1, 127] = 1
    >>> [f"{x:.4g}" for x in merged_quantiles(h, [0.5, 1.0], np.array([1.0, 0.25]))]  # [1, √2) ∪ [2, 2√2)
    ['1.414', '2.828']
    """
    h = np.asarray(hist, dtype=np.float64).reshape(-1, NBINS)
    qv = np.asarray(list(qs), dtype=np.float64)
    off = bin_offset(np.asarray(bc, dtype=np.float64).reshape(-1))
    total = h.sum()
    if not total > 0 or not np.isfinite(off).all():
        return np.full(qv.shape, np.nan)
    uo, inv = np.unique(off, return_inverse=True)
    groups = np.zeros((len(uo), NBINS))
    np.add.at(groups, inv.reshape(-1), h)
    if len(uo) == 1:
        return hist_quantiles(groups, qv, np.asarray(bc, dtype=np.float64).reshape(-1)[:1])[0]
    edges = BIN_WIDTH_LOG2 * (np.arange(NBINS + 1) - EXP_BIAS)[None, :] + uo[:, None]  # log2 √v̂
    cums = np.concatenate([np.zeros((len(uo), 1)), np.cumsum(groups, 1)], 1)
    xs = np.unique(edges)
    cdf = np.sum([np.interp(xs, edges[i], cums[i]) for i in range(len(uo))], axis=0)
    target = np.maximum(qv * cdf[-1], 1e-9)
    i = np.searchsorted(cdf, target, side="left").clip(1, len(xs) - 1)  # first edge with cdf >= target
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(cdf[i] > cdf[i - 1], (target - cdf[i - 1]) / (cdf[i] - cdf[i - 1]), 0.5).clip(0.0, 1.0)
    return np.exp2(xs[i - 1] + frac * (xs[i] - xs[i - 1]))


# --- per-step gradient norm (scan's one-batch rule) -------------------------------------------------
#: Points read from each gradient: every (n // GN_SAMPLES)-th element, one cache line each, so the cost per
#: tensor is constant (~64 KB of memory traffic) whatever its size; a tensor smaller than that is read whole.
#: 1024 points estimate a tensor's Σg² to a few percent, far inside the 10x of the one-batch test.
GN_SAMPLES = 1024
#: The largest tensors only (chosen once): they hold nearly all elements, and a bad batch scales every
#: gradient, so they show its jump; a fixed, small count keeps the per-step Python work constant.
GN_MAX_TENSORS = 32
#: Steps kept (on the device): scan's jump test reads ≤ GRAD_JUMP_TRAILING points before the jump and
#: one after it, and the fed loss shows the blowup within a few dozen steps.
GN_RING = 512


class GradNormRing:
    """A per-step estimate of the gradient norm of one optimizer, for the last :data:`GN_RING` steps.

    scan tells a bad batch from a v collapse by a ≥10x one-step jump of the gradient norm that is
    gone at the next step; the monitor's statistics run every ``every`` steps only, so each step adds
    one fused norm over a strided sample (GN_SAMPLES points) of each of the largest gradients:
    ‖g‖² ≈ Σ n/k · ‖sample‖² (n elements, k sampled). A bad batch scales every element's gradient, so the sample jumps with the
    full norm. It stays on the device (no host sync); :meth:`series` reads it once, at a blowup.

    >>> import torch
    >>> ring = GradNormRing()
    >>> for step in (1, 2, 3):
    ...     ring.record(step, [torch.full((4096,), float(step))])
    >>> [round(float(x)) for x in ring.series()[1]]  # √(4096·step²)
    [64, 128, 192]
    """

    def __init__(self) -> None:
        self.buf: Any = None
        self.last: int | None = None
        self.count = 0
        self._weights: dict[Any, tuple[tuple[int, ...], Any]] = {}

    def record(self, step: int, grads: list[Any]) -> None:
        import torch

        groups: dict[Any, list[tuple[Any, int, int]]] = {}
        for g in grads:
            g = _local(g)
            if g is None or g.is_sparse or not g.numel():
                continue
            n = g.numel()
            s = max(1, n // GN_SAMPLES)
            flat = g.reshape(-1)
            view = flat[::s] if s > 1 else flat
            groups.setdefault((g.device, g.dtype), []).append((view, n, view.numel()))
        if not groups:
            return
        total = None
        for key, items in groups.items():
            norms = torch.stack(torch._foreach_norm([v for v, _, _ in items])).float()
            shape = tuple(n for _, n, _ in items)
            cached = self._weights.get(key)
            if cached is None or cached[0] != shape:
                w = torch.tensor([n / k for _, n, k in items], dtype=torch.float32, device=key[0])
                cached = self._weights[key] = (shape, w)
            part = (norms.square() * cached[1]).sum()
            total = part if total is None else total + part.to(total.device)
        assert total is not None
        if self.buf is None:
            self.buf = torch.full((GN_RING,), math.nan, dtype=torch.float32, device=total.device)
        if self.last is not None and step != self.last + 1:
            self.buf.fill_(math.nan)  # a gap (a restart): the old points are not the steps before
            self.count = 0
        self.buf.select(0, step % GN_RING).copy_(total)
        self.last = step
        self.count += 1

    def series(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, estimated gradient norm) of the kept steps, oldest first."""
        if self.buf is None or self.last is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        k = min(self.count, GN_RING)
        steps = np.arange(self.last - k + 1, self.last + 1, dtype=np.int64)
        vals = self.buf.detach().cpu().double().numpy()[steps % GN_RING]
        return steps, np.sqrt(np.maximum(vals, 0.0))
