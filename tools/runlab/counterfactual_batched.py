"""Counterfactual labels in one batched pass (issue #12, item 6) — an OPT-IN alternative to counterfactual.py.

:mod:`counterfactual` (the lab's labeller, and the one ``bench/accuracy.py`` caches) trains the unchanged
run and its four single-change variants (eps 1e-3, eps 1e-2, lr/3, lr/10) from the start checkpoint one
after the other. This module trains all five *together*, in one loop over the same batches: the
parameters of the five copies are stacked (``torch.func.stack_module_state``), the forward and backward run
once for all of them (a ``vmap`` of ``functional_call`` gives the copies' losses; one ``backward`` of their
sum gives each copy its own gradient, the copies being independent), and the Adam/AdamW step is
written out on the stacked tensors with a per-copy eps and learning-rate scale. A copy leaves the batch as
soon as its outcome is decided (a confirmed blowup or a non-finite loss), exactly where the sequential
labeller stops it. The records (``outcome``, ``blowup_step``, ``trained_to``, ``at_risk_evidence`` …) and
the label (:func:`counterfactual.decide_label`) are the sequential labeller's; the block carries
``"batched": true``.

Why it is opt-in, not the default labeller: a vmap'd matmul is a batched matmul, whose float32 rounding
differs from the unbatched one in the last bits (measured: gradients off by <= ~1e-8 on one step). The
optimizer step is bit-identical to torch's (tested), the gradients are not, and over hundreds of steps at
the edge of stability that difference moves blowups and, near a decision boundary, flips an outcome. In
particular the unchanged copy no longer reproduces the live blowup bit for bit: the sequential labeller does
on all 321 cached labelled runs (``reproduces_live_blowup``), the batched one on 8 of 12. The cached labels
of ``bench/accuracy.py`` are the sequential labeller's (its source is part of their cache key); this path is
for labelling many new runs faster, its labels read as the sequential ones' up to that noise.

Measured (``--compare`` on 12 cached blown-up runs: mlp, cnn, transformer; full and mini batch; adam,
adamw, clipping; β2 0.98-0.999; all three labels; 2-core machine shared with two other sessions, load
~1, ``nice -n 10``, 1 torch thread as the labeller sets): labels 12/12 the same (and equal to truth.json's
cached ones); outcomes 59/60 (one lr/3 ``blowup`` at step 608, 3 steps before the end of training, read
``at_risk`` — both count the same for the label); blowup steps exact in 51/60, the rest off by 1-6 steps
except on a lr-1 mini-batch transformer (lr/3: 594 → 231, lr/10: 833 → 775) and the unchanged copy of an
AdamW transformer (698 → 874), chaotic runs where any perturbation moves the blowup. Wall time of the
variant training (prefix re-training excluded, it is the same code in both): 41.9 s batched vs 69.9 s
sequential, ×1.67 summed, ×1.14-×2.49 per run (median ×1.9). The forward/backward FLOPs are the same on a
single CPU thread; the gain is Python and dispatch overhead, so it is largest on small models.

    python tools/runlab/counterfactual_batched.py RUN_DIR [RUN_DIR ...]              # print the labels
    python tools/runlab/counterfactual_batched.py --compare RUN_DIR [RUN_DIR ...]    # + sequential, timed

Like the sequential labeller it never imports adamdiag, and it writes nothing into the run directory.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

if str(Path(__file__).resolve().parent) not in sys.path:  # runnable as a script and loadable by file path
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import counterfactual as cf  # noqa: E402
import runlab  # noqa: E402
from runlab import RunConfig  # noqa: E402

SCHEMA = "runlab.counterfactual_batched/1"


class _LossOf(nn.Module):
    """The run's total loss as a module, so ``functional_call`` can swap in one copy's parameters.

    The families' ``head_losses(model, batch)`` call the model themselves; wrapping model + loss in one
    module lets the parameters be substituted without touching the family code."""

    def __init__(self, cfg: RunConfig, model: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = model

    def forward(self, batch: Any) -> torch.Tensor:
        return runlab.total_loss(self.cfg, self.model, batch)


class _Copy:
    """Bookkeeping of one copy (variant) while it trains: its losses, probes and blowup check state."""

    def __init__(self, name: str, eps: float, lr_scale: float, prefix: list[float]) -> None:
        self.name, self.eps, self.lr_scale = name, eps, lr_scale
        self.losses = list(prefix)
        self.rs: list[float] = []
        self.meds: list[float] = []
        self.checked_to = 0
        self.blowup: int | None = None
        self.t = 0
        self.done = False


class _Stack:
    """The stacked parameters and Adam state of the copies still training (leading dim = copy)."""

    def __init__(
        self, cfg: RunConfig, data: Any, state: tuple[dict[str, torch.Tensor], dict[str, Any] | None], n: int
    ) -> None:
        self.cfg, self.data = cfg, data
        base = runlab.build_model(cfg)
        base.load_state_dict(state[0])
        self.names = [k for k, _ in base.named_parameters()]
        models = [base] * n  # the same weights n times; stack_module_state copies them into new tensors
        params, _ = stack_module_state(models)  # type: ignore[arg-type]
        # leaves that autograd fills with each copy's gradient; updated in place under no_grad like torch's
        self.p = {k: params[k].detach().clone().requires_grad_(True) for k in self.names}
        ost = state[1]
        if ost is not None:
            # torch's state_dict numbers the parameters in model.parameters() order (one group)
            ids = ost["param_groups"][0]["params"]
            per = [ost["state"][i] for i in ids]
            self.m = {k: per[j]["exp_avg"].unsqueeze(0).repeat_interleave(n, 0) for j, k in enumerate(self.names)}
            self.v = {k: per[j]["exp_avg_sq"].unsqueeze(0).repeat_interleave(n, 0) for j, k in enumerate(self.names)}
        else:  # start 0: torch's Adam makes zero moments at its first step
            self.m = {k: torch.zeros_like(t) for k, t in self.p.items()}
            self.v = {k: torch.zeros_like(t) for k, t in self.p.items()}
        self.has_state = ost is not None
        loss_mod = _LossOf(cfg, base)

        def loss_fn(params: dict[str, torch.Tensor], batch: Any) -> torch.Tensor:
            return functional_call(loss_mod, {f"model.{k}": t for k, t in params.items()}, (batch,))

        # Autograd through the vmap'd forward, not vmap(grad(...)): the same gradients to the last bits (measured:
        # both differ from the unbatched ones by <= 1e-8) and 15-35% faster per step on the lab's models.
        self.loss_fn = vmap(loss_fn, in_dims=(0, None))

    def keep(self, idx: list[int]) -> None:
        """Drop the copies not in ``idx`` (their outcome is decided)."""
        sel = torch.tensor(idx)
        with torch.no_grad():
            for d in (self.p, self.m, self.v):
                for k in self.names:
                    d[k] = d[k].index_select(0, sel)
        for k in self.names:
            self.p[k].requires_grad_(True)

    def _bcast(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x.to(like.dtype).reshape((-1,) + (1,) * (like.dim() - 1))

    def step(self, t: int, copies: list[_Copy], probe: bool) -> list[tuple[float, float, float]]:
        """Update t for every stacked copy, as torch.optim.Adam/AdamW (single-tensor CPU path) would.

        Returns per copy (loss before the update, global r, median √v̂ after) — r and √v̂ NaN unless probe;
        the same numbers as counterfactual._Branch.step."""
        for k in self.names:
            self.p[k].grad = None
        loss = self.loss_fn(self.p, runlab.batch_for_step(self.cfg, t, self.data))
        loss.sum().backward()
        grads = {k: self.p[k].grad for k in self.names}
        return self.apply(t, copies, grads, loss.detach(), probe)  # type: ignore[arg-type]

    def apply(
        self, t: int, copies: list[_Copy], grads: dict[str, torch.Tensor], loss: torch.Tensor, probe: bool
    ) -> list[tuple[float, float, float]]:
        """The rest of update t, given the stacked gradients and losses: clipping, probes, the Adam step."""
        cfg = self.cfg
        b1, b2 = cfg.betas
        wd = cfg.weight_decay
        n = len(copies)
        if cfg.clip_grad_norm is not None:
            # torch.nn.utils.clip_grad_norm_, per copy: norm of the per-tensor norms, coef clamped to 1
            for i in range(n):
                norms = torch._foreach_norm([grads[k][i] for k in self.names], 2.0)
                total = torch.linalg.vector_norm(torch.stack(norms), 2.0)
                coef = (cfg.clip_grad_norm / (total + 1e-6)).clamp(max=1.0)
                for k in self.names:
                    grads[k][i].mul_(coef)
        lvals = [float(x) for x in loss.detach()]
        rs = [float("nan")] * n
        meds = [float("nan")] * n
        if probe and self.has_state and t > 1:
            with torch.no_grad():
                for i in range(n):
                    g = torch.cat([grads[k][i].reshape(-1) for k in self.names]).double()
                    if cfg.optimizer == "adam" and wd:
                        g = g + wd * torch.cat([self.p[k][i].reshape(-1) for k in self.names]).double()
                    v = torch.cat([self.v[k][i].reshape(-1) for k in self.names]).double()
                    vsum = float(v.sum()) / (1.0 - b2 ** (t - 1))
                    rs[i] = float((g * g).sum()) / vsum if vsum > 0 else float("nan")
        lr = [runlab.lr_at(cfg, t) * c.lr_scale for c in copies]
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        # python floats exactly as torch computes them, then one value per copy (cast to the param dtype
        # inside the op either way)
        step_size = torch.tensor([-(x / bc1) for x in lr], dtype=torch.float64)
        eps = torch.tensor([c.eps for c in copies], dtype=torch.float64)
        decay = torch.tensor([1 - x * wd for x in lr], dtype=torch.float64)
        bc2_sqrt = bc2**0.5
        with torch.no_grad():
            for k in self.names:
                p, g, m, v = self.p[k], grads[k], self.m[k], self.v[k]
                if wd:
                    if cfg.optimizer == "adamw":
                        p.mul_(self._bcast(decay, p))
                    else:
                        g = g.add(p, alpha=wd)
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v.sqrt() / bc2_sqrt).add_(self._bcast(eps, p))
                # torch's addcdiv_(m, denom, value=-step_size) computes p + (value·m)/denom on CPU: the same
                # three roundings in the same order (value·(m/denom) differs in the last bit)
                p.add_((m * self._bcast(step_size, p)).div_(denom))
        self.has_state = True
        if probe:
            with torch.no_grad():
                for i in range(n):
                    v = torch.cat([self.v[k][i].reshape(-1) for k in self.names]).double()
                    meds[i] = float((v / (1.0 - b2**t)).sqrt().median())
        return list(zip(lvals, rs, meds, strict=True))


def run_variants_batched(
    cfg: RunConfig,
    data: Any,
    prefix: list[float],
    state: tuple[dict[str, torch.Tensor], dict[str, Any] | None],
    start: int,
    end: int,
    changes: dict[str, tuple[float, float]],
) -> dict[str, dict[str, Any]]:
    """Train every ``name: (eps, lr_scale)`` copy from ``start`` to ``end`` together; per copy the record
    :func:`counterfactual.run_variant` returns (a copy stops once its blowup is confirmed or its loss is
    non-finite, checked at the same steps as the sequential labeller)."""
    copies = [_Copy(name, eps, s, prefix) for name, (eps, s) in changes.items()]
    stack = _Stack(cfg, data, state, len(copies))
    window = cf.at_risk_window(cfg.betas[1])
    active = list(copies)
    t = start
    while t < end and active:
        t += 1
        probe = t > end - window
        rows = stack.step(t, active, probe)
        decided: set[int] = set()
        for i, (c, (lval, r, med)) in enumerate(zip(active, rows, strict=True)):
            c.t = t
            c.losses.append(lval)
            if probe:
                c.rs.append(r)
                c.meds.append(med)
            if not math.isfinite(lval):
                c.losses += [float("nan")] * runlab.BLOWUP_HORIZON
                c.blowup = runlab.detect_blowup(c.losses, start=max(c.checked_to - 1, 0))
                c.done = True
                decided.add(i)
            elif (t - start) % cf.CHECK_EVERY == 0:
                c.blowup, c.checked_to = cf._confirmed(c.losses, c.checked_to)
                if c.blowup is not None:
                    c.done = True
                    decided.add(i)
        if decided:
            keep = [i for i in range(len(active)) if i not in decided]
            active = [active[i] for i in keep]
            if active:
                stack.keep(keep)
    out: dict[str, dict[str, Any]] = {}
    for c in copies:
        if not c.done:
            c.blowup = runlab.detect_blowup(c.losses, start=max(c.checked_to - 1, 0))
        rec: dict[str, Any] = {
            "eps": c.eps,
            "lr_scale": c.lr_scale,
            "trained_to": c.t,
            "blowup_step": c.blowup,
            "final_loss": c.losses[min(c.t, len(c.losses)) - 1] if c.losses else None,
            "min_loss_after_start": float(np.nanmin(c.losses[start : c.t])) if c.t > start else None,
        }
        if c.blowup is not None:
            rec["outcome"] = "blowup"
        else:
            risky, ev = cf.judge_at_risk(np.array(c.rs), np.array(c.meds), c.eps)
            rec["outcome"] = "at_risk" if risky else "avoided"
            rec["at_risk_evidence"] = ev
        out[c.name] = rec
    return out


@dataclass
class _Start:
    """What both labellers train from: the run's data, the start and end steps, and the re-trained prefix."""

    data: Any
    start: int
    virtual: bool
    end: int
    prefix: Any
    mstate: Any
    state: tuple[Any, Any]


