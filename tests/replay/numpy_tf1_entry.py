"""A framework-neutral replay entry in pure numpy, and the run it replays (issue 14, item 6).

The training is TF1's ``AdamOptimizer`` written out in numpy (eps added to the *un-corrected* √v,
bias correction folded into the step size), on a linear regression whose last 32 of 40 features go
quiet after step 100 (v collapses) and come back at step 341 (the step explodes); they go quiet
again after step 420, so at a long replay's end v is collapsing anew unless eps bounds the step. The run writes its
loss with a real TensorBoard writer and, per checkpoint, the numpy state (``step_N.npz``) plus a copy
of it in the torch layout (``step_N.pt``, what ``scan`` reads for its diagnosis and ``--verify``).

``adamdiag_replay(checkpoint)`` returns ``{"run": run}``: ``run(checkpoint, variant, steps)`` replays
from the ``.npz`` beside the named checkpoint with the variant's eps/β2/lr and returns the per-step loss,
mean g² and mean v̂_{t-1} (and the median √v̂ after each update). For an ``.npz`` (a file no adamdiag
reader knows) it also says the original settings under ``"original"``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

STEPS, CHECKPOINTS = 380, (90, 150)
LR, BETA1, BETA2, EPS = 1e-2, 0.9, 0.9, 1e-8
W_TRUE = np.random.default_rng(123).standard_normal(40) / math.sqrt(40)


def batch(t: int) -> tuple[np.ndarray, np.ndarray]:
    """The batch of update t (1-based), seeded by t: a replay sees the very same batches."""
    rng = np.random.default_rng(1000 + t)
    x = rng.standard_normal((32, 40))
    if 100 < t <= 340 or t > 420:  # quiet again later: a replay past 420 sees v collapse anew
        x[:, 8:] *= 1e-4
    return x, x @ W_TRUE + 0.1 * rng.standard_normal(32)


# Two weight tensors, so the quiet features have their own v: the entry reports that tensor's moments
NAMES = ("w_loud", "w_quiet", "b")


def loss_and_grads(p: dict[str, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
    x, y = b
    r = x[:, :8] @ p["w_loud"] + x[:, 8:] @ p["w_quiet"] + p["b"][0] - y
    n = len(y)
    grads = {"w_loud": 2.0 * x[:, :8].T @ r / n, "w_quiet": 2.0 * x[:, 8:].T @ r / n, "b": np.array([2.0 * r.mean()])}
    return float(np.mean(r * r)), grads


class TF1Adam:
    """tf.compat.v1.train.AdamOptimizer: lr_t = lr·√(1-β2^t)/(1-β1^t); θ -= lr_t·m/(√v + eps)."""

    def __init__(self, lr: float, beta2: float, eps: float, state: dict[str, Any] | None = None) -> None:
        self.lr, self.beta2, self.eps = lr, beta2, eps
        self.t = int(state["step"]) if state else 0
        self.m = {k: state[f"m_{k}"].copy() for k in NAMES} if state else None
        self.v = {k: state[f"v_{k}"].copy() for k in NAMES} if state else None

    def vhat(self) -> dict[str, np.ndarray]:
        assert self.v is not None
        return {k: v / (1.0 - self.beta2**self.t) for k, v in self.v.items()}

    def step(self, p: dict[str, np.ndarray], g: dict[str, np.ndarray]) -> None:
        if self.m is None or self.v is None:
            self.m = {k: np.zeros_like(x) for k, x in p.items()}
            self.v = {k: np.zeros_like(x) for k, x in p.items()}
        self.t += 1
        lr_t = self.lr * math.sqrt(1.0 - self.beta2**self.t) / (1.0 - BETA1**self.t)
        for k in p:
            self.m[k] = BETA1 * self.m[k] + (1.0 - BETA1) * g[k]
            self.v[k] = self.beta2 * self.v[k] + (1.0 - self.beta2) * g[k] * g[k]
            p[k] = p[k] - lr_t * self.m[k] / (np.sqrt(self.v[k]) + self.eps)


def _npz_of(checkpoint: str) -> Path:
    return Path(checkpoint).with_suffix(".npz")


def run(checkpoint: str, variant: dict[str, Any], steps: int) -> dict[str, Any]:
    """Replay ``steps`` updates from ``checkpoint`` with the variant's eps/beta2/lr."""
    with np.load(_npz_of(checkpoint)) as z:
        state = {k: z[k] for k in z.files}
    p = {k: state[k].copy() for k in NAMES}
    opt = TF1Adam(variant["lr"], variant["beta2"], variant["eps"], state)
    scopes = {"global": NAMES, "w_quiet": ("w_quiet",)}  # all parameters, and the quiet tensor on its own
    out: dict[str, Any] = {"loss": [], **{k: {s: [] for s in scopes} for k in ("g2", "vhat", "sqrt_vhat_median")}}
    for t in range(opt.t + 1, opt.t + steps + 1):
        loss, g = loss_and_grads(p, batch(t))
        vh = opt.vhat()  # v̂_{t-1}
        out["loss"].append(loss)
        for s, names in scopes.items():
            n = sum(g[k].size for k in names)
            out["g2"][s].append(sum(float((g[k] ** 2).sum()) for k in names) / n)
            out["vhat"][s].append(sum(float(vh[k].sum()) for k in names) / n)
        opt.step(p, g)
        vh = opt.vhat()  # v̂_t
        for s, names in scopes.items():
            out["sqrt_vhat_median"][s].append(float(np.sqrt(np.median(np.concatenate([vh[k] for k in names])))))
        if not math.isfinite(loss):
            break  # nothing can be replayed past a non-finite loss
    return out


