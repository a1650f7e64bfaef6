"""The optional ``series`` block of a report: the curves the diagnosis used, downsampled, so
``report``/``show`` draw them without reading the event files again (renderers never recompute)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adamdiag.analysis.downsample import MAX_POINTS, minmax_downsample
from adamdiag.results.report import Report


def curve(steps: Any, values: Any, tag: str, max_points: int = MAX_POINTS) -> dict[str, Any]:
    """``{"tag", "points", "step": [...], "value": [...]}``; non-finite values become ``None``
    with their kind in ``nonfinite`` (``{"<step>": "nan"|"inf"|"-inf"}``), as JSON has no NaN."""
    import math

    s, v = minmax_downsample(steps, values, max_points)
    vals: list[float | None] = []
    bad: dict[str, str] = {}
    for st, x in zip(s.tolist(), v.tolist()):
        if math.isfinite(x):
            vals.append(x)
        else:
            vals.append(None)
            bad[str(st)] = "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    out: dict[str, Any] = {"tag": tag, "points": len(values), "step": [int(x) for x in s.tolist()], "value": vals}
    if bad:
        out["nonfinite"] = bad
    return out


def _weighted_median(values: list[float], weights: list[int]) -> float:
    order = sorted(range(len(values)), key=values.__getitem__)
    half, acc = sum(weights) / 2, 0
    for i in order:
        acc += weights[i]
        if acc >= half:
            return values[i]
    return float("nan")


def checkpoint_views(summaries: list[Any], beta2: float) -> dict[str, Any]:
    """The √v̂ band of every checkpoint (p01 of the lowest tensor, element-weighted median of the
    tensors' medians, p99 of the highest) against eps, and the decay-ratio view of consecutive
    checkpoints (element-weighted; ``pure_decay`` = share of elements in tensors whose *mean* implied g²/v̂
    < 0.1 — by tensor means, from the summaries; inspect's per-element count needs both checkpoints' tensors)."""
    import math

    from adamdiag.analysis.evidence import checkpoint_interval_ratios
    from adamdiag.analysis.thresholds import COLLAPSE_R

    band: dict[str, list[Any]] = {"step": [], "p01": [], "p50": [], "p99": []}
    eps = None
    for c in summaries:
        ts = [
            t for t in c.tensors if all(math.isfinite(t.sqrt_vhat_q.get(k) or math.nan) for k in ("p01", "p50", "p99"))
        ]
        if c.step is None or not ts:
            continue
        eps = eps if eps is not None else float(ts[0].eps)
        band["step"].append(int(c.step))
        band["p01"].append(min(t.sqrt_vhat_q["p01"] for t in ts))
        band["p50"].append(_weighted_median([t.sqrt_vhat_q["p50"] for t in ts], [int(t.numel) for t in ts]))
        band["p99"].append(max(t.sqrt_vhat_q["p99"] for t in ts))
    out: dict[str, Any] = {}
    if band["step"]:
        out["sqrt_vhat"] = {**band, "eps": eps}
    pairs: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for row in checkpoint_interval_ratios(summaries, beta2):
        pairs.setdefault((row["from_step"], row["to_step"]), []).append(row)
    decay = []
    for (a, b), rows in sorted(pairs.items()):
        ok = [x for x in rows if math.isfinite(x["decay_ratio"]) and math.isfinite(x["r_interval"])]
        if not ok:
            continue
        w = [x["numel"] for x in ok]
        decay.append(
            {
                "from_step": a,
                "to_step": b,
                "decay_ratio_p50": _weighted_median([x["decay_ratio"] for x in ok], w),
                "r_interval_p50": _weighted_median([x["r_interval"] for x in ok], w),
                "pure_decay": sum(x["numel"] for x in ok if x["r_interval"] < COLLAPSE_R) / sum(w),
                "tensors": len(ok),
            }
        )
    if decay:
        out["decay"] = decay
    return out


def r_curve(steps: Any, grad_norm: Any, summaries: list[Any], beta2: float, eps: float, max_points: int) -> dict:
    """r = g²/v̂ of all parameters from the gradient norm (exact mean(v̂) reconstruction, re-seeded at
    each checkpoint; without checkpoints the element count is unknown, but r needs no scale)."""
    import numpy as np

    from adamdiag.analysis.evidence import ckpt_global_mean_v, reconstruct
    from adamdiag.analysis.thresholds import COLLAPSE_R

    n = ckpt_global_mean_v(summaries[-1])[1] if summaries else 0
    g2 = np.asarray(grad_norm, np.float64) ** 2 / max(n, 1)
    seeds = [(int(c.step), ckpt_global_mean_v(c)[0]) for c in summaries if c.step is not None] if n else []
    tr = reconstruct(np.asarray(steps, np.int64), g2, beta2, seeds, eps, "global")
    return {**curve(tr.steps, tr.r, "g²/v̂ (all parameters)", max_points), "exact": tr.exact, "threshold": COLLAPSE_R}


MAX_TENSOR_CURVES = 6


def _finding_tensors(run: Any) -> list[str]:
    """Tensors the findings name, errors first: first every finding's own ``tensor`` (a collapse
    finding names its worst one), then the rest of their ``evidence["tensors"]`` lists, so a cap keeps
    the worst tensor of each finding (logs and checkpoints) before the long tail of one of them."""
    from adamdiag.results.report import SEVERITY_RANK

    found = sorted(run.findings, key=lambda f: -SEVERITY_RANK.get(f.severity, 0))
    names: list[Any] = [f.tensor for f in found]
    for f in found:
        listed = (f.evidence or {}).get("tensors") if isinstance(f.evidence, dict) else None
        names += [t.get("tensor") for t in listed or [] if isinstance(t, dict)]
    out: list[str] = []
    for n in names:
        if isinstance(n, str) and n and n != "global" and n not in out:
            out.append(n)
    return out


def _low_r_score(steps: Any, r: Any, until: int | None) -> float:
    """Median r over the last quarter of the points before ``until`` (the blowup; all points without
    one, or when none comes before it): the stretch that explains a blowup ends at it. NaN when no r
    is finite."""
    import numpy as np

    steps, r = np.asarray(steps), np.asarray(r, np.float64)
    ok = np.isfinite(r)
    sel = r[ok & (steps < until)] if until is not None else r[ok]
    if not len(sel):
        sel = r[ok]
    return float(np.median(sel[-max(1, len(sel) // 4) :])) if len(sel) else float("nan")


def tensor_r_curves(
    run: Any,
    scalars: Any,
    histograms: Any,
    summaries: list[Any],
    beta2: float,
    eps: float,
    max_points: int = MAX_POINTS,
    limit: int = MAX_TENSOR_CURVES,
) -> dict[str, Any] | None:
    """Per-tensor r = g²/v̂ over time for the tensors that matter, each from its most exact source:
    the live monitor's ``adamdiag/<tensor>/r`` tags (exact at every logged step), else gradient
    histograms (mean g² = sum_squares/num, v̂ rebuilt by the EMA and re-seeded at checkpoints), else
    consecutive checkpoint pairs (the implied g²/v̂ of each interval, one point per pair at its end).

    Which tensors: those the findings name (the collapsed ones), else the ``limit`` with the lowest
    r before the blowup (:func:`_low_r_score`). None when no source has a per-tensor curve."""
    import math

    import numpy as np

    from adamdiag.analysis.evidence import (
        checkpoint_interval_ratios,
        histogram_trajectories,
        monitor_trajectories,
    )
    from adamdiag.analysis.thresholds import COLLAPSE_R

    # tensor -> (source, steps, r, exact, from_steps or None); the first source to name a tensor wins.
    cand: dict[str, tuple[str, Any, Any, bool, Any]] = {}
    tags = sorted(set(scalars["tag"].unique())) if scalars is not None and len(scalars) else []
    for tr in monitor_trajectories(scalars, tags, beta2, eps) if tags else []:
        if tr.label != "global":
            cand.setdefault(tr.label, ("monitor", tr.steps, tr.r, tr.exact, None))
    if histograms is not None and len(histograms):
        for tr in histogram_trajectories(histograms, summaries, beta2, eps):
            cand.setdefault(tr.label, ("histograms", tr.steps, tr.r, tr.exact, None))
    pairs: dict[str, list[dict[str, Any]]] = {}
    for row in checkpoint_interval_ratios(summaries, beta2):
        pairs.setdefault(row["tensor"], []).append(row)
    for name, rows in pairs.items():
        rows.sort(key=lambda x: x["to_step"])
        steps = np.asarray([x["to_step"] for x in rows], np.int64)
        cand.setdefault(
            name, ("checkpoints", steps, np.asarray([x["r_interval"] for x in rows], np.float64), True, rows)
        )
    if not cand:
        return None
    named = [n for n in _finding_tensors(run) if n in cand]
    if named:
        chosen, why = named[:limit], "findings"
    else:
        score = {n: _low_r_score(c[1], c[2], run.blowup_step) for n, c in cand.items()}
        # Lowest first; a tensor without a finite r sorts last (NaN would break the ordering).
        ranked = sorted(cand, key=lambda n: (math.isnan(score[n]), 0.0 if math.isnan(score[n]) else score[n], n))
        chosen, why = ranked[:limit], "lowest_r"
    curves = []
    for name in chosen:
        source, steps, r, exact, rows = cand[name]
        c = {"tensor": name, "source": source, "exact": bool(exact), **curve(steps, r, f"g²/v̂ {name}", max_points)}
        if rows is not None:
            by_to = {x["to_step"]: x["from_step"] for x in rows}
            c["from_step"] = [int(by_to[s]) for s in c["step"]]
        curves.append(c)
    return {"threshold": COLLAPSE_R, "selected_by": why, "candidates": len(cand), "curves": curves}


def replay_curves(result: Any, max_points: int = MAX_POINTS) -> dict[str, Any]:
    """The loss of every replayed variant of a ``--verify`` replay (``ReplayResult``), downsampled like
    the other curves, for the HTML overlay: variant ``i`` of ``n`` losses covers steps
    ``start_step + 1 … start_step + n`` (the replay's own step numbering)."""
    import numpy as np

    variants = []
    for v in result.variants:
        steps = np.arange(result.start_step + 1, result.start_step + 1 + len(v.losses), dtype=np.int64)
        variants.append(
            {
                "name": v.name,
                "outcome": v.outcome,
                "blowup_step": v.blowup_step,
                **curve(steps, np.asarray(v.losses, np.float64), v.name, max_points),
            }
        )
    return {"start_step": int(result.start_step), "horizon_steps": int(result.steps), "variants": variants}


def attach_series(
    report: Report,
    max_points: int = MAX_POINTS,
    *,
    trust_checkpoint: bool = False,
    checkpoints: bool = True,
    checkpoints_dir: Path | None = None,
    assume: Any = None,
) -> Report:
    """Fill ``series`` of every run: the loss and gradient-norm curves the diagnosis used, r = g²/v̂
    from the gradient norm, per-tensor r of the tensors that matter (:func:`tensor_r_curves`), and
    (``checkpoints``) the √v̂ band and decay-ratio view of the run's checkpoints (under the run, or
    under ``checkpoints_dir`` as ``--checkpoints`` maps it, :func:`checkpoint_roots`). Keys already there
    (``replay``, from ``--verify``) are kept. A run that cannot be read again keeps its ``series``
    with a warning. ``assume``: the ``--assume-*`` values (``io.checkpoints.hyper.Assumptions``), as the
    diagnosis used them."""
    from adamdiag.analysis.evidence import hyperparameters
    from adamdiag.analysis.frames import series
    from adamdiag.analysis.keras_logs import epoch_axis_to_iterations
    from adamdiag.errors import InputError
    from adamdiag.io.events import read_run
    from adamdiag.pipeline.scan import checkpoint_roots, load_checkpoint_summaries

    runs = [Path(r.run) for r in report.runs]
    try:
        roots = checkpoint_roots(checkpoints_dir, runs)
    except InputError as e:  # the scan accepted the mapping; runs it could not read may not map
        report.warnings.append(f"checkpoint views not attached: {e}")
        checkpoints, roots = False, {}
    for r in report.runs:
        tags = {"loss": r.loss_tag, "grad_norm": r.grad_norm_tag}
        if not any(tags.values()):
            continue
        try:
            events = read_run(Path(r.run))
            scalars, hist = events.scalars, events.histograms
        except InputError as e:
            r.warnings.append(f"series not attached: {e}")
            continue
        if any(f.id == "AD604" for f in r.findings):  # the diagnosis put Keras' epoch points on the iteration axis
            scalars, _ = epoch_axis_to_iterations(scalars)
        block: dict[str, Any] = {}
        for key, tag in tags.items():
            if tag:
                s = series(scalars, tag)
                if len(s):
                    block[key] = curve(s.index.to_numpy(), s.to_numpy(), tag, max_points)
        summaries: list[Any] = []
        if checkpoints and "checkpoints" in r.sources:
            run_dir = Path(r.run)
            summaries, _ = load_checkpoint_summaries(
                roots.get(run_dir, run_dir if run_dir.is_dir() else run_dir.parent),
                trust=trust_checkpoint,
                convention=r.convention,
                warnings=[],
                assume=assume,
            )
            summaries = [c for c in summaries if c.tensors]
        # the run's values as the diagnosis takes them: what most elements use, unknown ones never
        beta2, eps, _ = hyperparameters(summaries[0] if summaries else None)
        # A run whose checkpoints hold another optimizer (AD903): its logs say nothing about Adam's v.
        not_adam = any(f.id == "AD903" for f in r.findings)
        if r.grad_norm_tag and not not_adam:
            s = series(scalars, r.grad_norm_tag)
            if len(s) > 1:
                block["r"] = r_curve(s.index.to_numpy(), s.to_numpy(), summaries, beta2, eps, max_points)
        block.update(checkpoint_views(summaries, beta2))
        per = None
        if not not_adam:
            per = tensor_r_curves(r, scalars, hist, summaries, beta2, eps if summaries else 0.0, max_points)
        if per is not None:
            block["r_tensors"] = per
        # What --verify kept (the replay curves, pipeline.verify) stays; this run's curves join it.
        r.series = {**(r.series or {}), **block} or None
    return report
