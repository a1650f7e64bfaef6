"""Joins the checkpoint reader and the pure moment statistics: a path in, a summary out.

Tensors are streamed; once a memory-mapped tensor has been summarized its pages are handed back
(:class:`adamdiag.io.checkpoints.PageReleaser`), so peak memory stays near the tensors in flight,
not one checkpoint. With ``jobs`` > 1 several tensors are read and summarized at once in threads (the
reads, the compiled kernel and torch's passes run without the GIL): the shards of a DCP or DeepSpeed
checkpoint are read in parallel. How many tensors are in flight is bounded by ``jobs`` and by a byte
budget (:func:`inflight_budget`), so memory does not grow with ``jobs`` on a checkpoint of large tensors.
Every tensor's statistics come from its own bytes only, so the result is the same for any ``jobs``.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamdiag.analysis.evidence import state_key
from adamdiag.analysis.moments import EXACT_QUANTILE_LIMIT, CheckpointSummary, decay_ratio, tensor_stats
from adamdiag.io.checkpoints.integrity import BUSY, Piece

if TYPE_CHECKING:
    from adamdiag.analysis.moments import TensorStats
    from adamdiag.io.checkpoints import OptimizerCheckpoint, PageReleaser, _Entry
    from adamdiag.io.checkpoints.hyper import Assumptions
    from adamdiag.io.checkpoints.integrity import ZipCrcCheck

Progress = Callable[[int, int, str], None]  # (done, total, label)

# Readers whose tensors may be fetched from several threads: they open a file per read (DCP) or
# slice read-only mappings loaded up front (torch files, DeepSpeed). TF bundles, Keras h5 (h5py
# serializes on one global lock anyway) and the safetensors handles of dcp-hf are read one by one.
PARALLEL_LAYOUTS = ("torch", "lightning", "hf", "accelerate", "dcp", "deepspeed-")
# Bytes of tensors in flight at once: at least this, or 1/8 of the checkpoint's state if more —
# the peak memory stays a fraction of the checkpoint whatever ``jobs`` is.
MIN_INFLIGHT_BYTES = 256 * 1024 * 1024
INFLIGHT_FRACTION = 1 / 8


def default_jobs() -> int:
    """``--jobs`` when not given: min(4, CPUs this process may use)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def _entry_bytes(e: _Entry, with_param: bool) -> int:
    """What reading an entry puts in memory, at 4 bytes an element (fp32 master state: the common
    case; bf16/fp16 states take less): m and v, and the parameter."""
    return 4 * math.prod(e.shape or ()) * (3 if with_param else 2)


def inflight_budget(total_bytes: int) -> int:
    """Bytes of tensors in flight at once for a checkpoint whose state totals ``total_bytes``."""
    return max(MIN_INFLIGHT_BYTES, int(total_bytes * INFLIGHT_FRACTION))