@contextmanager
def _lab_start(cfg: RunConfig, blowup: int) -> Iterator[_Start]:
    """counterfactual.label_run's set-up (one deterministic torch thread, restored afterwards; the data, the
    start and end steps, the prefix re-trained to the start), the same calls in the same order."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        data = runlab.build_data(cfg)
        start, virtual = cf.start_step(cfg, blowup)
        end = cf.train_end(blowup, start, cfg.betas[1])
        prefix, mstate, ostate = cf._retrain_prefix(cfg, data, start)
        yield _Start(data, start, virtual, end, prefix, mstate, (mstate, ostate if start > 0 else None))
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)


def label_run_batched(run_dir: Path, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The counterfactual block of :func:`counterfactual.label_run`, with the five copies (the unchanged
    run and the four variants) trained in one batched pass. Not written anywhere."""
    run_dir = Path(run_dir)
    cfg = runlab.load_config(run_dir)
    truth = json.loads((run_dir / "truth.json").read_text())
    s = truth["summary"]
    blowup = s["blowup_step"]
    if blowup is None:
        return {"schema": SCHEMA, "label": None, "skipped": "no blowup"}
    if s["cause"] in ("bad_batch", "nonfinite"):
        return {"schema": SCHEMA, "label": None, "skipped": f"injected failure ({s['cause']})"}
    t0 = time.perf_counter()
    with _lab_start(cfg, blowup) as st:
        start, virtual, end, mstate, state = st.start, st.virtual, st.end, st.mstate, st.state
        t1 = time.perf_counter()
        changes = {cf.ORIGINAL: (cfg.eps, 1.0)}
        changes.update({k: (c.get("eps", cfg.eps), c.get("lr_scale", 1.0)) for k, c in cf.VARIANTS.items()})
        recs = run_variants_batched(cfg, st.data, st.prefix, state, start, end, changes)
        t2 = time.perf_counter()
    orig = recs.pop(cf.ORIGINAL)
    if log:
        for name, v in recs.items():
            log(f"    {run_dir.name} {name}: {v['outcome']} (blowup {v['blowup_step']}, to {v['trained_to']})")
    return {
        "schema": SCHEMA,
        "batched": True,
        "label": cf.decide_label({k: v["outcome"] for k, v in recs.items()}),
        "start_step": start,
        "virtual_checkpoint": virtual,
        "horizon_end_step": cf.horizon_end(blowup, start, cfg.betas[1]),
        "trained_to_step": end,
        "live_blowup_step": blowup,
        "at_risk_window_steps": cf.at_risk_window(cfg.betas[1]),
        "start_matches_checkpoint": cf._matches_checkpoint(run_dir, start, mstate),
        "start_state": cf._start_sqrt_vhat(cfg, start, state[1]),
        "original": {k: orig[k] for k in ("outcome", "blowup_step", "trained_to")},
        "reproduces_live_blowup": orig["blowup_step"] == blowup,
        "variants": recs,
        "seconds": t2 - t0,
        "seconds_variants": t2 - t1,
    }


