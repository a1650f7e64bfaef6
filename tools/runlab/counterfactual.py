"""Counterfactual cause labels (issue #12, item 6): what *would* have fixed a blown-up run, by experiment.

The live-state label (``truth.json`` ``summary.cause``) reads the optimizer state of the run as it went; this
module asks the run itself instead. From the last checkpoint before the blowup it trains the run on with one
change at a time — eps 1e-3, eps 1e-2, lr/3, lr/10 — on exactly the original batches (``batch_for_step``),
well past the blowup, and records what each change did:

* ``blowup``: :func:`runlab.detect_blowup` (the lab's own rule) finds a blowup in the variant's loss
  (the original run's losses before the start step included, so its trailing window is the run's own);
* ``at_risk``: no blowup within the horizon, but over the last max(50, 0.2/(1-β2)) steps the live global
  r = mean g²/mean v̂_prev is below runlab.R_QUIET (v is still stale), the median √v̂ is above 10·eps (eps
  does not bound the step yet) and still falling — a postponement in progress, not a fix;
* ``avoided``: neither.

Label: ``v_collapse`` when an eps variant avoids the blowup and lr/3 blows up or is at risk; ``lr_too_high``
when lr/3 or lr/10 avoids it and no eps variant does; otherwise ``ambiguous`` (both kinds of fix work, or
none does). The horizon runs to the blowup + 1/(1-β2) steps (v's memory) and at least twice the
checkpoint→blowup gap past the start: a shorter one cannot tell a fix from a postponement. Each variant is
trained 100 steps (the blowup rule's look-ahead) past the horizon, so that an onset inside it is confirmed
or refuted, and at_risk is judged on the last steps trained.

The labeller never calls adamdiag. It re-trains the run from scratch to the start step (the lab is
deterministic, so this is the run's own trajectory, checked bit for bit against the checkpoint when one
exists) to get every step's loss for the blowup rule, then trains the variants one after the other, each
stopped as soon as its outcome is decided (a confirmed blowup or a non-finite loss).

    python tools/runlab/counterfactual.py RUN_DIR [RUN_DIR ...]     # label and write into truth.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

if str(Path(__file__).resolve().parent) not in sys.path:  # runnable as a script and loadable by file path
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import runlab  # noqa: E402
from runlab import RunConfig  # noqa: E402

SCHEMA = "runlab.counterfactual/1"

# The single changes tried, in this order: the two eps fixes a v-collapse diagnosis proposes, and the two
# learning-rate cuts an lr-too-high diagnosis proposes (scaling the whole schedule, warm-up included).
VARIANTS: dict[str, dict[str, float]] = {
    "eps1e-3": {"eps": 1e-3},
    "eps1e-2": {"eps": 1e-2},
    "lr/3": {"lr_scale": 1 / 3},
    "lr/10": {"lr_scale": 1 / 10},
}
EPS_VARIANTS = ("eps1e-3", "eps1e-2")
LR_VARIANTS = ("lr/3", "lr/10")
# The run as it was, from the same start: reproduces the logged blowup (a fidelity check, not a fix).
ORIGINAL = "original"

# at_risk (issue #12 item 3's default rule): the window is a fifth of v's memory, at least 50 steps, so a
# 0.99 run is judged on its last 50 steps and a 0.999 run on its last 200.
AT_RISK_MIN_WINDOW = 50
AT_RISK_MEMORY_FRACTION = 0.2
# √v̂ above this many eps: eps does not bound the per-element step yet, so a falling √v̂ still grows it.
AT_RISK_EPS_MARGIN = 10.0
# Horizon: past the blowup by one memory length of v (1/(1-β2)), and at least this many times the
# checkpoint→blowup gap past the start (a change that only delays the blowup by the gap is caught).
HORIZON_GAP_FACTOR = 2
# Runs without checkpoints: the labeller starts from the step a 200-step checkpoint cadence (runlab's
# default) would have saved last, re-trained from scratch; flagged as ``virtual_checkpoint``.
VIRTUAL_CKPT_EVERY = 200
# How often (steps) a running variant is checked for a confirmed blowup, so it can stop early.
CHECK_EVERY = 50


def one_memory(beta2: float) -> int:
    """1/(1-β2) steps: how long v remembers."""
    return int(math.ceil(1.0 / (1.0 - beta2)))


def at_risk_window(beta2: float) -> int:
    """Steps at the end of the horizon over which at_risk is judged: max(50, 0.2/(1-β2))."""
    return max(AT_RISK_MIN_WINDOW, int(math.ceil(AT_RISK_MEMORY_FRACTION / (1.0 - beta2))))


def start_step(cfg: RunConfig, blowup: int) -> tuple[int, bool]:
    """(last checkpoint step before the blowup, whether that checkpoint is virtual).

    A checkpoint "at s" holds the state after s updates; s < blowup, as adamdiag's replay requires.
    Restarted runs save on the same cadence in both segments, so the rule is the same.
    """
    every = cfg.ckpt_every or VIRTUAL_CKPT_EVERY
    return ((blowup - 1) // every) * every, not cfg.ckpt_every


def horizon_end(blowup: int, start: int, beta2: float) -> int:
    """End of the horizon: blowup + 1/(1-β2), and at least start + 2×(blowup − start)."""
    return max(blowup + one_memory(beta2), start + HORIZON_GAP_FACTOR * (blowup - start))


def train_end(blowup: int, start: int, beta2: float) -> int:
    """Last step a variant is trained to: the horizon plus the blowup rule's look-ahead.

    runlab.detect_blowup confirms an onset only once the loss has reached 10x within BLOWUP_HORIZON steps
    after it; a variant stopped right at the horizon would have any blowup starting in its last 100 steps
    unconfirmed, and read ``avoided``. (Measured: with β2 0.98 the horizon is only 50 steps past the
    blowup, and the *unchanged* run did not reproduce its own blowup without the look-ahead.)
    """
    return horizon_end(blowup, start, beta2) + runlab.BLOWUP_HORIZON


def decide_label(outcomes: dict[str, str]) -> str:
    """The label from the variants' outcomes (see the module docstring)."""
    eps_fix = any(outcomes[v] == "avoided" for v in EPS_VARIANTS)
    lr_fix = any(outcomes[v] == "avoided" for v in LR_VARIANTS)
    if eps_fix and outcomes["lr/3"] in ("blowup", "at_risk"):
        return "v_collapse"
    if lr_fix and not eps_fix:
        return "lr_too_high"
    return "ambiguous"


