"""Statistics of Adam moments: tensors in, numbers out (pure; no file access, no printing).

Definitions (torch convention; docs/architecture.md, "The math"): with t = step, bc1 = 1-β1^t, bc2 = 1-β2^t,
m̂ = m/bc1, v̂ = v/bc2 and the denominator's v (``max_exp_avg_sq`` with amsgrad, else ``exp_avg_sq``):

* ``sqrt_vhat_q``: quantiles of √v̂ (of the denominator's v); ``frac_sqrt_vhat_below_eps``
  (``_10eps``): fraction of elements with √v̂ < eps (< 10·eps) — eps dominates (is about to);
* ``update_rms`` / ``update_max``: RMS / max |·| of the next Adam step lr·m̂/(√v̂+eps) (weight
  decay not included); ``update_ratio_rms``: the same without lr (unit-free, comparable across
  tensors); ``eff_step_q``: quantiles of the per-element step size lr/(√v̂+eps).
* TF convention (eps on the un-corrected √v): update = lr·√bc2/bc1 · m/(√v+ε) = lr·m̂/(√v̂ + ε/√bc2),
  so every statistic uses ``eps_effective`` = ε/√bc2 in place of eps.

Elements where m, v (or max v) are not finite are counted in ``nonfinite`` and left out of every
other statistic (quantiles included), so one NaN does not hide the rest of the tensor.

Quantiles are order statistics (nearest rank: element round(q·(n-1)) of the sorted values), exact
at any tensor size: selected while streaming (:class:`_BracketSelect`: a sample brackets each rank,
only the ~1-4% of values inside the brackets are kept and partitioned). When the selection misses
(rare) or ties crowd its brackets, they come from one float32 copy up to ``EXACT_QUANTILE_LIMIT``
elements, and above it from a deterministic sample of min(``QUANTILE_SAMPLE``, ``exact_limit``)
elements (stratified: one random element per n/k block, seed 0; rank error ~ √(q(1-q)/N) < 1e-4),
flagged ``quantiles_exact: false``. min, max, means and fractions are always exact (chunked pass in
float64, constant memory).

Speed: when the optional compiled kernel is built (:mod:`adamdiag.analysis.moments_kernel`), one
fused pass per chunk computes every sum, extreme and count and feeds the quantile brackets
(:func:`_kernel_pass`); otherwise :func:`_chunk_stats` and :meth:`_BracketSelect.feed` do the same
with torch/numpy passes, several times slower on large tensors. Both give the same numbers (tests).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: importing this module stays cheap
    import torch

    from adamdiag.io.checkpoints import TensorMoments

EXACT_QUANTILE_LIMIT = 16 * 1024 * 1024
QUANTILE_SAMPLE = 1 << 22
CHUNK = 1 << 20
QUANTILES = {"min": 0.0, "p01": 0.01, "p50": 0.5, "p99": 0.99, "max": 1.0}
# An element decayed "purely" between two checkpoints when the interval's implied g² is under this
# fraction of v̂ at the first one (the same threshold as the diagnosis's collapse ratio).
PURE_DECAY_R = 0.1
# v_b/(β2^Δ·v_a) is ≥ 1 for one run with this β2 and step count; below this (more than rounding) the
# two checkpoints are not one uninterrupted run: a restart, a changed β2 (``frac_inconsistent``).
INCONSISTENT_RATIO = 0.999
# A bracket around a rank needs sample values on both sides of it.
MIN_BRACKET_SAMPLE = 2
# Which hyperparameters each statistic needs (adamdiag.io.checkpoints.hyper: one policy). A statistic
# whose input is unknown is null, listed in ``TensorStats.unknown_inputs``; β1/β2 matter only through
# the bias corrections (not when the step is unknown or the checkpoint stored its own), β2 to
# eps_effective only in the tf convention (eps/√(1-β2^t)).
STAT_NEEDS: dict[str, tuple[str, ...]] = {
    "sqrt_vhat_q": ("beta2",),
    "frac_sqrt_vhat_below_eps": ("eps", "beta2"),
    "frac_sqrt_vhat_below_10eps": ("eps", "beta2"),
    "eps_effective": ("eps", "beta2"),
    "update_ratio_rms": ("eps", "beta1", "beta2"),
    "update_rms": ("lr", "eps", "beta1", "beta2"),
    "update_max": ("lr", "eps", "beta1", "beta2"),
    "update_rms_rel": ("lr", "eps", "beta1", "beta2"),
    "eff_step_q": ("lr", "eps", "beta2"),
}


@dataclass
class TensorStats:
    """The ``adamdiag.inspect/1`` fields of one tensor (plus extras)."""

    name: str | None
    index: int | str
    shape: list[int]
    numel: int
    group: int
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    step: int | None
    v_mean: float
    v_max: float
    m_abs_mean: float
    sqrt_vhat_q: dict[str, float]
    frac_sqrt_vhat_below_eps: float
    frac_sqrt_vhat_below_10eps: float
    update_rms: float
    update_max: float
    eff_step_q: dict[str, float]
    nonfinite: int
    # extras
    label: str = ""
    amsgrad: bool = False
    eps_effective: float = float("nan")
    update_ratio_rms: float = float("nan")
    param_rms: float | None = None
    update_rms_rel: float | None = None
    quantiles_exact: bool = True
    # v exactly 0: the element never received a gradient (e.g. unused embedding rows). Such elements
    # count as eps-dominated, but they are not a collapse.
    frac_v_zero: float = 0.0
    notes: list[str] = field(default_factory=list)
    # v < 0 is impossible for Adam (an EMA of squares): only a damaged file holds it (AD403, not
    # "never received a gradient"); ``corrupt`` says what else was found wrong with the bytes (CRC).
    negative_v: int = 0
    corrupt: str | None = None
    # the checkpoint's optimizer this tensor belongs to: {"index", "key", "type"} (several per file)
    optimizer: dict[str, Any] | None = None
    # where each hyperparameter came from, when a reader says ('file' | 'default' | 'unknown'):
    # written as the "<name>_source" keys (docs/architecture.md, "Contracts") (TF/Keras checkpoints store some of them nowhere)
    hyper_source: dict[str, str] = field(default_factory=dict)
    # statistic -> the unknown hyperparameters that make it null (STAT_NEEDS); {} when all are known
    unknown_inputs: dict[str, list[str]] = field(default_factory=dict)
    # the stored dtype of v ("float32", "bfloat16", ...): the resolution of differences of v (interval_g2)
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update({f"{k}_source": v for k, v in d.pop("hyper_source").items()})
        return d

    @property
    def risk_key(self) -> tuple[float, ...]:
        """Sort key, most at risk first: non-finite values, then collapse (fraction of √v̂ < 10·eps),
        then eps-dominated (√v̂ < eps), then the size of the next update (unit-free)."""

        def neg(x: float | None) -> float:
            return -x if x is not None and math.isfinite(x) else 0.0

        # Elements that never got a gradient (v = 0) are eps-dominated but not collapsing.
        zero = self.frac_v_zero if self.frac_v_zero is not None and math.isfinite(self.frac_v_zero) else 0.0

        def minus_zero(x: float | None) -> float:
            return neg(max(x - zero, 0.0)) if x is not None and math.isfinite(x) else 0.0

        return (
            -int(self.nonfinite > 0),
            minus_zero(self.frac_sqrt_vhat_below_10eps),
            minus_zero(self.frac_sqrt_vhat_below_eps),
            neg(self.update_ratio_rms),
        )


@dataclass
class CheckpointSummary:
    """Per-tensor statistics of one checkpoint (what ``inspect`` prints and ``scan`` uses)."""

    path: str
    step: int | None
    layout: str
    optimizer: str
    convention: str
    name_mapping: str
    warnings: list[str]
    tensors: list[TensorStats]
    # optimizers in the checkpoint that are not Adam-family ({"index", "key", "type"}): listed, not analysed
    other_optimizers: list[dict[str, Any]] = field(default_factory=list)
    # Adam's own t (the largest per-parameter state step); ``step`` is the log step (global_step & co,
    # what the event files count): io.checkpoints.resolve_steps, the same for inspect, scan and replay
    optimizer_step: int | None = None
    # why ``replay`` cannot re-run this state (a look-alike of Adam, a quantized state...), else None: scan then
    # offers no replay command (not in the JSON: the optimizer name says it)
    replay_refusal: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "other_optimizers": list(self.other_optimizers),
            "path": self.path,
            "step": self.step,
            "log_step": self.step,
            "optimizer_step": self.optimizer_step,
            "layout": self.layout,
            "optimizer": self.optimizer,
            "convention": self.convention,
            "name_mapping": self.name_mapping,
            "warnings": list(self.warnings),
            "tensors": [t.to_dict() for t in self.tensors],
        }


def label_of(name: str | None, group: int, index: int | str) -> str:
    return name if name else f"group {group} / index {index}"


def bias_corrections(step: int | None, beta1: float, beta2: float) -> tuple[float, float, list[str]]:
    """(1-β1^t, 1-β2^t); 1 when the step is unknown or 0 (with a note: then v̂ = v)."""
    if step is None or step <= 0:
        return 1.0, 1.0, [f"step {'unknown' if step is None else step}: no bias correction applied"]
    return 1.0 - beta1**step, 1.0 - beta2**step, []


def effective_eps(eps: float, bc2: float, convention: str) -> float:
    """eps relative to √v̂: eps itself (torch), eps/√(1-β2^t) (tf: eps on the un-corrected √v)."""
    if convention == "tf":
        return eps / math.sqrt(bc2)
    if convention != "torch":
        raise ValueError(f"unknown convention {convention!r}")
    return eps


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1)


def _ranks(n: int, qs: dict[str, float], descending: dict[str, float] | None = None) -> dict[str, int]:
    """Nearest-rank positions: round(q·(n-1)) ascending for ``qs``, from the top for ``descending``."""
    ranks = {k: int(round(q * (n - 1))) for k, q in qs.items()}
    ranks.update({k: n - 1 - int(round(q * (n - 1))) for k, q in (descending or {}).items()})
    return ranks


def _order_stats_reference(
    values: np.ndarray, qs: dict[str, float], descending: dict[str, float] | None = None
) -> dict[str, float]:
    """Nearest-rank order statistics of a 1-D array the plain way (one copy, one partition): element
    round(q·(n-1)) of the ascending values for ``qs``, of the descending values for ``descending``.
    The reference for :func:`_order_stats`."""
    n = values.size
    descending = descending or {}
    if n == 0:
        return {k: float("nan") for k in (*qs, *descending)}
    ranks = _ranks(n, qs, descending)
    part = np.partition(values, sorted(set(ranks.values())))
    return {k: float(part[r]) for k, r in ranks.items()}


# Bracketed selection: below this size a plain partition is as fast.
BRACKET_MIN_SIZE = 1 << 18
BRACKET_SAMPLE = 1 << 16
BRACKET_Z = 6.0  # half-width of a bracket in binomial standard deviations of the sample rank
# With numpy, brackets below/above these quantiles select one tail with a single comparison. The
# kernel compares twice at no extra cost, so it takes tails only where a bracket reaches an end.
TAIL_Q = 0.05


def _select_ranks(values: np.ndarray, ranks: list[int]) -> dict[int, float]:
    """values' order statistics at ``ranks`` (sorted, distinct), one single-rank ``np.partition``
    after another on the part above the previous rank: numpy's single-kth partition is a vectorised
    quickselect (~1.6 ns per element here), its multi-kth one ~10 ns."""
    out: dict[int, float] = {}
    base = 0
    for r in ranks:
        values = np.partition(values, r - base)
        out[r] = float(values[r - base])
        values, base = values[r - base :], r
    return out


class _BracketSelect:
    """Exact order statistics of values that arrive in chunks, without keeping them all.

    Why: a multi-rank ``np.partition`` of a 15M-element tensor costs ~13 ns per element, most of
    ``inspect``'s time on a large checkpoint, and needs a full copy. Instead, a sorted stratified
    sample brackets each wanted rank (±BRACKET_Z binomial standard deviations of its sample rank;
    overlapping or touching brackets merge, brackets near an end become one-sided tails); each chunk
    is compared with the brackets, counting the values below each and keeping those inside (~1-4% of
    them, while the chunk is still in cache). At the end only the kept values are partitioned.
    Whether a rank really lies inside its bracket is checked from the counts; if not (a miss: ~1e-9
    per bracket; or ties that crowd a bracket) :meth:`result` returns None and the caller partitions
    everything. The numbers never depend on the sample, only the time does.

    State per bracket i: ``below[i]`` values fed lie under it; the values inside it are in
    ``kept[i]``. :meth:`feed` fills both with numpy; the compiled kernel (``moments_kernel``) through
    :meth:`add_kept` and :meth:`set_below`.
    """

    def __init__(
        self, sample: np.ndarray, n: int, ranks: list[int], max_kept: int | None = None, tail_q: float = TAIL_Q
    ) -> None:
        k = sample.size
        # more kept values than this means ties crowd a bracket: give up early (memory stays bounded)
        self.max_kept = max(BRACKET_MIN_SIZE, n // 8 if max_kept is None else min(n // 8, max_kept))
        self.spans: list[tuple[str, float, float]] = []
        self.below: list[int] = []
        self.kept: list[list[np.ndarray]] = []
        self.kept_total = 0
        self.failed = k < MIN_BRACKET_SAMPLE
        if self.failed:
            return
        ix: list[list[int]] = []
        for r in sorted(set(ranks)):
            p = r / max(n - 1, 1)
            half = BRACKET_Z * math.sqrt(k * max(p * (1 - p), 1.0 / k)) + 2
            lo_i, hi_i = math.floor(p * (k - 1) - half), math.ceil(p * (k - 1) + half)
            if ix and lo_i <= ix[-1][1]:
                ix[-1][1] = hi_i
            else:
                ix.append([lo_i, hi_i])
        for lo_i, hi_i in ix:
            lower = lo_i < 0 or lo_i / (k - 1) < tail_q
            upper = hi_i >= k or hi_i / (k - 1) > 1 - tail_q
            lo = -math.inf if lower else float(sample[lo_i])  # a tail is open at its end
            hi = math.inf if upper else float(sample[hi_i])
            if self.spans and lo <= self.spans[-1][2]:  # tied sample values: one value, one bracket
                lower = self.spans[-1][0] == "lower"
                lo = self.spans.pop()[1]
            if lower and upper:
                self.failed = True
                return
            self.spans.append(("lower" if lower else "upper" if upper else "inner", lo, hi))
        self.below = [0] * len(self.spans)
        self.kept = [[] for _ in self.spans]

    @classmethod
    def for_array(cls, values: np.ndarray, ranks: list[int]) -> _BracketSelect:
        sample = values[_sample_positions(values.size, min(BRACKET_SAMPLE, values.size))]
        return cls(np.sort(sample[np.isfinite(sample)]), values.size, ranks)

    def feed(self, x: np.ndarray, x_min: float | None = None, x_max: float | None = None) -> None:
        """One chunk of (finite) values; with its min and max, brackets it cannot touch cost nothing."""
        if self.failed:
            return
        for i, (kind, lo, hi) in enumerate(self.spans):
            if x_max is not None and x_max < lo:  # the whole chunk is below this bracket
                self.below[i] += x.size
                continue
            if x_min is not None and x_min > hi:
                continue
            if kind == "lower":
                sel = x[x <= hi]
            elif kind == "upper":
                sel = x[x >= lo]
                self.below[i] += x.size - sel.size
            else:
                sel = x[(x >= lo) & (x <= hi)]
                self.below[i] += int(np.count_nonzero(x < lo))
            self.add_kept(i, sel)

    def add_kept(self, i: int, values: np.ndarray) -> None:
        """Values inside bracket i."""
        if self.failed:
            return
        self.kept[i].append(values)
        self.kept_total += values.size
        if self.kept_total > self.max_kept:
            self.failed = True
            self.kept = []

    def set_below(self, below: list[int]) -> None:
        """Per bracket: how many values fed lie under it (the kernel's counts)."""
        self.below = [int(x) for x in below[: len(self.spans)]]

    def result(self, ranks: dict[str, int]) -> dict[str, float] | None:
        """The order statistics at ``ranks`` (of the values fed), or None on a miss."""
        if self.failed:
            return None
        out: dict[str, float] = {}
        for i in range(len(self.spans)):
            kept = np.concatenate(self.kept[i]) if self.kept[i] else np.empty(0)
            mine = {name: r - self.below[i] for name, r in ranks.items() if 0 <= r - self.below[i] < kept.size}
            if mine:
                at = _select_ranks(kept, sorted(set(mine.values())))
                out.update((name, at[x]) for name, x in mine.items())
        return out if len(out) == len(ranks) else None


def _order_stats(
    values: np.ndarray, qs: dict[str, float], descending: dict[str, float] | None = None
) -> dict[str, float]:
    """The same numbers as :func:`_order_stats_reference`, exactly; bracketed selection
    (:class:`_BracketSelect`) for large arrays."""
    n = values.size
    if n < BRACKET_MIN_SIZE:
        return _order_stats_reference(values, qs, descending)
    ranks = _ranks(n, qs, descending)
    sel = _BracketSelect.for_array(values, list(ranks.values()))
    sel.feed(values)
    got = sel.result(ranks)
    return got if got is not None else _order_stats_reference(values, qs, descending)


def _sample_size(n: int, exact_limit: int) -> int:
    """Sample as many elements as the exact path would allow, up to QUANTILE_SAMPLE."""
    return min(n, QUANTILE_SAMPLE, max(exact_limit, 1 << 16))


def _sample_positions(n: int, k: int) -> np.ndarray:
    """k sorted indices in [0, n): one uniformly random element from each of k equal strata
    (deterministic, seed 0). Stratified: no sort needed, lower variance than i.i.d. draws, and the
    random position inside each stratum avoids aliasing with a tensor's row length. Read-only
    (cached: a checkpoint's layers often share a size)."""
    return _sample_positions_cached(int(n), int(k))


@lru_cache(maxsize=16)
def _sample_positions_cached(n: int, k: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    idx = ((np.arange(k) + rng.random(k)) * (n / k)).astype(np.int64)
    idx = np.minimum(idx, n - 1)
    idx.flags.writeable = False
    return idx


def _sample_indices(n: int, k: int) -> torch.Tensor:
    """:func:`_sample_positions` as a torch index tensor."""
    import torch

    return torch.from_numpy(_sample_positions(n, k).copy())


def _gather(x_flat: torch.Tensor, positions: np.ndarray) -> np.ndarray:
    """x_flat[positions] as float32 (float64 if stored so) numpy values. numpy's fancy indexing on
    the tensor's memory is ~3x torch's index for a sparse sample of a large (mmap) tensor; bf16 has
    no numpy type, so 2-byte floats are gathered as int16 and converted after."""
    import torch

    if x_flat.dtype in (torch.float32, torch.float64, torch.float16) and x_flat.device.type == "cpu":
        vals: np.ndarray = x_flat.detach().numpy()[positions]
        return vals if vals.dtype != np.float16 else vals.astype(np.float32)
    if x_flat.dtype == torch.bfloat16 and x_flat.device.type == "cpu":
        raw = x_flat.detach().view(torch.int16).numpy()[positions]
        return torch.from_numpy(raw).view(torch.bfloat16).float().numpy()
    out: np.ndarray = _work(x_flat[torch.from_numpy(positions.copy())]).numpy()
    return out


def _quantile_values(
    d: torch.Tensor, others: tuple[torch.Tensor, ...], n: int, exact_limit: int, any_nonfinite: bool
) -> tuple[np.ndarray, bool]:
    """Values of the flat tensor ``d`` for quantiles: all of them (a float32/64 numpy view or copy)
    up to ``exact_limit`` elements, else a deterministic sample; elements where ``d`` or any of
    ``others`` (same shape) is not finite are removed (only checked when ``any_nonfinite``)."""
    import torch

    idx = None
    if n > exact_limit:
        idx = _sample_indices(n, _sample_size(n, exact_limit))

    def pick(x: torch.Tensor) -> torch.Tensor:
        return x if idx is None else x[idx]

    vals = pick(d)
    if vals.dtype not in (torch.float32, torch.float64):
        vals = vals.float()
    arr = vals.detach().numpy()
    if any_nonfinite:
        fin = torch.isfinite(pick(d))
        for o in others:
            fin &= torch.isfinite(pick(o))
        arr = arr[fin.numpy()]
    return arr, idx is None


class _Acc:
    """Running sums of one tensor's chunks (float64 accumulators)."""

    def __init__(self) -> None:
        self.n = self.nonfinite = self.below = self.below10 = self.zero = 0
        self.sum_v = self.sum_abs_m = self.sum_u2 = 0.0
        self.max_v = self.max_u = -math.inf
        self.s_min, self.s_max = math.inf, -math.inf  # of the denominator's v; √v̂ at the end


def _work(x: torch.Tensor) -> torch.Tensor:
    """float32 (or float64 if stored so) working copy/view of a chunk: bf16/fp16 are upcast."""
    import torch

    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _chunk_stats(
    acc: _Acc, m: torch.Tensor, v: torch.Tensor, d: torch.Tensor, bc2: float, eps_eff: float
) -> tuple[torch.Tensor, float, float] | None:
    """Accumulate one chunk (≤ ``CHUNK`` elements); returns the chunk's finite denominator values
    (working precision) with their min and max, for the quantile selection, or None when it has none.

    Fast path, for the usual all-finite chunk: elementwise math and the chunk's sums in the stored
    precision (float32 for fp32/bf16/fp16 moments; torch's cascade sum keeps ~1e-7 relative over a
    chunk), totals in float64. A non-finite sum (NaN/Inf elements, or float32 overflow) sends the
    chunk to the exact path: float64, non-finite elements masked out and counted."""
    import torch

    m, v, d = _work(m), _work(v), _work(d)
    sum_v = float(v.sum(dtype=torch.float64))  # Σv exact: the decay ratio cancels it
    sum_abs_m = float(m.abs().sum())
    sum_d = sum_v if d is v else float(d.sum())
    if not (math.isfinite(sum_v) and math.isfinite(sum_abs_m) and math.isfinite(sum_d)):
        fin = torch.isfinite(m) & torch.isfinite(v) & torch.isfinite(d)
        k = int(fin.sum())
        acc.nonfinite += m.numel() - k
        if k == 0:
            return None
        m, v = m[fin].double(), v[fin].double()
        d = v if d is v else d[fin].double()
        sum_v = float(v.sum(dtype=torch.float64))  # Σv exact: the decay ratio cancels it
        sum_abs_m = float(m.abs().sum())
    acc.n += m.numel()
    acc.sum_v += sum_v
    acc.sum_abs_m += sum_abs_m
    lo_t, hi_t = torch.aminmax(d)  # stored values: √v̂ min/max follow exactly in float64 at the end
    lo, hi = float(lo_t), float(hi_t)
    acc.max_v = max(acc.max_v, hi if d is v else float(v.max()))
    acc.s_min, acc.s_max = min(acc.s_min, lo), max(acc.s_max, hi)
    # √v̂ + eps = (√v + eps·√bc2)/√bc2: work on √v and put the √bc2 factor on the totals.
    rb = math.sqrt(bc2)
    if lo <= 0:
        acc.zero += int(np.count_nonzero(d.numpy() <= 0))  # numpy's count: ~7x torch's here
    s = torch.sqrt(d.clamp(min=0) if lo < 0 else d)
    # The eps counts need a pass only when the chunk straddles the threshold.
    for thr, attr in ((eps_eff, "below"), (10 * eps_eff, "below10")):
        if math.sqrt(max(hi, 0.0) / bc2) < thr:
            setattr(acc, attr, getattr(acc, attr) + m.numel())
        elif math.sqrt(max(lo, 0.0) / bc2) < thr:
            setattr(acc, attr, getattr(acc, attr) + int(np.count_nonzero(s.numpy() < thr * rb)))
    s.add_(eps_eff * rb)
    torch.div(m, s, out=s)  # u·bc1/√bc2 with u = m̂/(√v̂+eps)
    s.square_()
    acc.max_u = max(acc.max_u, math.sqrt(float(s.max())) * rb)
    acc.sum_u2 += float(s.sum()) * bc2
    return d, lo, hi


def _param_sq_sum(p_flat: torch.Tensor, chunk: int) -> float:
    """Σ p² over the finite elements of a flat parameter tensor, chunk by chunk."""
    import torch

    total = 0.0
    for i in range(0, p_flat.numel(), chunk):
        p = _work(p_flat[i : i + chunk])
        ps = float(torch.linalg.vector_norm(p)) ** 2
        total += ps if math.isfinite(ps) else float(p[torch.isfinite(p)].double().square().sum())
    return total


def _kernel_dtype(x: torch.Tensor) -> bool:
    import torch

    return x.dtype in (torch.float32, torch.bfloat16, torch.float16)


def _kernel_usable(m_flat: torch.Tensor, v_flat: torch.Tensor, d_flat: torch.Tensor) -> bool:
    """The compiled kernel takes float32 (bf16/fp16 upcast per chunk) CPU tensors. (It takes up to 8
    brackets; tensor_stats makes at most 6: one per rank.)"""
    from adamdiag.analysis import moments_kernel

    return moments_kernel.available() and all(
        _kernel_dtype(x) and x.device.type == "cpu" for x in (m_flat, v_flat, d_flat)
    )


def _f32(x: torch.Tensor) -> torch.Tensor:
    import torch

    return x if x.dtype == torch.float32 and x.is_contiguous() else x.float().contiguous()


def _kernel_pass(
    acc: _Acc,
    select: _BracketSelect | None,
    m_flat: torch.Tensor,
    v_flat: torch.Tensor,
    d_flat: torch.Tensor | None,
    p_flat: torch.Tensor | None,
    bc2: float,
    eps_eff: float,
    chunk: int,
) -> float | None:
    """What the :func:`_chunk_stats` loop, :meth:`_BracketSelect.feed` and :func:`_param_sq_sum`
    compute, in one fused pass per chunk (``moments_kernel``; d_flat None: the denominator is v).
    Returns Σ p², or None when the parameter was not passed (absent, or not float32/bf16/fp16)."""
    from adamdiag.analysis import moments_kernel as mk

    n = int(m_flat.numel())
    rb = math.sqrt(bc2)
    spans = [(lo, hi) for _, lo, hi in select.spans] if select is not None and not select.failed else []
    # the same float32 constants as _chunk_stats: √v̂ + eps = (√v + eps·√bc2)/√bc2
    params = mk.Params.of(eps_eff * rb, eps_eff * rb, (10 * eps_eff) * rb, spans)
    k = mk.Acc.fresh()
    kept = np.empty((max(len(spans), 1), min(chunk, n) + 8), np.float32)  # one row per bracket
    kept_n = np.zeros(mk.MAX_SPANS, np.int64)
    with_p = p_flat is not None and _kernel_dtype(p_flat) and p_flat.device.type == "cpu"
    for i in range(0, n, chunk):
        m, v = _f32(m_flat[i : i + chunk]), _f32(v_flat[i : i + chunk])
        d = v if d_flat is None else _f32(d_flat[i : i + chunk])
        p = _f32(p_flat[i : i + chunk]) if with_p and p_flat is not None else None
        mk.chunk_stats(m, v, d, p, params, k, kept, kept_n)
        if params.nspan:
            assert select is not None  # the spans are the selection's
            for j in range(params.nspan):
                select.add_kept(j, kept[j, : kept_n[j]].copy())
        kept_n[:] = 0
        if (
            params.nspan and select is not None and select.failed
        ):  # crowded: the caller partitions everything; stop selecting
            params.nspan = 0
    acc.n, acc.nonfinite, acc.zero = k.n_finite, n - k.n_finite, k.zero
    acc.below, acc.below10 = k.below1, k.below2
    acc.sum_v, acc.sum_abs_m, acc.sum_u2 = k.sum_v, k.sum_abs_m, k.sum_u2 * bc2
    acc.max_v, acc.s_min, acc.s_max = k.max_v, k.min_d, k.max_d
    acc.max_u = -math.inf if k.max_u2 < 0 else math.sqrt(k.max_u2) * rb  # NaN stays NaN
    if spans and select is not None and not select.failed:
        select.set_below(list(k.lt_lo))
    return k.sum_p2 if with_p else None


def tensor_stats(
    t: TensorMoments, convention: str = "torch", *, exact_limit: int = EXACT_QUANTILE_LIMIT, chunk: int = CHUNK
) -> TensorStats:
    """Statistics of one parameter's Adam state (see the module docstring for definitions).

    Memory: O(chunk) for the exact sums, plus the values kept for the quantile selection (~1-4% of
    the tensor; a float32 copy of it only when the selection misses or for tensors under
    BRACKET_MIN_SIZE elements). bf16/fp16 moments are upcast chunk by chunk.
    """
    n = int(t.exp_avg.numel())
    sources = dict(getattr(t, "hyper_source", None) or {})
    bias_correction = getattr(t, "bias_correction", None)
    unknown = unknown_hyper(t, sources, own_bias=bias_correction is not None)
    # Unknown values are NaN; the passes run on stand-ins (β: no bias correction, eps 1: positive, so
    # lr/(√v̂+eps) stays defined where v = 0) and every statistic that needs one is nulled at the end:
    # NaN thresholds would count nothing, not "null".
    bc1, bc2, notes = bias_corrections(
        t.step, 0.0 if "beta1" in unknown else t.beta1, 0.0 if "beta2" in unknown else t.beta2
    )
    if bias_correction is not None:  # what the optimizer itself divided by (TF1)
        bc1, bc2 = bias_correction
        notes.append(f"bias corrections from the checkpoint: 1-β1^t={bc1:.6g}, 1-β2^t={bc2:.6g}")
    eps_eff = effective_eps(1.0 if "eps" in unknown else t.eps, bc2, convention)
    vden = t.max_exp_avg_sq if (t.amsgrad and t.max_exp_avg_sq is not None) else t.exp_avg_sq
    if t.amsgrad and t.max_exp_avg_sq is None:
        notes.append("amsgrad without max_exp_avg_sq: the denominator uses exp_avg_sq")
    m_flat, v_flat, d_flat = _flat(t.exp_avg), _flat(t.exp_avg_sq), _flat(vden)
    p_flat = _flat(t.param) if t.param is not None and t.param.numel() == n else None

    acc = _Acc()
    same = vden is t.exp_avg_sq
    # min and max come exactly from the chunked pass; only the inner quantiles need a selection.
    # eff step lr/(√v̂+eps) decreases with v: its q-quantile is the q-quantile of v descending.
    qs = {k: q for k, q in QUANTILES.items() if 0.0 < q < 1.0}
    desc = {f"eff_{k}": q for k, q in qs.items()}
    select = None
    kernel = _kernel_usable(m_flat, v_flat, d_flat)
    if n >= BRACKET_MIN_SIZE:  # exact quantiles at any size, selected while each chunk is in cache
        sample = _gather(d_flat, _sample_positions(n, min(BRACKET_SAMPLE, n)))
        select = _BracketSelect(
            np.sort(sample[np.isfinite(sample)]),
            n,
            list(_ranks(n, qs, desc).values()),
            max_kept=exact_limit,
            tail_q=0.0 if kernel else TAIL_Q,
        )
    if kernel:
        ps = _kernel_pass(acc, select, m_flat, v_flat, None if same else d_flat, p_flat, bc2, eps_eff, chunk)
        sum_p2 = ps if ps is not None else _param_sq_sum(p_flat, chunk) if p_flat is not None else 0.0
    else:
        for i in range(0, n, chunk):
            m, v = m_flat[i : i + chunk], v_flat[i : i + chunk]
            got = _chunk_stats(acc, m, v, v if same else d_flat[i : i + chunk], bc2, eps_eff)
            if select is not None and got is not None:
                select.feed(got[0].numpy(), got[1], got[2])
        sum_p2 = _param_sq_sum(p_flat, chunk) if p_flat is not None else 0.0
    n_f, nonfinite, below, below10 = acc.n, acc.nonfinite, acc.below, acc.below10
    sum_v, sum_abs_m, max_v = acc.sum_v, acc.sum_abs_m, acc.max_v
    s_min = math.sqrt(max(acc.s_min, 0.0) / bc2) if n_f else math.nan
    s_max = math.sqrt(max(acc.s_max, 0.0) / bc2) if n_f else math.nan
    # u was accumulated without the 1/bc1 factor (one multiply less per element)
    sum_u2, max_u = acc.sum_u2 / bc1**2, acc.max_u / bc1

    nan = float("nan")
    if n_f:
        raw = select.result(_ranks(n_f, qs, desc)) if select is not None else None
        exact = True
        if raw is None:  # small tensor, or the selection missed: a copy (a sample above exact_limit)
            arr, exact = _quantile_values(d_flat, (m_flat, v_flat), n, exact_limit, nonfinite > 0)
            raw = _order_stats(arr, qs, desc)
        sq = {"min": s_min, **{k: math.sqrt(max(raw[k], 0.0) / bc2) for k in qs}, "max": s_max}
        eff = {
            "min": _step_size(t.lr, s_max + eps_eff),
            **{k: _step_size(t.lr, math.sqrt(max(raw[f"eff_{k}"], 0.0) / bc2) + eps_eff) for k in qs},
            "max": _step_size(t.lr, s_min + eps_eff),
        }
        ratio_rms = math.sqrt(sum_u2 / n_f)
        v_mean, m_abs_mean = sum_v / n_f, sum_abs_m / n_f
        frac_b, frac_b10 = below / n_f, below10 / n_f
    else:
        exact = True
        sq = {k: nan for k in QUANTILES}
        eff = dict(sq)
        ratio_rms = v_mean = m_abs_mean = frac_b = frac_b10 = nan
        max_v = max_u = nan
        notes.append("no finite elements")
    param_rms = math.sqrt(sum_p2 / n) if p_flat is not None and n else None
    update_rms = t.lr * ratio_rms
    rel = update_rms / param_rms if param_rms else None
    if not exact:
        notes.append(f"quantiles from a sample of {_sample_size(n, exact_limit)} elements (min/max exact)")
    negative = negative_d = 0
    if acc.zero:  # denominator ≤ 0 seen (both paths count it): tell the impossible v < 0 from v = 0
        import torch

        # d < 0 can only be where the pass saw it (its min < 0) or did not look (non-finite elements):
        # otherwise these are v = 0 entries and the count (a bool tensor the size of v) is skipped
        negative_d = int(torch.count_nonzero(d_flat < 0)) if acc.nonfinite or acc.s_min < 0 else 0
        negative = negative_d + (0 if same else int(torch.count_nonzero(v_flat < 0)))
        if negative:
            notes.append(f"{negative} element(s) with v < 0: impossible for Adam (v averages squares): corrupt state")
    st = TensorStats(
        name=t.name,
        index=t.index,
        shape=list(t.shape),
        numel=n,
        group=t.group,
        lr=t.lr,
        beta1=t.beta1,
        beta2=t.beta2,
        eps=t.eps,
        weight_decay=t.weight_decay,
        step=t.step,
        v_mean=v_mean,
        v_max=max_v,
        m_abs_mean=m_abs_mean,
        sqrt_vhat_q=sq,
        frac_sqrt_vhat_below_eps=frac_b,
        frac_sqrt_vhat_below_10eps=frac_b10,
        update_rms=update_rms,
        update_max=t.lr * max_u,
        eff_step_q=eff,
        nonfinite=nonfinite,
        label=label_of(t.name, t.group, t.index),
        amsgrad=t.amsgrad,
        eps_effective=eps_eff,
        update_ratio_rms=ratio_rms,
        param_rms=param_rms,
        update_rms_rel=rel,
        quantiles_exact=exact,
        frac_v_zero=max(acc.zero - negative_d, 0) / n_f if n_f else nan,
        notes=notes,
        negative_v=negative,
        optimizer=getattr(t, "optimizer", None),
        hyper_source=sources,
        dtype=_dtype_name(t.exp_avg_sq),
    )
    null_unknown(st, unknown, convention)
    return st


def _step_size(lr: float, denominator: float) -> float:
    """lr/(√v̂+eps): unbounded (inf) where the denominator is 0 (v = 0 with eps = 0), not an error."""
    return lr / denominator if denominator > 0 else math.inf


def unknown_hyper(t: Any, sources: dict[str, str], *, own_bias: bool = False) -> set[str]:
    """The hyperparameters of ``t`` the statistics cannot use: source "unknown", or not a finite
    number. β1/β2 only where a bias correction needs them: a known step and no correction stored
    in the checkpoint (``own_bias``)."""
    out = set()
    for k in ("lr", "beta1", "beta2", "eps"):
        v = getattr(t, k)
        if sources.get(k) == "unknown" or v is None or not math.isfinite(v):
            out.add(k)
    if own_bias or t.step is None or t.step <= 0:  # no bias correction computed from β1/β2
        out -= {"beta1", "beta2"}
    return out


def null_unknown(st: TensorStats, unknown: set[str], convention: str) -> None:
    """Null every statistic of ``st`` that needs an unknown hyperparameter (``STAT_NEEDS``), in place,
    and record why in ``st.unknown_inputs``."""
    nan = math.nan
    for stat, needs in STAT_NEEDS.items():
        why = [k for k in needs if k in unknown]
        if stat == "eps_effective" and convention != "tf":  # torch: eps_effective is eps itself
            why = [k for k in why if k == "eps"]
        if not why:
            continue
        cur = getattr(st, stat)
        if isinstance(cur, dict):
            setattr(st, stat, {k: nan for k in cur})
        elif cur is not None:
            setattr(st, stat, nan)
        st.unknown_inputs[stat] = why


def _ratio_chunks(
    va_flat: torch.Tensor, vb_flat: torch.Tensor, n: int, chunk: int, decay: float
) -> Iterator[tuple[float, float, int, torch.Tensor]]:
    """Per chunk: (sum of finite v_a, sum of finite v_b, their count, ratios v_b/(β2^Δ·v_a) where v_a > 0).
    Same scheme as _chunk_stats: stored precision per element, sums checked for non-finite."""
    import torch

    for i in range(0, n, chunk):
        va, vb = _work(va_flat[i : i + chunk]), _work(vb_flat[i : i + chunk])
        sa, sb = float(va.sum()), float(vb.sum())
        if not (math.isfinite(sa) and math.isfinite(sb)):
            ok = torch.isfinite(va) & torch.isfinite(vb)
            va, vb = va[ok].double(), vb[ok].double()
            sa, sb = float(va.sum()), float(vb.sum())
        k = va.numel()
        if k and float(va.min()) <= 0:
            pos = va > 0
            va, vb = va[pos], vb[pos]
        r = torch.div(vb, va)
        r.mul_(1.0 / decay)
        yield sa, sb, k, r


def _ratio_select(
    va_flat: torch.Tensor, vb_flat: torch.Tensor, n: int, decay: float, exact_limit: int
) -> _BracketSelect | None:
    """The streaming quantile selection of the ratios (exact at any size, see tensor_stats), or None
    for tensors under BRACKET_MIN_SIZE elements (their ratios are simply kept and partitioned)."""
    import torch

    if n < BRACKET_MIN_SIZE:
        return None
    idx = _sample_indices(n, min(BRACKET_SAMPLE, n))
    sa_, sb_ = _work(va_flat[idx]).double(), _work(vb_flat[idx]).double()
    ok = torch.isfinite(sa_) & torch.isfinite(sb_) & (sa_ > 0)
    sample = (sb_[ok] / (decay * sa_[ok])).numpy()
    return _BracketSelect(np.sort(sample), n, list(_ranks(n, QUANTILES).values()), max_kept=exact_limit)


def decay_ratio(
    a: TensorMoments, b: TensorMoments, *, exact_limit: int = EXACT_QUANTILE_LIMIT, chunk: int = CHUNK
) -> dict[str, Any]:
    """How v of one tensor changed between two checkpoints a (step s) and b (step s+Δ).

    Per element, v_b = β2^Δ·v_a + (1-β2)·Σ β2^(Δ-1-j)·g_j², so ``ratio`` = v_b/(β2^Δ·v_a) ≥ 1 and
    ≈ 1 means pure decay: no gradient arrived (v collapse). The interval-weighted mean g²
    ḡ² = (v_b - β2^Δ·v_a)/(1-β2^Δ); ``frac_pure_decay``: elements with ḡ² < PURE_DECAY_R·v̂_a;
    ``mean_g2_implied``: (mean v_b - β2^Δ·mean v_a)/(1-β2^Δ); ``r_interval``: that / mean v̂_a, with
    their resolution (:func:`interval_g2`: the difference cancels; below it only "< resolution" is known).
    ``frac_inconsistent``: elements with ratio < 0.999 — impossible for one run with this β2 and
    step count (a restart, changed β2, or not the same run). Elements with v_a = 0 or non-finite
    values are left out (``n_used``).
    """
    import torch

    if a.step is None or b.step is None:
        raise ValueError("both checkpoints need an optimizer step count")
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"shape changed between checkpoints: {tuple(a.shape)} vs {tuple(b.shape)}")
    d = int(b.step) - int(a.step)
    beta2 = float(b.beta2)
    beta2_source = (getattr(b, "hyper_source", None) or {}).get("beta2", "file")
    special = _ratio_without_decay(a, b, d, beta2, beta2_source)
    if special is not None:
        return special
    decay = beta2**d
    bc2_a = 1.0 - beta2**a.step if a.step > 0 else 1.0
    notes: list[str] = []
    if a.beta2 != b.beta2:
        notes.append(f"beta2 changed ({a.beta2} → {b.beta2}); using {b.beta2}")
    n = int(a.exp_avg_sq.numel())
    va_flat, vb_flat = _flat(a.exp_avg_sq), _flat(b.exp_avg_sq)

    def ratio_chunks() -> Iterator[tuple[float, float, int, torch.Tensor]]:
        return _ratio_chunks(va_flat, vb_flat, n, chunk, decay)

    select = _ratio_select(va_flat, vb_flat, n, decay, exact_limit)
    kept: list[np.ndarray] = []  # small tensors: all ratios, for a plain partition
    n_used = pure = incons = n_fin = 0
    sum_va = sum_vb = 0.0
    thr = 1.0 + PURE_DECAY_R * (1.0 - decay) / (decay * bc2_a) if d > 0 else math.inf
    for sa, sb, k, r in ratio_chunks():
        n_fin += k
        sum_va += sa
        sum_vb += sb
        n_used += r.numel()
        pure += int(torch.count_nonzero(r < thr))
        incons += int(torch.count_nonzero(r < INCONSISTENT_RATIO))
        if select is not None:
            select.feed(r.numpy())
        elif n <= exact_limit:
            kept.append(r.numpy())
    q = select.result(_ranks(n_used, QUANTILES)) if select is not None and n_used else None
    exact = True
    if q is None and n <= exact_limit:
        if select is not None:  # the selection missed or ties crowded it: a second pass keeps every ratio
            kept = [r.numpy() for *_, r in ratio_chunks()]
        q = _order_stats_reference(np.concatenate(kept) if kept else np.empty(0, np.float32), QUANTILES)
    elif q is None:  # too many to copy: a sample
        exact = False
        idx = _sample_indices(n, _sample_size(n, exact_limit))
        va, vb = va_flat[idx].to(torch.float64), vb_flat[idx].to(torch.float64)
        ok = torch.isfinite(va) & torch.isfinite(vb) & (va > 0)
        q = _order_stats((vb[ok] / (decay * va[ok])).numpy(), QUANTILES)
        notes.append(f"ratio quantiles from a sample of {_sample_size(n, exact_limit)} elements")
    nan = float("nan")
    mean_va = sum_va / n_fin if n_fin else nan
    mean_vb = sum_vb / n_fin if n_fin else nan
    g2 = interval_g2(mean_va, mean_vb, beta2, d, int(a.step), _dtype_name(b.exp_avg_sq), n_fin)
    return {
        "name": b.name,
        "index": b.index,
        "group": b.group,
        "label": label_of(b.name, b.group, b.index),
        "from_step": int(a.step),
        "to_step": int(b.step),
        "delta_steps": d,
        "beta2": beta2,
        "numel": n,
        "n_used": n_used,
        "ratio_q": q,
        "quantiles_exact": exact,
        "frac_pure_decay": pure / n_used if n_used else nan,
        "frac_inconsistent": incons / n_used if n_used else nan,
        "mean_v_from": mean_va,
        "mean_v_to": mean_vb,
        "decay_ratio_mean": mean_vb / (decay * mean_va) if mean_va > 0 else nan,
        **g2,
        "beta2_source": beta2_source,
        "unknown_inputs": {},
        "notes": notes,
    }


# Unit roundoff of the dtypes optimizer state is stored in (half the gap between 1 and the next number).
UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}