def _sequential_timed(run_dir: Path) -> dict[str, Any]:
    """counterfactual.label_run's work with the prefix and the variant training timed apart (the same calls
    it makes, so the comparison is of the variant training alone)."""
    cfg = runlab.load_config(run_dir)
    blowup = json.loads((run_dir / "truth.json").read_text())["summary"]["blowup_step"]
    with _lab_start(cfg, blowup) as st:
        t1 = time.perf_counter()
        args = (cfg, st.data, st.prefix, st.state, st.start, st.end)
        orig = cf.run_variant(*args, cfg.eps, 1.0)
        variants = {
            k: cf.run_variant(*args, c.get("eps", cfg.eps), c.get("lr_scale", 1.0)) for k, c in cf.VARIANTS.items()
        }
        t2 = time.perf_counter()
    return {
        "label": cf.decide_label({k: v["outcome"] for k, v in variants.items()}),
        "original": orig,
        "variants": variants,
        "seconds_variants": t2 - t1,
    }


_SHORT = {"blowup": "b", "at_risk": "R", "avoided": "a"}


def _steps(block: dict[str, Any]) -> str:
    """``orig:b55 eps1e-3:b58 … lr/10:a``: b = blowup at that step, R = at_risk, a = avoided (orig: the unchanged
    copy, which should blow up at the live blowup step)."""
    rows = {"orig": block["original"], **block["variants"]}
    return " ".join(f"{k}:{_SHORT[v['outcome']]}{v['blowup_step'] or ''}" for k, v in rows.items())