def summarize_checkpoint(
    path: Path | str,
    *,
    trust: bool = False,
    convention: str | None = None,
    progress: Progress | None = None,
    exact_quantile_limit: int = EXACT_QUANTILE_LIMIT,
    assume: Assumptions | None = None,
    jobs: int | None = None,
) -> CheckpointSummary:
    """Per-tensor statistics of one optimizer checkpoint (file or directory), in optimizer order.
    Quantiles are exact at any size (selected while streaming); only if that selection fails (ties
    crowding it) are they computed from a copy, up to ``exact_quantile_limit`` elements, or a sample above it.

    ``assume``: values for hyperparameters the file does not store (``--assume-*``; one policy:
    :mod:`adamdiag.io.checkpoints.hyper`). ``jobs``: tensors read and summarized at once (``--jobs``;
    None: :func:`default_jobs`); the result does not depend on it.

    Raises :class:`adamdiag.errors.InputError` for unreadable / non-Adam checkpoints and
    :class:`adamdiag.errors.UntrustedCheckpointError` when the file needs ``trust=True``.
    """
    from adamdiag.io.checkpoints import PageReleaser, open_checkpoint, replay_refusal
    from adamdiag.io.checkpoints.integrity import ZipCrcCheck

    ck = open_checkpoint(Path(path), trust=trust, convention=convention, assume=assume)
    rel = PageReleaser(ck.mmap_files)
    # DCP items are read into memory, never mapped: nothing the mapped-page CRC check could see (it
    # would only read /proc/self/maps again for every tensor, looking for them)
    crc = ZipCrcCheck(enabled=ck.layout != "dcp")
    entries = ck.stateful_entries()
    total = len(entries)
    stats = []
    warnings = list(ck.warnings)
    n_jobs = default_jobs() if jobs is None else max(1, int(jobs))
    if not ck.layout.startswith(PARALLEL_LAYOUTS):
        n_jobs = 1

    deferred: list[list[tuple[str, tuple[str, int]]]] = []  # per tensor: members whose verdict comes last

    def one(e: _Entry) -> tuple[TensorStats, list[str], list[tuple[str, tuple[str, int]]]]:
        return _summarize_entry(ck, e, crc, rel, exact_quantile_limit)

    def done(st: TensorStats, w: list[str], later: list[tuple[str, tuple[str, int]]]) -> None:
        stats.append(st)
        warnings.extend(w)
        deferred.append(later)
        if progress is not None:
            progress(len(stats), total, st.label)

    if n_jobs == 1 or total <= 1:
        for e in entries:
            done(*one(e))
    else:
        from concurrent.futures import Future, ThreadPoolExecutor

        cost = [_entry_bytes(e, e.name is not None) for e in entries]
        budget = inflight_budget(sum(cost))
        pending: deque[tuple[Future, int]] = deque()
        inflight = 0
        with ThreadPoolExecutor(max_workers=n_jobs, thread_name_prefix="adamdiag-read") as pool:
            try:
                for e, c in zip(entries, cost):
                    # Wait for the oldest tensor while the next would exceed the jobs or the byte budget
                    # (one tensor is always admitted, however large); results are taken in order.
                    while pending and (len(pending) >= n_jobs or inflight + c > budget):
                        fut, c0 = pending.popleft()
                        done(*fut.result())
                        inflight -= c0
                    pending.append((pool.submit(one, e), c))
                    inflight += c
                while pending:
                    fut, _ = pending.popleft()
                    done(*fut.result())
            except BaseException:
                for fut, _ in pending:  # an unreadable tensor: the ones not started are not read
                    fut.cancel()
                raise
    # Members read in pieces (DeepSpeed flat partitions hold every parameter's share): their CRC is
    # complete once every tensor has been read; a bad one is AD403 on each tensor cut from it.
    verdicts = crc.finish()
    for st, later in zip(stats, deferred, strict=True):
        bad = sorted({f"{k} ({verdicts[loc]})" for k, loc in later if verdicts.get(loc)})
        if bad:
            st.corrupt = "; ".join(x for x in (st.corrupt, f"zip CRC mismatch in {', '.join(bad)}") if x)
            warnings.append(_crc_warning(st.label, bad))
    underflow = half_precision_v_underflow(stats)
    if underflow:
        warnings.append(underflow)
    return CheckpointSummary(
        path=ck.path,
        step=ck.step,
        layout=ck.layout,
        optimizer=ck.optimizer,
        convention=ck.convention,
        name_mapping=ck.name_mapping,
        warnings=warnings,
        tensors=stats,
        other_optimizers=list(ck.other_optimizers),
        optimizer_step=ck.optimizer_step,
        replay_refusal=replay_refusal(ck.optimizer),
    )


# float16's smallest positive value (a subnormal): a v below half of it is stored as 0
FLOAT16_TINY = 2.0**-24
# the statistics that divide by √v̂+eps: over elements whose v is a float16 zero they are lr·m̂/eps, not the run's
UPDATE_STATS = ("update_rms", "update_max", "update_ratio_rms", "update_rms_rel")