def _dtype_name(x: Any) -> str:
    return str(getattr(x, "dtype", "float32")).removeprefix("torch.")


def beta_rounding(beta2: float, dtype: str) -> float:
    """|fl(β2) − β2|/β2 with fl the rounding to ``dtype``: the per-step decay an optimizer computing
    in that precision really applied (0.999 in float32 is 0.99900001287: 1.29e-8 too large, every
    step, in the same direction)."""
    import torch

    tdtype = getattr(torch, dtype, None)
    if not isinstance(tdtype, torch.dtype) or dtype == "float64" or beta2 == 0:
        return 0.0
    return abs(float(torch.tensor(beta2, dtype=tdtype).double()) - beta2) / beta2


def interval_g2(
    mean_va: float, mean_vb: float, beta2: float, delta: int, step_a: int, dtype: str = "float32", n: int = 0
) -> dict[str, Any]:
    """The interval-weighted mean g² implied by two checkpoints' mean v, ḡ² = (A − B)/(1 − β2^Δ) with
    A = mean v_b and B = β2^Δ·mean v_a, its ratio to v̂_a (``r_interval``), and the resolution of both.

    A − B cancels when v decayed almost purely (A ≈ B): its error is then most of the result. The
    tolerance, in terms of the operands (docs/architecture.md, "Checkpoint decay ratio"):

        δ(A − B) = u·(A + B) + n·2⁻⁵³·(A + B) + Δ·(e_β + u)·B

    * u·(A + B): each stored v is a value rounded to its dtype (u = ``UNIT_ROUNDOFF``, 2⁻²⁴ in float32);
    * n·2⁻⁵³·(A + B): the float64 sums over n elements behind the means (bound of recursive summation);
    * Δ·(e_β + u)·B: the optimizer's own Δ decay steps in that dtype — β2 held there is off by e_β
      (``beta_rounding``, the same sign every step) and each product is rounded (≤ u): a worst case.

    ``mean_g2_resolution`` = δ(A − B)/(1 − β2^Δ), ``r_interval_resolution`` = that / v̂_a;
    ``r_interval_below_resolution``: ḡ² < its resolution — then only "< r_interval_resolution" is
    known (a float32 Adam with β2 = 0.999 and no gradient at all shows ḡ²/v̂ ≈ 1.3e-5, all of it e_β).
    """
    nan = math.nan
    if delta <= 0 or not (math.isfinite(mean_va) and math.isfinite(mean_vb)):
        return {
            "mean_g2_implied": nan,
            "r_interval": nan,
            "mean_g2_resolution": nan,
            "r_interval_resolution": nan,
            "r_interval_below_resolution": False,
        }
    decay = beta2**delta
    a_op, b_op = mean_vb, decay * mean_va
    u = UNIT_ROUNDOFF.get(dtype, UNIT_ROUNDOFF["float32"])
    tol = (u + n * 2.0**-53) * (abs(a_op) + abs(b_op)) + delta * (beta_rounding(beta2, dtype) + u) * abs(b_op)
    g2 = (a_op - b_op) / (1.0 - decay)
    g2_tol = tol / (1.0 - decay)
    bc2_a = 1.0 - beta2**step_a if step_a > 0 else 1.0
    vhat_a = mean_va / bc2_a
    ok = vhat_a > 0
    return {
        "mean_g2_implied": g2,
        "r_interval": max(g2, 0.0) / vhat_a if ok else nan,
        "mean_g2_resolution": g2_tol,
        "r_interval_resolution": g2_tol / vhat_a if ok else nan,
        "r_interval_below_resolution": bool(g2 < g2_tol),
    }