def judge_at_risk(r: np.ndarray, median_sqrt_vhat: np.ndarray, eps: float) -> tuple[bool, dict[str, Any]]:
    """at_risk over the final window: median r < R_QUIET, final median √v̂ > 10·eps and below its value at
    the window's start (still falling). Returns the decision and the numbers it used."""
    r_med = float(np.nanmedian(r)) if np.isfinite(r).any() else float("nan")
    s0, s1 = float(median_sqrt_vhat[0]), float(median_sqrt_vhat[-1])
    ev = {
        "window_steps": len(r),
        "median_r": r_med,
        "median_sqrt_vhat_end": s1,
        "median_sqrt_vhat_end_over_eps": s1 / eps,
        "median_sqrt_vhat_change": s1 / s0 if s0 > 0 else float("nan"),
    }
    risky = r_med < runlab.R_QUIET and s1 > AT_RISK_EPS_MARGIN * eps and s1 < s0
    return bool(risky), ev


# ----------------------------------------------------------------------------------------------------------
# training (the same update as runlab._train, without its probes and logging)


def _flat(opt: torch.optim.Optimizer, params: list[nn.Parameter], key: str) -> torch.Tensor | None:
    parts = []
    for p in params:
        st = opt.state.get(p)
        if not st or key not in st:
            return None
        parts.append(st[key].reshape(-1))
    return torch.cat(parts).double()


class _Branch:
    """One model + optimizer trained step by step with runlab's update rule, lr scaled and eps overridden."""

    def __init__(
        self,
        cfg: RunConfig,
        data: Any,
        model_state: dict[str, torch.Tensor] | None,
        opt_state: dict[str, Any] | None,
        eps: float,
        lr_scale: float,
    ) -> None:
        self.cfg, self.data, self.eps, self.lr_scale = cfg, data, eps, lr_scale
        self.fam = runlab.get_family(cfg.family)
        self.model = runlab.build_model(cfg)
        if model_state is not None:
            self.model.load_state_dict(model_state)
        self.opt = runlab.build_optimizer(cfg, self.model)
        if opt_state is not None:
            # Optimizer.load_state_dict keeps the given tensors when dtype and device already match, so
            # without a copy every variant would update the *same* moment tensors in place.
            self.opt.load_state_dict(copy.deepcopy(opt_state))
        for grp in self.opt.param_groups:  # load_state_dict restores the saved eps: override it after
            grp["eps"] = eps
        self.params = list(self.model.parameters())

    def step(self, t: int, probe: bool) -> tuple[float, float, float]:
        """Update t. Returns (loss before the update, global r, median √v̂ after) — r and √v̂ NaN unless probe."""
        cfg, b2 = self.cfg, self.cfg.betas[1]
        for grp in self.opt.param_groups:
            grp["lr"] = runlab.lr_at(cfg, t) * self.lr_scale
        batch = runlab.batch_for_step(cfg, t, self.data)
        self.opt.zero_grad(set_to_none=True)
        loss = runlab.total_loss(cfg, self.model, batch)
        loss.backward()
        if cfg.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_grad_norm)
        lval = float(loss.detach())
        r = med = float("nan")
        if probe:
            with torch.no_grad():
                g = torch.cat([p.grad.reshape(-1) for p in self.params]).double()
                if cfg.optimizer == "adam" and cfg.weight_decay:  # L2 inside the gradient Adam sees
                    g = g + cfg.weight_decay * torch.cat([p.reshape(-1) for p in self.params]).double()
                v = _flat(self.opt, self.params, "exp_avg_sq")
                if v is not None and t > 1:
                    vsum = float(v.sum()) / (1.0 - b2 ** (t - 1))
                    r = float((g * g).sum()) / vsum if vsum > 0 else float("nan")
        self.opt.step()
        if probe:
            with torch.no_grad():
                v = _flat(self.opt, self.params, "exp_avg_sq")
                med = float((v / (1.0 - b2**t)).sqrt().median())
        return lval, r, med