def half_precision_v_underflow(stats: list[TensorStats]) -> str:
    """For tensors whose v is stored in float16 and holds zeros — ultralytics saves its optimizer state so
    (``convert_optimizer_state_dict_to_fp16``), and any ``.half()`` of a state does it: float16's smallest step is
    6e-8, and v (an average of squared gradients, often 1e-10 and less) below half of it is stored as 0 — those
    zeros are not "never received a gradient": their √v̂ is unknown below √(6e-8/(1-β2^t)), and every update
    statistic over them would be lr·m̂/eps. Nulls those statistics (in place) and returns the warning; "" when
    no tensor is affected."""
    hit = [st for st in stats if st.dtype == "float16" and st.frac_v_zero and st.frac_v_zero > 0]
    if not hit:
        return ""
    for st in hit:
        for k in UPDATE_STATS:
            if getattr(st, k) is not None:
                setattr(st, k, math.nan)
                st.unknown_inputs[k] = ["v (float16 zeros)"]  # shown as "?", as a statistic missing an input
        st.notes.append("v stored in float16 with zeros: below float16's range, not gradient-free; update stats nulled")
    n = sum(int(st.numel) for st in hit)
    zero = sum(float(st.frac_v_zero) * int(st.numel) for st in hit) / n if n else 0.0
    return (
        f"v is stored in float16 in {len(hit)} tensor(s) (ultralytics saves optimizer state this way): a v below "
        f"{FLOAT16_TINY / 2:.1e} is stored as 0 — {zero:.0%} of their elements here. Those zeros are not 'never "
        "received a gradient': their √v̂ is unknown (below float16's range), so √v̂<eps and v=0 there are no "
        "evidence of a collapse, and update statistics over them (lr·m̂/eps) are left out (null)"
    )


def _summarize_entry(
    ck: OptimizerCheckpoint, e: _Entry, crc: ZipCrcCheck, rel: PageReleaser, exact_limit: int
) -> tuple[TensorStats, list[str], list[tuple[str, tuple[str, int]]]]:
    """One tensor: read it, its statistics, the CRC of the members they came from, its pages handed
    back. Returns the statistics, the warnings it raised (the caller keeps them in tensor order) and the
    members read in pieces whose verdict comes at the end (``ZipCrcCheck.finish``), by state key."""
    t = ck.tensor(e)
    st = tensor_stats(t, ck.convention, exact_limit=exact_limit)
    warnings: list[str] = []
    # The CRC of every member these statistics came from, while its pages are still resident.
    used = {"exp_avg": t.exp_avg, "exp_avg_sq": t.exp_avg_sq, "max_exp_avg_sq": t.max_exp_avg_sq, "param": t.param}
    srcs = t.crc_sources or {}
    todo = [(k, src) for k, x in used.items() if x is not None for src in srcs.get(k, [x])]
    later = [(k, loc) for k, src in todo if isinstance(src, Piece) and (loc := crc.add_piece(src)) is not None]
    todo = [(k, src) for k, src in todo if not isinstance(src, Piece)]
    # members another thread is checking now are asked again last: meanwhile this one checks others
    first = [(k, src, crc.check(src, wait_for_it=False)) for k, src in todo]
    found = [(k, src, crc.check(src) if member == BUSY else member) for k, src, member in first]
    bad = [f"{k} ({member})" for k, _, member in found if member]
    if bad:
        st.corrupt = f"zip CRC mismatch in {', '.join(bad)}"
        warnings.append(_crc_warning(st.label, bad))
    if st.negative_v:
        warnings.append(
            f"AD403 corrupt state: `{st.label}`: {st.negative_v} element(s) with v < 0 (impossible for Adam)"
        )
    # pages of the stored pieces too (a reader's gathered copy is heap memory, freed by itself)
    stored = (x.view if isinstance(x, Piece) else x for v in srcs.values() for x in v)
    rel.release(t.exp_avg, t.exp_avg_sq, t.max_exp_avg_sq, t.param, *stored)
    ck.recycle(t)  # nothing here keeps t's tensors: the reader may put the next one in their memory
    return st, warnings, later