# the decay-ratio fields that need β2 (all but the means of v): null when β2 is unknown
RATIO_NEEDS_BETA2 = (
    "ratio_q",
    "frac_pure_decay",
    "frac_inconsistent",
    "decay_ratio_mean",
    "mean_g2_implied",
    "r_interval",
)


# β2^Δ below float32's smallest normal: the per-element ratios v_b/(β2^Δ·v_a) overflow float32 and the
# pure-decay threshold divides by ~0 (checkpoints ≥ ~88k steps apart at β2 0.999, ~1.7k at 0.95; β2 = 0).
FAR_APART_DECAY = 1.1754943508222875e-38


def _ratio_without_decay(
    a: TensorMoments, b: TensorMoments, d: int, beta2: float, beta2_source: str
) -> dict[str, Any] | None:
    """The record of a pair with no usable β2^Δ (β2 unknown, or so small the ratios overflow); None
    when the ratios can be computed."""
    if beta2_source == "unknown" or not math.isfinite(beta2):
        return _ratio_unknown_beta2(a, b, d)
    if d > 0 and beta2**d < FAR_APART_DECAY:
        return _ratio_far_apart(a, b, d, beta2, beta2_source)
    return None


def _ratio_far_apart(a: TensorMoments, b: TensorMoments, d: int, beta2: float, beta2_source: str) -> dict[str, Any]:
    """The decay-ratio record of two checkpoints so far apart that v at the first has no weight left
    at the second (β2^Δ ~ 0): no ratio to pure decay exists (null); the means of v and the implied
    interval g² (which needs no division by β2^Δ) are still given."""
    rec = _ratio_unknown_beta2(a, b, d)
    g2 = interval_g2(
        rec["mean_v_from"], rec["mean_v_to"], beta2, d, int(a.step or 0), _dtype_name(b.exp_avg_sq), rec["numel"]
    )
    rec.update(
        g2,
        beta2=beta2,
        beta2_source=beta2_source,
        unknown_inputs={},
        notes=[
            f"checkpoints {d} steps apart at β2={beta2:g}: β2^Δ = {beta2**d:.3g}, so v at the first has no weight "
            "left at the second — no decay ratio (only the mean g² over the interval)"
        ],
    )
    return rec


