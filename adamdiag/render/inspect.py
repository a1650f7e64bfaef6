"""Renderers of the inspect result: per-tensor Adam moment statistics, most at risk first.

Formats: ``text`` (rich tables), ``json`` (``adamdiag.inspect/1``, docs/architecture.md "Contracts"; tensors in
optimizer order), ``csv`` (one row per tensor per checkpoint; the decay-ratio columns are filled on
the rows of the later checkpoint of each consecutive pair). Two or more checkpoints of one run also
get the decay-ratio ``pairs`` view: v_b/(β2^Δ·v_a) ≈ 1 means v decayed without new gradient.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Literal


def _fmt(x: Any, spec: str = ".3g") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        return format(x, spec)
    return str(x)


def _pct(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.1%}"


def _implied(r: dict) -> str:
    """The implied g²/v̂ of a pair row, or "< X" when it is below the resolution X of the cancelling
    difference it comes from (analysis.moments.interval_g2): then the digits would be rounding."""
    if r.get("r_interval_below_resolution"):
        return f"< {_fmt(r.get('r_interval_resolution'), '.2g')}"
    return _fmt(r["r_interval"])


# The tensor column folds names longer than this (a transformer's dotted paths run to 80+ characters).
NAME_FOLD_AT = 60


def render_text(summaries: list, pairs: list[dict], width: int | None = None, *, full: bool = False) -> str:
    """Every checkpoint's tensors and every pair's decay ratios; with more than two checkpoints (a folder
    of a run's checkpoints) and not ``full`` (``--all``), one line per checkpoint and the last one (and
    its pair) in full, so the text stays readable; JSON and CSV always hold everything."""
    from rich.console import Console

    if width is None:  # wide enough that names and notes are not folded (the table is data, not a TTY view)
        longest = max((len(t.label) for s in summaries for t in s.tensors), default=10)
        note = max((len(w) + 8 for s in summaries for w in s.warnings), default=0)  # "  note: " + w
        width = min(300, max(170 + min(longest, NAME_FOLD_AT), note))
    buf = io.StringIO()
    con = Console(file=buf, width=width, no_color=True, highlight=False, force_terminal=False, soft_wrap=False)
    if full or len(summaries) <= 2:
        for s in summaries:
            _checkpoint_block(con, s)
        for p in pairs:
            _pair_block(con, p)
    else:
        _overview(con, summaries, pairs)
        _checkpoint_block(con, summaries[-1])
        last = [p for p in pairs if p["to_step"] == summaries[-1].step]
        for p in last[-1:]:
            _pair_block(con, p)
    return buf.getvalue().rstrip() + "\n"


def _share(tensors: list, attr: str) -> str:
    """The share of all elements that ``attr`` (a per-tensor fraction) counts: the per-tensor fractions
    weighted by element count, exact, as each is a count over the tensor's elements. "?" when a tensor's
    value needs a hyperparameter the checkpoint does not store (as in the full table)."""
    if any(attr in (getattr(t, "unknown_inputs", None) or {}) for t in tensors):
        return "?"
    known = [(x, t.numel) for t in tensors if (x := getattr(t, attr)) is not None and math.isfinite(x)]
    total = sum(n for _, n in known)
    return _pct(sum(x * n for x, n in known) / total) if total else "-"


def _largest(tensors: list, attr: str) -> str:
    if any(attr in (getattr(t, "unknown_inputs", None) or {}) for t in tensors):
        return "?"
    known = [x for t in tensors if (x := getattr(t, attr)) is not None and math.isfinite(x)]
    return _fmt(max(known)) if known else "-"


def _pure_decay(p: dict | None) -> str:
    """The share of the pair's elements that only decayed (element-weighted ``frac_pure_decay``: exact,
    each is a count over the tensor's used elements)."""
    if p is None:
        return "-"
    rows = [(r["frac_pure_decay"], r.get("n_used") or 0) for r in p["tensors"]]
    rows = [(x, n) for x, n in rows if x is not None and math.isfinite(x) and n]
    total = sum(n for _, n in rows)
    return _pct(sum(x * n for x, n in rows) / total) if total else "-"


def _titled_table(con: Any, title: str, *, soft_wrap: bool = False) -> Any:
    """Print ``title`` (plain text, never markup), then return an empty table in the style every inspect table
    shares: a rule under the header, no borders."""
    from rich import box
    from rich.table import Table

    con.print(title, markup=False, soft_wrap=soft_wrap)
    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)