def main(argv: list[str] | None = None) -> int:
    """CLI: print the batched label of each run; ``--compare`` also runs the sequential labeller, timed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--compare", action="store_true", help="also train the variants sequentially and compare")
    ap.add_argument("--json", type=Path, help="write the per-run results here")
    args = ap.parse_args(argv)
    results = []
    for d in args.runs:
        if not (d / "config.json").is_file() or not (d / "truth.json").is_file():
            print(f"error: {d} is not a runlab run (no config.json/truth.json)", file=sys.stderr)
            return 2
        try:
            b = label_run_batched(d)
        except (KeyError, ValueError, TypeError) as e:  # unknown family, malformed config/truth
            print(f"error: {d}: cannot label this run: {e}", file=sys.stderr)
            return 2
        row: dict[str, Any] = {"run": d.name, "batched": b}
        if b["label"] is None:
            print(f"{d.name}: skipped ({b['skipped']})")
            results.append(row)
            continue
        line = f"{d.name}: {b['label']} [{_steps(b)}] variants {b['seconds_variants']:.1f}s"
        stored = (json.loads((d / "truth.json").read_text()).get("counterfactual") or {}).get("label")
        row["stored_label"] = stored
        if args.compare:
            sq = _sequential_timed(d)
            row["sequential"] = sq
            same = sq["label"] == b["label"]
            line += (
                f" | sequential {sq['label']} [{_steps(sq)}] {sq['seconds_variants']:.1f}s"
                f" | {'same' if same else 'DIFFERENT'} label, x{sq['seconds_variants'] / b['seconds_variants']:.2f}"
            )
        if stored is not None and stored != b["label"]:
            line += f" | truth.json's cached label: {stored}"
        print(line, flush=True)
        results.append(row)
    if args.json:
        args.json.write_text(json.dumps(cf.json_nulls(results), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