def _ratio_unknown_beta2(a: TensorMoments, b: TensorMoments, d: int) -> dict[str, Any]:
    """The decay-ratio record of a tensor whose β2 is unknown: β2^Δ is the whole comparison, so
    every ratio is null (``unknown_inputs``); the means of v need no β2 and are still given."""
    import torch

    nan = math.nan
    means = []
    for x in (a.exp_avg_sq, b.exp_avg_sq):
        flat, total, k = _flat(x), 0.0, 0
        for i in range(0, flat.numel(), CHUNK):  # chunked: constant memory, as everywhere here
            v = flat[i : i + CHUNK].double()
            fin = v[torch.isfinite(v)]
            total, k = total + float(fin.sum()), k + fin.numel()
        means.append(total / k if k else nan)
    return {
        "name": b.name,
        "index": b.index,
        "group": b.group,
        "label": label_of(b.name, b.group, b.index),
        "from_step": int(a.step or 0),
        "to_step": int(b.step or 0),
        "delta_steps": d,
        "beta2": nan,
        "numel": int(a.exp_avg_sq.numel()),
        "n_used": 0,
        "ratio_q": {k: nan for k in QUANTILES},
        "quantiles_exact": True,
        "frac_pure_decay": nan,
        "frac_inconsistent": nan,
        "mean_v_from": means[0],
        "mean_v_to": means[1],
        "decay_ratio_mean": nan,
        "mean_g2_implied": nan,
        "r_interval": nan,
        "mean_g2_resolution": nan,
        "r_interval_resolution": nan,
        "r_interval_below_resolution": False,
        "beta2_source": "unknown",
        "unknown_inputs": {k: ["beta2"] for k in RATIO_NEEDS_BETA2},
        "notes": ["β2 unknown (not in the checkpoint): the ratios need β2^Δ; give --assume-beta2"],
    }