def adamdiag_replay(checkpoint: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"run": run}
    if checkpoint.endswith(".npz"):  # no adamdiag reader knows it: say the original settings
        meta = json.loads(Path(checkpoint).with_suffix(".json").read_text())
        spec["original"] = meta
    return spec


def run_only(checkpoint: str) -> dict[str, Any]:
    """The entry without its ``original`` (tests: an ``.npz`` then has no known settings)."""
    return {"run": run}


def train(out: Path) -> Path:
    """The run: event file in ``out``, checkpoints in ``out/checkpoints``."""
    import torch
    from torch.utils.tensorboard import SummaryWriter

    ck = out / "checkpoints"
    ck.mkdir(parents=True, exist_ok=True)
    p = {"w_loud": np.zeros(8), "w_quiet": np.zeros(32), "b": np.zeros(1)}
    opt = TF1Adam(LR, BETA2, EPS)
    writer = SummaryWriter(str(out))
    for t in range(1, STEPS + 1):
        loss, g = loss_and_grads(p, batch(t))
        writer.add_scalar("train/loss", loss, t)  # the loss of batch t, before update t
        writer.add_scalar("train/grad_norm", math.sqrt(sum(float((x * x).sum()) for x in g.values())), t)
        opt.step(p, g)
        if t in CHECKPOINTS:
            assert opt.m is not None and opt.v is not None
            arrays = {**p, "step": np.array(t)}
            arrays.update({f"m_{k}": x for k, x in opt.m.items()} | {f"v_{k}": x for k, x in opt.v.items()})
            np.savez(ck / f"step_{t:06d}.npz", **arrays)
            meta = {"eps": EPS, "beta2": BETA2, "lr": LR, "step": t}
            (ck / f"step_{t:06d}.json").write_text(json.dumps(meta))
            tensors = {k: torch.from_numpy(np.array(x)) for k, x in arrays.items()}
            state = {
                i: {"step": torch.tensor(float(t)), "exp_avg": tensors[f"m_{k}"], "exp_avg_sq": tensors[f"v_{k}"]}
                for i, k in enumerate(NAMES)
            }
            group = {"lr": LR, "betas": (BETA1, BETA2), "eps": EPS, "weight_decay": 0.0, "amsgrad": False}
            group |= {"maximize": False, "params": list(range(len(NAMES))), "param_names": list(NAMES)}
            torch.save(
                {
                    "model": {k: tensors[k] for k in NAMES},
                    "optimizer": {"state": state, "param_groups": [group]},
                    "step": t,
                },
                ck / f"step_{t:06d}.pt",
            )
    writer.close()
    return out


if __name__ == "__main__":
    import sys

    train(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/numpy_tf1"))