def _confirmed(losses: list[float], checked_to: int) -> tuple[int | None, int]:
    """A blowup that no later step can change, and the new ``checked_to``.

    :func:`runlab.detect_blowup` scans onsets in order and looks BLOWUP_HORIZON steps ahead, so an onset
    whose look-ahead is complete is final. Onsets before ``checked_to`` were all final and not blowups.
    """
    n = len(losses)
    b = runlab.detect_blowup(losses, start=max(checked_to - 1, 0))
    if b is not None and b - 1 + runlab.BLOWUP_HORIZON <= n:
        return b, n
    return None, max(checked_to, n - runlab.BLOWUP_HORIZON)


def run_variant(
    cfg: RunConfig,
    data: Any,
    prefix: list[float],
    state: tuple[dict[str, torch.Tensor], dict[str, Any] | None],
    start: int,
    end: int,
    eps: float,
    lr_scale: float,
    stop_at_blowup: bool = True,
) -> dict[str, Any]:
    """Train from ``start`` to ``end`` (or until a blowup is confirmed); the variant's outcome and numbers."""
    br = _Branch(cfg, data, state[0], state[1], eps, lr_scale)
    window = at_risk_window(cfg.betas[1])
    losses = list(prefix)
    rs, meds = [], []
    checked_to = 0
    blowup = None
    t = start
    while t < end:
        t += 1
        probe = t > end - window
        lval, r, med = br.step(t, probe)
        losses.append(lval)
        if probe:
            rs.append(r)
            meds.append(med)
        if not math.isfinite(lval):
            # Training on past a NaN/Inf stays non-finite: pad one look-ahead so the rule sees what it would.
            losses += [float("nan")] * runlab.BLOWUP_HORIZON
            blowup = runlab.detect_blowup(losses, start=max(checked_to - 1, 0))
            break
        if stop_at_blowup and (t - start) % CHECK_EVERY == 0:
            blowup, checked_to = _confirmed(losses, checked_to)
            if blowup is not None:
                break
    if blowup is None and t >= end:
        blowup = runlab.detect_blowup(losses, start=max(checked_to - 1, 0))
    out: dict[str, Any] = {
        "eps": eps,
        "lr_scale": lr_scale,
        "trained_to": t,
        "blowup_step": blowup,
        "final_loss": losses[min(t, len(losses)) - 1] if losses else None,
        "min_loss_after_start": float(np.nanmin(losses[start:t])) if t > start else None,
    }
    if blowup is not None:
        out["outcome"] = "blowup"
        return out
    risky, ev = judge_at_risk(np.array(rs), np.array(meds), eps)
    out["outcome"] = "at_risk" if risky else "avoided"
    out["at_risk_evidence"] = ev
    return out


def _retrain_prefix(cfg: RunConfig, data: Any, start: int) -> tuple[list[float], dict[str, Any], dict[str, Any]]:
    """Train from scratch to ``start``: every step's loss, and the model and optimizer state there."""
    br = _Branch(cfg, data, None, None, cfg.eps, 1.0)
    losses = [br.step(t, probe=False)[0] for t in range(1, start + 1)]
    return losses, br.model.state_dict(), br.opt.state_dict()