def _overview(con: Any, summaries: list, pairs: list[dict]) -> None:
    """One line per checkpoint (several of one run): what the full table would say of all its elements."""
    from rich.markup import escape

    from adamdiag.render.common import display_names

    names, prefix = display_names([str(s.path) for s in summaries])
    kinds = sorted({f"{s.optimizer} ({s.layout}, {s.convention} convention)" for s in summaries})
    tab = _titled_table(
        con,
        f"{len(summaries)} checkpoints{' under ' + prefix if prefix else ''}: {'; '.join(kinds)}; "
        "one line each, the last in full below (--all: every one)",
        soft_wrap=True,
    )
    for col in ("checkpoint", "step", "tensors", "√v̂ p01 min", "√v̂<eps", "√v̂<10eps", "v=0", "upd rms max"):
        tab.add_column(col, justify="left" if col == "checkpoint" else "right", no_wrap=True)
    for col in ("nonfinite", "pure decay since prev", "notes"):
        tab.add_column(col, justify="right", no_wrap=True)
    by_to = {(p["to_path"], p["to_step"]): p for p in pairs}
    for s, name in zip(summaries, names):
        ts = s.tensors
        p01 = [t.sqrt_vhat_q.get("p01") for t in ts if "sqrt_vhat_q" not in (t.unknown_inputs or {})]
        p01 = [x for x in p01 if x is not None and math.isfinite(x)]
        unknown_q = any("sqrt_vhat_q" in (t.unknown_inputs or {}) for t in ts)
        tab.add_row(
            escape(name),
            _fmt(s.step),
            str(len(ts)),
            "?" if unknown_q else (_fmt(min(p01)) if p01 else "-"),
            _share(ts, "frac_sqrt_vhat_below_eps"),
            _share(ts, "frac_sqrt_vhat_below_10eps"),
            _share(ts, "frac_v_zero"),
            _largest(ts, "update_rms"),
            str(sum(t.nonfinite for t in ts)),
            _pure_decay(by_to.get((str(s.path), s.step))),
            str(len(s.warnings)) if s.warnings else "-",
        )
    con.print(tab)
    con.print(
        "  √v̂ p01 min: the lowest tensor's; shares of all elements; pure decay: implied g² < 0.1·v̂ since the "
        "checkpoint before; notes: shown with --all",
        markup=False,
        soft_wrap=True,
    )
    con.print()


def _checkpoint_block(con: Any, s: Any) -> None:
    """One checkpoint in full: its header line, every tensor (most at risk first), its notes."""
    tab = _titled_table(
        con,
        f"{s.path}  step {_fmt(s.step)}  {s.optimizer} ({s.layout}, {s.convention} convention)  "
        f"names: {s.name_mapping}",
    )
    columns: list[tuple[str, Literal["left", "right"]]] = [
        ("tensor", "left"),
        ("grp/idx", "left"),
        ("shape", "left"),
        ("step", "right"),
        ("lr", "right"),
        ("β2", "right"),
        ("eps", "right"),
        ("wd", "right"),
        ("√v̂ p01", "right"),
        ("√v̂ p50", "right"),
        ("√v̂<eps", "right"),
        ("√v̂<10eps", "right"),
        ("v=0", "right"),
        ("upd rms", "right"),
        ("upd/param", "right"),
        ("upd max", "right"),
        ("nonfinite", "right"),
    ]
    # a short name is never folded (rich shrinks the one wrappable column first); a very long one folds
    # past NAME_FOLD_AT characters rather than pushing the numbers off the line
    name_width = min(NAME_FOLD_AT, max((len(t.label) for t in s.tensors), default=len("tensor")))
    for col, j in columns:
        tab.add_column(
            col, justify=j, no_wrap=col != "tensor", overflow="fold", min_width=name_width if col == "tensor" else None
        )
    # several optimizers in one file: state indices repeat, so the optimizer's index leads (o1:0/3)
    several = len({(t.optimizer or {}).get("index", 0) for t in s.tensors}) > 1
    for t in sorted(s.tensors, key=lambda t: t.risk_key):
        opt = f"o{(t.optimizer or {}).get('index', 0)}:" if several else ""
        # "?": a hyperparameter the checkpoint does not store (and nobody assumed), or a statistic
        # that needs one (unknown_inputs) — not "nan", which is what non-finite data gives
        src = getattr(t, "hyper_source", None) or {}
        missing = getattr(t, "unknown_inputs", None) or {}

        def hp(name: str, value: Any, spec: str = ".3g", src: dict = src) -> str:
            return "?" if src.get(name) == "unknown" else _fmt(value, spec)

        def st(name: str, text: str, missing: dict = missing) -> str:
            return "?" if name in missing else text

        # state keyed by name (torch.distributed's get_optimizer_state_dict, FSDP): the index *is* the
        # name in the first column, so only the group is shown (the table stays narrow enough for names)
        where = f"{opt}{t.group}" if str(t.index) == t.label else f"{opt}{t.group}/{t.index}"
        tab.add_row(
            t.label,
            where,
            "×".join(map(str, t.shape)) or "()",
            _fmt(t.step),
            hp("lr", t.lr),
            hp("beta2", t.beta2, ".4g"),
            hp("eps", t.eps),
            hp("weight_decay", t.weight_decay),
            st("sqrt_vhat_q", _fmt(t.sqrt_vhat_q["p01"])),
            st("sqrt_vhat_q", _fmt(t.sqrt_vhat_q["p50"])),
            st("frac_sqrt_vhat_below_eps", _pct(t.frac_sqrt_vhat_below_eps)),
            st("frac_sqrt_vhat_below_10eps", _pct(t.frac_sqrt_vhat_below_10eps)),
            _pct(t.frac_v_zero),
            st("update_rms", _fmt(t.update_rms)),
            st("update_rms_rel", _fmt(t.update_rms_rel)),
            st("update_max", _fmt(t.update_max)),
            str(t.nonfinite),
        )
    con.print(tab)
    for w in s.warnings:
        con.print(f"  note: {w}", markup=False)
    if any(t.frac_v_zero and t.frac_v_zero > 0 and t.dtype != "float16" for t in s.tensors):
        con.print(
            "  note: v=0: elements that never received a gradient (eps-dominated, but not a collapse)", markup=False
        )
    con.print()


