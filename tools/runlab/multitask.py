"""The network from the original bug report, and the generator of sample_logs/.

A small shared MLP trunk with four heads: one probability head (cross-entropy against soft targets) and
three regression heads (L2). The total loss is the sum. Targets come from a fixed random *teacher* network
of the same shape, so the student can fit every head (almost) exactly: the losses keep falling, gradients
shrink for a long time, g² ≪ v̂ and √v̂ decays — the v-collapse regime — and with eps=1e-8 the effective
per-element step lr/(√v̂+eps) keeps growing until the run goes unstable. The same run with eps=1e-3 stays
stable (eps caps the step once √v̂ falls under it).

    python tools/runlab/multitask.py --out sample_logs          # all sample runs (make sample-logs)
    python tools/runlab/multitask.py --out /tmp/x --only vcollapse

Exit status 1 if a run's live-optimizer ground truth (truth.json) contradicts what the run is meant to show.
The replay entry point for adamdiag is :func:`adamdiag_replay` (see sample_logs/adamdiag.toml).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

if str(Path(__file__).resolve().parent) not in sys.path:  # runnable as a script and loadable by file path
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import runlab  # noqa: E402
from runlab import Family, RunConfig  # noqa: E402

FAMILY = "mlp_multitask"
REG_HEADS = ("reg_a", "reg_b", "reg_c")
# size -> model keyword defaults (cfg.model overrides). "small" is the sample-log size (~5.7k parameters).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"in_dim": 8, "hidden": 32, "classes": 4},
    "small": {"in_dim": 16, "hidden": 64, "classes": 4},
    "medium": {"in_dim": 32, "hidden": 256, "classes": 8},
}
DATA_DEFAULTS: dict[str, Any] = {
    "n_examples": 256,
    "data_seed": 0,
    "teacher_seed": 1000,
    "teacher_scale": 1.0,
    "prob_weight": 1.0,
}
# The sample runs: a small fixed data set trained full batch (no mini-batch noise to keep g² ≈ v̂), a tiny
# weight on the probability head so the exactly-fittable regression heads dominate the loss.
SAMPLE_DATA: dict[str, Any] = {"n_examples": 32, "prob_weight": 0.01}


ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class MultiTaskMLP(nn.Module):
    """Shared trunk (``depth`` x Linear + activation, tanh by default) + probability head + three scalar
    regression heads."""

    def __init__(self, in_dim: int, hidden: int, classes: int, act: str = "tanh", depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(in_dim if i == 0 else hidden, hidden), ACTIVATIONS[act]()]
        self.trunk = nn.Sequential(*layers)
        self.prob = nn.Linear(hidden, classes)
        self.reg_a = nn.Linear(hidden, 1)
        self.reg_b = nn.Linear(hidden, 1)
        self.reg_c = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)
        return {"prob": self.prob(h), "reg_a": self.reg_a(h), "reg_b": self.reg_b(h), "reg_c": self.reg_c(h)}


def _dims(cfg: RunConfig) -> dict[str, int]:
    d = dict(SIZES[cfg.size])
    d.update(cfg.model)
    return d


def _data_recipe(cfg: RunConfig) -> dict[str, Any]:
    d = dict(DATA_DEFAULTS)
    d.update(cfg.data)
    return d


def build_model(cfg: RunConfig) -> nn.Module:
    """Student architecture (runlab seeds the RNG before calling this)."""
    return MultiTaskMLP(**_dims(cfg))


def build_data(cfg: RunConfig) -> dict[str, torch.Tensor]:
    """Fixed data set: Gaussian inputs, targets from a fixed random teacher of the same shape.

    Probability targets are the teacher's softmax (soft labels); regression targets its scalar heads.
    Independent of cfg.seed (model init), so runs that differ only in optimizer settings see the same data.
    """
    rec = _data_recipe(cfg)
    dims = _dims(cfg)
    dtype = runlab._dtype(cfg)
    g = torch.Generator().manual_seed(int(rec["data_seed"]))
    x = torch.randn(int(rec["n_examples"]), dims["in_dim"], generator=g, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rec["teacher_seed"]))
        teacher = MultiTaskMLP(**dims).double()
    with torch.no_grad():
        for p in teacher.parameters():
            p.mul_(float(rec["teacher_scale"]))
        out = teacher(x)
    probs = out["prob"].softmax(-1)
    batch = {"x": x, "p": probs}
    for h in REG_HEADS:
        batch[h] = out[h]
    return {k: v.to(dtype) for k, v in batch.items()} | {"prob_weight": float(rec["prob_weight"])}


def num_examples(data: dict[str, Any]) -> int:
    """Size of the fixed data set."""
    return int(data["x"].shape[0])


def select(data: dict[str, Any], idx: torch.Tensor) -> dict[str, Any]:
    """Mini-batch with the given example indices."""
    return {k: (v[idx] if isinstance(v, torch.Tensor) else v) for k, v in data.items()}


def head_losses(model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Per-head losses, in the order they are summed.

    prob: cross-entropy against the teacher's soft targets measured from its minimum, i.e. minus the
    targets' entropy (= KL(p || softmax(logits))), so a perfect fit reads 0 like the L2 heads; the gradient is
    exactly the cross-entropy's. Evaluated in float64 and rounded back: in float32 the difference of two
    O(1) numbers would go negative once the fit is better than ~1e-7. reg_*: mean squared error.
    """
    out = model(batch["x"])
    p = batch["p"].double()
    logq = F.log_softmax(out["prob"].double(), dim=-1)
    kl = (p * (p.clamp_min(1e-300).log() - logq)).sum(-1).mean()
    losses = {"prob": (batch["prob_weight"] * kl).to(out["prob"].dtype)}
    for h in REG_HEADS:
        losses[h] = F.mse_loss(out[h], batch[h])
    return losses