def _start_sqrt_vhat(cfg: RunConfig, start: int, opt_state: dict[str, Any] | None) -> dict[str, Any]:
    """√v̂ at the start step, and for each eps variant the fraction of elements it dominates (√v̂ < eps).

    Context for reading a label, not part of it: where eps exceeds √v̂ almost everywhere, the eps variant
    is close to an lr cut (the step becomes lr·m̂/eps), so "eps avoided it" is then weak evidence of a
    stale v rather than of a too-large lr."""
    if opt_state is None or start < 1:
        return {}
    v = torch.cat([st["exp_avg_sq"].reshape(-1) for st in opt_state["state"].values()]).double()
    s = (v / (1.0 - cfg.betas[1] ** start)).sqrt()
    out: dict[str, Any] = {"median_sqrt_vhat": float(s.median())}
    for name, change in VARIANTS.items():
        if "eps" in change:
            out[f"frac_below_{name}"] = float((s < change["eps"]).double().mean())
    return out


def _matches_checkpoint(run_dir: Path, start: int, model_state: dict[str, torch.Tensor]) -> bool | None:
    """Whether the re-trained weights equal the run's checkpoint at ``start`` bit for bit (None: no file)."""
    path = runlab.checkpoint_path(run_dir, start)
    if not path.is_file():
        return None
    ck = torch.load(path, weights_only=True)
    return all(torch.equal(ck["model"][k], v) for k, v in model_state.items())


def label_run(run_dir: Path, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The counterfactual block for one run (not written; see :func:`write_label`).

    Runs without a blowup, and runs whose live label is an injected failure (bad_batch, nonfinite — their
    cause is the data, known by construction), get ``label: None`` and a ``skipped`` reason.
    """
    run_dir = Path(run_dir)
    cfg = runlab.load_config(run_dir)
    truth = json.loads((run_dir / "truth.json").read_text())
    s = truth["summary"]
    blowup = s["blowup_step"]
    if blowup is None:
        return {"schema": SCHEMA, "label": None, "skipped": "no blowup"}
    if s["cause"] in ("bad_batch", "nonfinite"):
        return {"schema": SCHEMA, "label": None, "skipped": f"injected failure ({s['cause']})"}
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        data = runlab.build_data(cfg)
        start, virtual = start_step(cfg, blowup)
        end = train_end(blowup, start, cfg.betas[1])
        prefix, mstate, ostate = _retrain_prefix(cfg, data, start)
        state = (mstate, ostate if start > 0 else None)
        variants: dict[str, dict[str, Any]] = {}
        orig = run_variant(cfg, data, prefix, state, start, end, cfg.eps, 1.0)
        for name, change in VARIANTS.items():
            variants[name] = run_variant(
                cfg, data, prefix, state, start, end, change.get("eps", cfg.eps), change.get("lr_scale", 1.0)
            )
            if log:
                v = variants[name]
                log(f"    {run_dir.name} {name}: {v['outcome']} (blowup {v['blowup_step']}, to {v['trained_to']})")
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)
    label = decide_label({k: v["outcome"] for k, v in variants.items()})
    return {
        "schema": SCHEMA,
        "label": label,
        "start_step": start,
        "virtual_checkpoint": virtual,
        "horizon_end_step": horizon_end(blowup, start, cfg.betas[1]),
        "trained_to_step": end,
        "live_blowup_step": blowup,
        "at_risk_window_steps": at_risk_window(cfg.betas[1]),
        # fidelity: the re-trained start state is the run's checkpoint, and the unchanged run blows up
        # where the live run did (both must hold for the variants to be counterfactuals of *this* run)
        "start_matches_checkpoint": _matches_checkpoint(run_dir, start, mstate),
        "start_state": _start_sqrt_vhat(cfg, start, state[1]),
        "original": {k: orig[k] for k in ("outcome", "blowup_step", "trained_to")},
        "reproduces_live_blowup": orig["blowup_step"] == blowup,
        "variants": variants,
        "seconds": time.perf_counter() - t0,
    }


def write_label(run_dir: Path, key: str | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Label ``run_dir`` and store the block as ``truth.json`` ``counterfactual`` (``key``: the cache key
    under which it was computed; the live-state ``summary.cause`` is kept as it is)."""
    cf = label_run(run_dir, log=log)
    cf["key"] = key
    path = Path(run_dir) / "truth.json"
    truth = json.loads(path.read_text())
    truth["counterfactual"] = json_nulls(cf)
    path.write_text(json.dumps(truth, indent=1, allow_nan=False) + "\n")
    return truth["counterfactual"]


def json_nulls(x: Any) -> Any:
    """NaN/Inf → None, recursively, numpy scalars as Python numbers: a label or truth file is strict JSON
    (the lab's labellers, tools/ood/oodlab.py included, write through this one)."""
    if isinstance(x, np.floating | np.integer):
        return json_nulls(x.item())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_nulls(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_nulls(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> int:
    """CLI: label the given run directories in place."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args(argv)
    for d in args.runs:
        cf = write_label(d, log=lambda m: print(m, file=sys.stderr))
        print(f"{d.name}: {cf['label']} {cf.get('skipped', '')} ({cf.get('seconds', 0):.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