def _crc_warning(label: str, bad: list[str]) -> str:
    return (
        f"AD403 corrupt state: `{label}`: zip CRC mismatch in the data of {', '.join(bad)}; "
        "its statistics come from damaged bytes"
    )


def compare_checkpoints(
    path_a: Path | str,
    path_b: Path | str,
    *,
    trust: bool = False,
    progress: Progress | None = None,
    assume: Assumptions | None = None,
) -> dict[str, Any]:
    """Decay-ratio view of two checkpoints of one run (a before b), tensor by tensor, matched by
    (optimizer, group, index). Tensors of changed shape or without a step are listed in ``skipped``;
    with β2 unknown (and not assumed) a tensor's ratios are null (``beta2_source: "unknown"``)."""
    from adamdiag.io.checkpoints import PageReleaser, open_checkpoint

    a = open_checkpoint(Path(path_a), trust=trust, assume=assume)
    b = open_checkpoint(Path(path_b), trust=trust, assume=assume)
    rel = PageReleaser(a.mmap_files + b.mmap_files)
    # (optimizer, group, index): state indices start at 0 in every optimizer of a file
    by_key = {state_key(t): t for t in a.tensors(with_params=False)}  # lazy (mmap): cheap
    tensors, skipped = [], []
    total = len(b)
    hyper_diff: list[str] = []
    renamed = only_b = 0
    matched: set[tuple] = set()
    for i, tb in enumerate(b.tensors(with_params=False)):
        key = state_key(tb)
        ta = by_key.get(key)
        if ta is None:
            skipped.append({"label": tb.label, "reason": "not in the first checkpoint"})
            only_b += 1
            continue
        matched.add(key)
        if ta.name != tb.name:
            renamed += 1
        for h in ("eps", "beta2"):
            va, vb = getattr(ta, h), getattr(tb, h)
            if va != vb and not (va != va and vb != vb) and len(hyper_diff) < 3:  # NaN == NaN: both unknown
                hyper_diff.append(f"{h} of `{tb.label}` {va:g} → {vb:g}")
        try:
            tensors.append(decay_ratio(ta, tb))
        except ValueError as e:
            skipped.append({"label": tb.label, "reason": str(e)})
        rel.release(ta.exp_avg_sq, tb.exp_avg_sq)
        if progress is not None:
            progress(i + 1, total, tb.label)
    warnings = []
    if a.step is not None and b.step is not None and b.step <= a.step:
        warnings.append(f"second checkpoint (step {b.step}) is not after the first (step {a.step})")
    # Ratios between checkpoints of different runs (or after a change of eps/β2) mean nothing: say so.
    if _same_file(path_a, path_b):
        warnings.append("both arguments are the same checkpoint: every decay ratio compares it with itself")
    if hyper_diff:
        warnings.append(
            f"hyperparameters differ between the checkpoints ({'; '.join(hyper_diff)}): not one run, or "
            "changed mid-run; the decay ratios use the second checkpoint's β2"
        )
    if renamed:
        warnings.append(f"{renamed} tensor(s) have another name in the second checkpoint: not the same model?")
    only_a = len(by_key) - len(matched)
    if only_a or only_b:
        warnings.append(
            f"the checkpoints hold different tensors ({only_a} only in the first, {only_b} only in the second)"
        )
    return {
        "from_path": a.path,
        "to_path": b.path,
        "from_step": a.step,
        "to_step": b.step,
        "tensors": tensors,
        "skipped": skipped,
        "warnings": warnings,
    }


def _same_file(a: Path | str, b: Path | str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