runlab.register_family(
    FAMILY,
    Family(
        build_model=build_model,
        build_data=build_data,
        num_examples=num_examples,
        select=select,
        head_losses=head_losses,
        module="multitask",
    ),
)


# ----------------------------------------------------------------------------------------------------------
# replay protocol


def adamdiag_replay(checkpoint: str) -> dict[str, Any]:
    """adamdiag replay entry point: model architecture, batch(step), loss(model, batch), clip_grad_norm.

    ``checkpoint`` is ``<run>/checkpoints/step_N.pt``; the run's config.json rebuilds everything.
    """
    return runlab.adamdiag_replay(checkpoint)


# ----------------------------------------------------------------------------------------------------------
# the sample runs


def sample_configs() -> dict[str, RunConfig]:
    """The sample_logs/ runs: same task, teacher and init seed everywhere. vcollapse and stable_eps1e-3
    differ only in eps; lr_too_high trains mini-batches of a larger draw of the same task."""
    base = dict(
        family=FAMILY,
        size="small",
        data=dict(SAMPLE_DATA),
        steps=2000,
        lr=1e-2,
        betas=(0.9, 0.999),
        seed=0,
        log_every=1,
        ckpt_every=100,
        optimizer="adam",
    )
    return {
        # trains well, then g² ≪ v̂ for hundreds of steps, √v̂ collapses and the run blows up
        "vcollapse": RunConfig(name="vcollapse", eps=1e-8, hist_every=50, **base),
        # identical, but eps=1e-3 caps the per-element step once √v̂ falls under it: stays stable
        "stable_eps1e-3": RunConfig(name="stable_eps1e-3", eps=1e-3, **base),
        # lr far too high: trains at first, then diverges as the lr warms up, while g²/v̂ stays O(1)
        # (mini-batches of a larger set of the same task: batch noise keeps g² ≈ v̂, so no collapse can form)
        "lr_too_high": RunConfig(
            name="lr_too_high",
            eps=1e-8,
            **{
                **base,
                "data": {**SAMPLE_DATA, "n_examples": 256},
                "batch_size": 32,
                "lr": 0.3,
                "steps": 600,
                "lr_schedule": "linear_warmup",
                "warmup_steps": 300,
                "ckpt_every": 50,
            },
        ),
    }


EXPECTED_CAUSE = {"vcollapse": "v_collapse", "stable_eps1e-3": "healthy", "lr_too_high": "lr_too_high"}


def check_expectations(name: str, truth: dict[str, Any]) -> list[str]:
    """Problems with a run's ground truth relative to what the run is meant to demonstrate ([] = fine)."""
    s = truth["summary"]
    want = EXPECTED_CAUSE.get(name)
    problems = []
    if want is not None and s["cause"] != want:
        problems.append(f"{name}: cause {s['cause']!r}, expected {want!r} (evidence {s['evidence']})")
    if want in ("v_collapse", "lr_too_high") and s["blowup_step"] is None:
        problems.append(f"{name}: no blowup detected")
    if want == "v_collapse" and s["blowup_step"] is not None:
        # the blowup must be clear: orders of magnitude above the level it started from
        if not (s["max_loss_after"] is None or s["max_loss_after"] > 30 * s["loss_at_blowup_minus_1"]):
            problems.append(f"{name}: blowup too small ({s['loss_at_blowup_minus_1']} -> {s['max_loss_after']})")
    return problems


def write_toml(out: Path) -> None:
    """sample_logs/adamdiag.toml: tells adamdiag how to replay these runs (path relative to the toml)."""
    rel = os.path.relpath(Path(__file__).resolve(), Path(out).resolve())
    (Path(out) / "adamdiag.toml").write_text(
        "# Written by tools/runlab/multitask.py: how `adamdiag replay` rebuilds model, batches and loss.\n"
        "[replay]\n"
        f'entry = "{Path(rel).as_posix()}:adamdiag_replay"   # path relative to this file\n'
    )


def generate(out: Path, only: list[str] | None = None, verbose: bool = True) -> dict[str, dict[str, Any]]:
    """Train the sample runs into ``out/<name>/``; return {name: truth}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfgs = sample_configs()
    truths = {}
    for name, cfg in cfgs.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        truths[name] = runlab.train(cfg, out / name)
        if verbose:
            s = truths[name]["summary"]
            print(
                f"{name:16s} blowup_step={s['blowup_step']} cause={s['cause']} "
                f"min sqrt(vhat)/eps pre={s['min_sqrt_vhat_over_eps_pre']:.3g} "
                f"median sqrt(vhat)/eps pre(min)={s['median_sqrt_vhat_min_over_eps_pre']:.3g} "
                f"min_loss_pre={s['min_loss_pre']:.3g} max_loss_after={s['max_loss_after']} "
                f"({time.perf_counter() - t0:.1f}s)",
                file=sys.stderr,
            )
    write_toml(out)
    return truths


def main(argv: list[str] | None = None) -> int:
    """CLI: generate the sample runs and verify their ground truth."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("sample_logs"))
    ap.add_argument("--only", nargs="*", help=f"subset of {list(sample_configs())}")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    truths = generate(args.out, args.only)
    problems = [p for name, t in truths.items() for p in check_expectations(name, t)]
    print(f"generated {len(truths)} runs in {time.perf_counter() - t0:.1f}s -> {args.out}", file=sys.stderr)
    for p in problems:
        print(f"EXPECTATION FAILED: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["MultiTaskMLP", "adamdiag_replay", "sample_configs", "generate", "check_expectations"]