def _pair_block(con: Any, p: dict) -> None:
    """The decay-ratio table of one consecutive pair."""
    tab = _titled_table(
        con,
        f"decay ratio v_b/(β2^Δ·v_a): step {p['from_step']} → {p['to_step']}  "
        f"(≈1: v decayed without new gradient; pure decay = implied g² < 0.1·v̂)",
    )
    for col in (
        "tensor",
        "grp/idx",
        "Δ",
        "ratio p01",
        "ratio p50",
        "ratio p99",
        "pure decay",
        "implied g²/v̂",
        "inconsistent",
    ):
        tab.add_column(col, justify="left" if col in ("tensor", "grp/idx") else "right")
    for r in sorted(p["tensors"], key=lambda r: -(r["frac_pure_decay"] if math.isfinite(r["frac_pure_decay"]) else 0)):
        tab.add_row(
            r["label"],
            f"{r['group']}/{r['index']}",
            str(r["delta_steps"]),
            _fmt(r["ratio_q"]["p01"], ".4g"),
            _fmt(r["ratio_q"]["p50"], ".4g"),
            _fmt(r["ratio_q"]["p99"], ".4g"),
            _pct(r["frac_pure_decay"]),
            _implied(r),
            _pct(r["frac_inconsistent"]),
        )
    con.print(tab)
    for s in p["skipped"]:
        con.print(f"  skipped {s['label']}: {s['reason']}", markup=False)
    for w in p["warnings"]:
        con.print(f"  note: {w}", markup=False)
    con.print()


CSV_COLUMNS = [
    "path",
    "checkpoint_step",
    "tensor",
    "name",
    "group",
    "index",
    "shape",
    "numel",
    "step",
    "lr",
    "beta1",
    "beta2",
    "eps",
    "eps_effective",
    "weight_decay",
    "amsgrad",
    "v_mean",
    "v_max",
    "m_abs_mean",
    "sqrt_vhat_min",
    "sqrt_vhat_p01",
    "sqrt_vhat_p50",
    "sqrt_vhat_p99",
    "sqrt_vhat_max",
    "frac_sqrt_vhat_below_eps",
    "frac_sqrt_vhat_below_10eps",
    "frac_v_zero",
    "update_rms",
    "update_max",
    "update_ratio_rms",
    "param_rms",
    "update_rms_rel",
    "nonfinite",
    "decay_from_step",
    "decay_ratio_p50",
    "frac_pure_decay",
    "r_interval",
    "r_interval_resolution",
]


def render_csv(summaries: list, pairs: list[dict]) -> str:
    by_to = {}
    for p in pairs:
        for r in p["tensors"]:
            # by label: (group, index) repeats across the optimizers of one file (a GAN's two Adams)
            by_to[(p["to_path"], r["label"])] = r
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)

    def num(x: Any) -> Any:
        return "" if x is None or (isinstance(x, float) and not math.isfinite(x)) else x

    for s in summaries:
        for t in sorted(s.tensors, key=lambda t: t.risk_key):
            pr = by_to.get((s.path, t.label))
            q = t.sqrt_vhat_q
            w.writerow(
                [
                    s.path,
                    num(s.step),
                    t.label,
                    t.name or "",
                    t.group,
                    t.index,
                    "x".join(map(str, t.shape)),
                    t.numel,
                    num(t.step),
                    num(t.lr),
                    num(t.beta1),
                    num(t.beta2),
                    num(t.eps),
                    num(t.eps_effective),
                    num(t.weight_decay),
                    t.amsgrad,
                    num(t.v_mean),
                    num(t.v_max),
                    num(t.m_abs_mean),
                    num(q["min"]),
                    num(q["p01"]),
                    num(q["p50"]),
                    num(q["p99"]),
                    num(q["max"]),
                    num(t.frac_sqrt_vhat_below_eps),
                    num(t.frac_sqrt_vhat_below_10eps),
                    num(t.frac_v_zero),
                    num(t.update_rms),
                    num(t.update_max),
                    num(t.update_ratio_rms),
                    num(t.param_rms),
                    num(t.update_rms_rel),
                    t.nonfinite,
                    num(pr["from_step"]) if pr else "",
                    num(pr["ratio_q"]["p50"]) if pr else "",
                    num(pr["frac_pure_decay"]) if pr else "",
                    num(pr["r_interval"]) if pr else "",
                    num(pr.get("r_interval_resolution")) if pr else "",
                ]
            )
    return buf.getvalue()
