"""runlab: a small, deterministic CPU training harness that writes what a normal training script writes.

It trains a registered model family with torch.optim.Adam/AdamW and leaves behind, in one run directory:

* TensorBoard scalars (torch's ``SummaryWriter``): ``train/loss``, ``train/loss_<head>``, ``train/lr``,
  ``train/grad_norm`` (the gradients Adam sees, i.e. after clipping) and ``train/grad_norm_preclip``
  when clipping is on; optional ``grads/<param>`` histograms.
* checkpoints ``checkpoints/step_{step:06d}.pt`` = ``{'model', 'optimizer', 'step'}``.
* ``config.json`` (every knob needed to rebuild model and data) and ``truth.json``: ground truth computed
  from the *live* optimizer state during training (never from adamdiag), so adamdiag can be graded
  against it.

Step convention (adamdiag's replay depends on it): steps are 1-based. ``batch_for_step(cfg, step)`` is the
batch consumed by the optimizer update that makes the optimizer's step counter equal ``step``; the
``train/loss`` logged at TensorBoard step ``step`` is the loss on that batch *before* that update; a
checkpoint "at step s" is taken after s updates and stores ``'step': s``.

Extension point: model families live in ``FAMILIES`` (see :class:`Family`, :func:`register_family`).
``tools/runlab/multitask.py`` registers ``mlp_multitask``; a CNN or a tiny transformer is added the same way
(a module that calls ``register_family`` at import time, plus an entry in ``_FAMILY_MODULES`` so that a
bare ``config.json`` can find it again).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
TRUTH_SCHEMA = "runlab.truth/1"

# ----------------------------------------------------------------------------------------------------------
# configuration


@dataclass
class RunConfig:
    """Everything that defines a run; serialised verbatim to ``config.json``.

    ``batch_size=None`` means full batch (the whole fixed data set every step). ``model`` and ``data`` are
    family-specific keyword dictionaries (the family fills in its defaults). ``restart_at``: simulate a
    crash after that many updates, reload the last checkpoint and continue into a *new* event file in the
    same directory, re-logging the overlapping steps as real restarts do.
    """

    name: str = "run"
    family: str = "mlp_multitask"
    size: str = "small"
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    steps: int = 1000
    optimizer: str = "adam"  # "adam" (L2 weight decay inside the gradient) or "adamw" (decoupled)
    lr: float = 1e-3
    lr_schedule: str = "constant"  # "constant" | "linear_warmup" (0 -> lr over warmup_steps, then flat)
    warmup_steps: int = 0
    eps: float = 1e-8
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    seed: int = 0
    batch_size: int | None = None
    log_every: int = 1
    hist_every: int = 0  # 0 = no gradient histograms
    ckpt_every: int = 200
    clip_grad_norm: float | None = None
    restart_at: int | None = None
    dtype: str = "float32"
    stop_on_nonfinite: bool = True
    # failure injection (see inject_batch): {"bad_batch_at": k, "bad_batch_scale": 1e3, "bad_batch_keys": [..],
    # "nan_from": k, "nan_keys": [..]}; empty = none. Part of the data pipeline, so replay sees it too.
    inject: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_json`; unknown keys are ignored so old configs stay readable."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "betas" in kw:
            kw["betas"] = tuple(kw["betas"])
        return cls(**kw)


# ----------------------------------------------------------------------------------------------------------
# model families (the extension point)


@dataclass
class Family:
    """A model family: how to build the model, the data, and the per-head losses.

    * ``build_model(cfg) -> nn.Module`` — architecture only; runlab seeds the RNG before calling it.
    * ``build_data(cfg) -> Any`` — the fixed data set (deterministic from ``cfg.data`` and ``cfg.seed``).
    * ``num_examples(data) -> int`` — for mini-batch sampling.
    * ``select(data, idx) -> batch`` — the mini-batch with the given example indices.
    * ``head_losses(model, batch) -> dict[str, Tensor]`` — ordered; the total loss is their sum in order.
    """

    build_model: Callable[[RunConfig], nn.Module]
    build_data: Callable[[RunConfig], Any]
    num_examples: Callable[[Any], int]
    select: Callable[[Any, torch.Tensor], Any]
    head_losses: Callable[[nn.Module, Any], dict[str, torch.Tensor]]
    module: str = ""


FAMILIES: dict[str, Family] = {}
# family name -> module (in tools/runlab/) that registers it; lets a bare config.json find its family again.
_FAMILY_MODULES: dict[str, str] = {"mlp_multitask": "multitask", "cnn": "families", "transformer": "families"}


def register_family(name: str, family: Family) -> None:
    """Make a model family available to :func:`train` and to replay (call at import time)."""
    FAMILIES[name] = family


def get_family(name: str) -> Family:
    """Look a family up, importing its module from tools/runlab/ on first use."""
    if name not in FAMILIES and name in _FAMILY_MODULES:
        if str(HERE) not in sys.path:
            sys.path.insert(0, str(HERE))
        importlib.import_module(_FAMILY_MODULES[name])
    if name not in FAMILIES:
        raise KeyError(f"unknown model family {name!r}; known: {sorted(set(FAMILIES) | set(_FAMILY_MODULES))}")
    return FAMILIES[name]


# ----------------------------------------------------------------------------------------------------------
# data / loss / lr: pure functions of (cfg, step) so that replay can rebuild any step


def _dtype(cfg: RunConfig) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[cfg.dtype]


def build_data(cfg: RunConfig) -> Any:
    """The run's fixed data set."""
    return get_family(cfg.family).build_data(cfg)


def batch_for_step(cfg: RunConfig, step: int, data: Any | None = None) -> Any:
    """Batch consumed by the update that makes the optimizer's step counter equal ``step`` (1-based).

    Stateless in ``step`` (a generator seeded from (seed, step)) so any step can be rebuilt in isolation.
    """
    if step < 1:
        raise ValueError(f"steps are 1-based, got {step}")
    fam = get_family(cfg.family)
    if data is None:
        data = fam.build_data(cfg)
    if cfg.batch_size is None:
        return inject_batch(cfg, step, data) if cfg.inject else data
    n = fam.num_examples(data)
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    idx = torch.randint(0, n, (cfg.batch_size,), generator=g)
    batch = fam.select(data, idx)
    return inject_batch(cfg, step, batch) if cfg.inject else batch


def inject_batch(cfg: RunConfig, step: int, batch: Any) -> Any:
    """Failure injection (``cfg.inject``) on the batch of update ``step``; a new dict, never in place
    (with full batch the batch *is* the fixed data set).

    * ``bad_batch_at=k``: at step k only, multiply ``bad_batch_keys`` (default ``["x"]``; pass the target keys
      to corrupt labels) by ``bad_batch_scale`` (default 1e3) — one corrupted batch.
    * ``nan_from=k``: from step k on, the first element of each of ``nan_keys`` (default ``["x"]``) is NaN.
    """
    inj = cfg.inject
    bad = inj.get("bad_batch_at") == step
    nan = inj.get("nan_from") is not None and step >= int(inj["nan_from"])
    if not (bad or nan):
        return batch
    if not isinstance(batch, dict):
        raise TypeError("failure injection needs a dict batch")
    out = dict(batch)
    if bad:
        for k in inj.get("bad_batch_keys", ["x"]):
            out[k] = out[k] * float(inj.get("bad_batch_scale", 1e3))
    if nan:
        for k in inj.get("nan_keys", ["x"]):
            v = out[k].clone()
            v.view(-1)[0] = float("nan")
            out[k] = v
    return out


def total_loss(cfg: RunConfig, model: nn.Module, batch: Any) -> torch.Tensor:
    """Scalar loss that the optimizer minimises: the sum of the family's head losses, in order."""
    return _sum_heads(get_family(cfg.family).head_losses(model, batch))


def _sum_heads(heads: dict[str, torch.Tensor]) -> torch.Tensor:
    vals = list(heads.values())
    out = vals[0]
    for v in vals[1:]:  # explicit left-to-right sum: training and replay must add in the same order
        out = out + v
    return out


def lr_at(cfg: RunConfig, step: int) -> float:
    """Learning rate used by update ``step``."""
    if cfg.lr_schedule == "constant" or cfg.warmup_steps <= 0:
        return cfg.lr
    if cfg.lr_schedule == "linear_warmup":
        return cfg.lr * min(1.0, step / cfg.warmup_steps)
    raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}")


def build_model(cfg: RunConfig) -> nn.Module:
    """Freshly initialised model (seeded by ``cfg.seed``)."""
    torch.manual_seed(cfg.seed)
    return get_family(cfg.family).build_model(cfg).to(_dtype(cfg))


def build_optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam or AdamW with the run's hyperparameters (plain for-loop implementation, CPU default)."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    return cls(model.parameters(), lr=lr_at(cfg, 1), betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


def checkpoint_path(run_dir: Path, step: int) -> Path:
    """Where the checkpoint taken after ``step`` updates lives."""
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}.pt"


def load_config(run_dir: Path) -> RunConfig:
    """Read ``<run>/config.json``."""
    return RunConfig.from_json(json.loads((Path(run_dir) / "config.json").read_text())["config"])


def run_dir_of_checkpoint(checkpoint: str | Path) -> Path:
    """``<run>/checkpoints/step_N.pt`` -> ``<run>`` (also accepts a checkpoint directly in the run dir)."""
    p = Path(checkpoint).resolve()
    for cand in (p.parent, p.parent.parent):
        if (cand / "config.json").is_file():
            return cand
    raise FileNotFoundError(f"no config.json next to or above {checkpoint}")


# ----------------------------------------------------------------------------------------------------------
# live optimizer-state probes (ground truth)

_PER_TENSOR_KEYS = ("r", "frac_below_eps", "frac_below_10eps", "min_sqrt_vhat", "median_sqrt_vhat", "update_rms")
_GLOBAL_KEYS = _PER_TENSOR_KEYS + ("p01_sqrt_vhat",)


class Prober:
    """Reads per-tensor statistics from the live Adam state, vectorised over one flat view of all tensors.

    ``before(opt)`` runs after backward/clipping and before ``opt.step()``; ``after(opt)`` right after it.
    :func:`probe_reference` is the plain per-tensor loop this is tested against.
    """

    def __init__(self, model: nn.Module, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.names = [n for n, _ in model.named_parameters()]
        self.params = [p for _, p in model.named_parameters()]
        self.sizes = [p.numel() for p in self.params]
        self.seg = torch.repeat_interleave(torch.arange(len(self.sizes)), torch.tensor(self.sizes))
        self.lengths = torch.tensor(self.sizes)
        self._g2: torch.Tensor | None = None
        self._vprev: torch.Tensor | None = None

    def _segsum(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(self.sizes), dtype=torch.float64).index_add_(0, self.seg, x.double())

    def _flat_state(self, opt: torch.optim.Optimizer, key: str) -> torch.Tensor | None:
        parts = []
        for p in self.params:
            st = opt.state.get(p)
            if not st or key not in st:
                return None
            parts.append(st[key].reshape(-1))  # optimizer state never requires grad: no detach needed
        return torch.cat(parts).double()

    def _step(self, opt: torch.optim.Optimizer) -> int:
        steps = {int(opt.state[p]["step"]) for p in self.params}
        assert len(steps) == 1, "all tensors are updated every step"
        return steps.pop()

    def before(self, opt: torch.optim.Optimizer) -> None:
        """Record sum g² (the gradient Adam's moments will see) and sum v̂_{t-1} per tensor."""
        with torch.no_grad():
            g = torch.cat([p.grad.reshape(-1) for p in self.params]).double()
            if self.cfg.optimizer == "adam" and self.cfg.weight_decay:
                g = g + self.cfg.weight_decay * torch.cat([p.reshape(-1) for p in self.params]).double()
            self._g2 = self._segsum(g * g)
            v = self._flat_state(opt, "exp_avg_sq")
            self._vprev = None if v is None else self._segsum(v) / (1.0 - self.cfg.betas[1] ** self._step(opt))

    def after(self, opt: torch.optim.Optimizer) -> dict[str, Any]:
        """Per-tensor and global statistics of the state right after update t."""
        b1, b2 = self.cfg.betas
        eps = self.cfg.eps
        t = self._step(opt)
        with torch.no_grad():
            s = (self._flat_state(opt, "exp_avg_sq") / (1.0 - b2**t)).sqrt()
            mh = self._flat_state(opt, "exp_avg") / (1.0 - b1**t)
            n = torch.tensor(self.sizes, dtype=torch.float64)
            nan = torch.full_like(n, float("nan"))
            vp = self._vprev
            r = nan if vp is None else torch.where(vp > 0, self._g2 / vp, nan)
            u2 = self._segsum((mh / (s + eps)).pow(2))
            cols = torch.stack(
                [
                    r,
                    self._segsum((s < eps).double()) / n,
                    self._segsum((s < 10 * eps).double()) / n,
                    torch.segment_reduce(s, "min", lengths=self.lengths),
                    torch.stack([x.median() for x in s.split(self.sizes)]),
                    (u2 / n).sqrt(),
                ],
                dim=1,
            ).tolist()
            ntot = s.numel()
            vsum = float(vp.sum()) if vp is not None else 0.0
            k01 = max(1, int(math.ceil(0.01 * ntot)))
            glob = {
                "r": float(self._g2.sum()) / vsum if vsum > 0 else float("nan"),
                "frac_below_eps": float((s < eps).sum()) / ntot,
                "frac_below_10eps": float((s < 10 * eps).sum()) / ntot,
                "min_sqrt_vhat": float(s.min()),
                "median_sqrt_vhat": float(s.median()),
                "p01_sqrt_vhat": float(s.kthvalue(k01).values),
                "update_rms": math.sqrt(float(u2.sum()) / ntot),
            }
        keys = _PER_TENSOR_KEYS
        per = {name: dict(zip(keys, row, strict=True)) for name, row in zip(self.names, cols, strict=True)}
        return {"global": glob, "tensors": per}


def probe_reference(
    opt: torch.optim.Optimizer,
    model: nn.Module,
    cfg: RunConfig,
    grads: dict[str, torch.Tensor],
    vprev: dict[str, torch.Tensor | None],
) -> dict[str, Any]:
    """Plain-loop reference of :class:`Prober` (per tensor, straight from the formulas).

    ``grads``/``vprev``: per-name copies of the gradient Adam used at update t and of exp_avg_sq before it.
    Call right after ``opt.step()``.
    """
    b1, b2 = cfg.betas
    eps = cfg.eps
    per = {}
    for name, p in model.named_parameters():
        st = opt.state[p]
        t = int(st["step"])
        g = grads[name].double()
        if cfg.optimizer == "adam" and cfg.weight_decay:
            raise NotImplementedError("reference covers the no-L2 case")
        vh_prev = None if vprev[name] is None else vprev[name].double() / (1 - b2 ** (t - 1))
        vh = st["exp_avg_sq"].double() / (1 - b2**t)
        mh = st["exp_avg"].double() / (1 - b1**t)
        s = vh.sqrt()
        per[name] = {
            "r": float((g**2).mean() / vh_prev.mean()) if vh_prev is not None else float("nan"),
            "frac_below_eps": float((s < eps).double().mean()),
            "frac_below_10eps": float((s < 10 * eps).double().mean()),
            "min_sqrt_vhat": float(s.min()),
            "median_sqrt_vhat": float(s.median()),
            "update_rms": float((mh / (s + eps)).pow(2).mean().sqrt()),
        }
    return per


# ----------------------------------------------------------------------------------------------------------
# blowup detection and cause labelling (from live-state traces; pure functions)

BLOWUP_WINDOW = 100  # trailing steps that define the "normal" loss level
BLOWUP_MIN_HISTORY = 20
BLOWUP_ONSET = math.log10(2.0)  # onset: loss above 2x the trailing median (and above 3 robust sigmas)
BLOWUP_PEAK = 1.0  # confirmed: reaches 10x the trailing median within BLOWUP_HORIZON steps
BLOWUP_HORIZON = 100
BLOWUP_PERSIST = 10  # ...and the median of the next this-many steps stays above onset (no one-step blip)


def detect_blowup(losses: list[float] | np.ndarray, start: int = 0) -> int | None:
    """First step (1-based) of a sustained loss blowup, or None.

    Robust, scale-free: in log10 space, with b = median and s = 1.4826·median|Δx|/√2 (the noise of
    first differences) of the trailing ``BLOWUP_WINDOW`` steps, step t is an onset if x_t > b + max(log10 2, 3s); it is the blowup if the loss
    then reaches b + 1 (10×) within ``BLOWUP_HORIZON`` steps and the median of steps t..t+``BLOWUP_PERSIST``-1
    stays above the onset level. A non-finite loss is a blowup at its first step
    unless a finite blowup was confirmed earlier.

    ``start`` (0-based index): skip onsets before it — for a caller that extends the series step by step
    and already knows those onsets are final and not blowups (the result is then the same as a full scan).
    """
    x = np.asarray(losses, dtype=np.float64)
    n = len(x)
    finite = np.isfinite(x)
    first_nonfinite = int(np.argmin(finite)) if not finite.all() else n
    # A loss can't be resolved below float32 precision of its own scale (~1e-7 of the first losses):
    # values under that floor, negative rounding noise included, are "zero" — not 20 decades of signal.
    head = np.abs(x[:10][finite[:10]])
    floor = max(1e-7 * float(np.median(head)) if len(head) else 0.0, 1e-30)
    lx = np.log10(np.maximum(np.where(finite, x, np.inf), floor))
    for i in range(max(BLOWUP_MIN_HISTORY, start), first_nonfinite):
        w = lx[max(0, i - BLOWUP_WINDOW) : i]
        b = float(np.median(w))
        # Noise from first differences: deviations around the median of a trending window (a loss
        # still falling fast) measure the trend, not the noise, and would hide real blowups.
        s = 1.4826 / np.sqrt(2.0) * float(np.median(np.abs(np.diff(w)))) if len(w) > 1 else 0.0
        onset = b + max(BLOWUP_ONSET, 3.0 * s)
        if lx[i] <= onset:
            continue
        horizon = lx[i : min(n, i + BLOWUP_HORIZON)]
        persist = lx[i : min(n, i + BLOWUP_PERSIST)]
        if (horizon >= b + BLOWUP_PEAK).any() and np.median(persist) > onset:
            return i + 1
    return first_nonfinite + 1 if first_nonfinite < n else None


# cause thresholds: "g² ≪ v̂" means global r below R_QUIET for a long stretch; at the blowup the gradients
# re-grow: r jumps by >= R_JUMP over the quiet level and reaches R_SURGE in at least one tensor.
R_QUIET = 0.1
R_SURGE = 1.0
R_JUMP = 100.0
QUIET_MIN_STEPS = 200  # a long stretch: at least this many consecutive quiet steps...
QUIET_MAX_GAP = 100  # ...ending at most this many steps before the blowup
COLLAPSE_MIN_FACTOR = 10.0  # median sqrt(v̂) fell at least this much from its peak before the blowup
SURGE_WINDOW = (10, 30)  # steps before / after the blowup step searched for the surge


def _longest_quiet_run_before(r: np.ndarray, b_idx: int) -> tuple[int, int]:
    """(length, end index) of the longest run of r < R_QUIET ending within QUIET_MAX_GAP before b_idx."""
    best_len, best_end = 0, -1
    i = b_idx - 1
    lo = max(0, b_idx - 1 - QUIET_MAX_GAP)
    while i >= lo:
        if r[i] < R_QUIET:
            j = i
            while j >= 0 and r[j] < R_QUIET:
                j -= 1
            if i - j > best_len:
                best_len, best_end = i - j, i
            i = j
        i -= 1
    return best_len, best_end


def label_cause(
    r: np.ndarray, median_sqrt_vhat: np.ndarray, r_tensor_max: np.ndarray, blowup: int | None
) -> tuple[str, dict[str, Any]]:
    """Cause label from live-state traces (arrays indexed by step-1).

    ``r`` is the global mean(g²)/mean(v̂_{t-1}); ``r_tensor_max`` its per-step maximum over tensors.

    * healthy: no blowup.
    * v_collapse: >= QUIET_MIN_STEPS consecutive steps with r < R_QUIET ending within QUIET_MAX_GAP steps of
      the blowup, the median sqrt(v̂) down >= COLLAPSE_MIN_FACTOR from its peak, and around the blowup
      (SURGE_WINDOW) r rises >= R_JUMP above its quiet median and reaches R_SURGE in some tensor
      (gradients re-grow faster than v̂ can follow).
    * lr_too_high: any other blowup (g²/v̂ ~ O(1), no collapse).
    """
    if blowup is None:
        return "healthy", {}
    b = blowup - 1
    rq = np.nan_to_num(r, nan=1.0)
    quiet_len, quiet_end = _longest_quiet_run_before(rq, b)
    pre = median_sqrt_vhat[: max(b, 1)]
    peak = float(np.nanmax(pre)) if np.isfinite(pre).any() else float("nan")
    at = float(median_sqrt_vhat[max(b - 1, 0)])
    collapse = peak / at if at > 0 else float("inf")
    lo, hi = max(0, b - SURGE_WINDOW[0]), min(len(r), b + SURGE_WINDOW[1])
    surge_g = float(np.nanmax(r[lo:hi])) if np.isfinite(r[lo:hi]).any() else float("nan")
    surge_t = float(np.nanmax(r_tensor_max[lo:hi])) if np.isfinite(r_tensor_max[lo:hi]).any() else float("nan")
    quiet_med = float(np.median(rq[quiet_end - quiet_len + 1 : quiet_end + 1])) if quiet_len else float("nan")
    jump = surge_g / quiet_med if quiet_len and quiet_med > 0 else float("nan")
    ev = {
        "quiet_stretch_steps": int(quiet_len),
        "quiet_stretch_end_step": int(quiet_end + 1) if quiet_end >= 0 else None,
        "median_r_quiet": quiet_med,
        "median_sqrt_vhat_collapse_factor": collapse,
        "max_r_around_blowup": surge_g,
        "max_tensor_r_around_blowup": surge_t,
        "r_jump": jump,
    }
    is_vc = quiet_len >= QUIET_MIN_STEPS and collapse >= COLLAPSE_MIN_FACTOR and surge_t >= R_SURGE and jump >= R_JUMP
    return ("v_collapse" if is_vc else "lr_too_high"), ev


INJECT_SPIKE = 10.0  # an injected bad batch registers when its gradient norm is >= 10x the trailing median...
INJECT_BACK = 10.0  # ...and the next batch's is back below 1/10 of the spike (the data, not the state, did it)


def label_injection(
    inject: dict[str, Any],
    losses: np.ndarray,
    grad_norm: np.ndarray,
    r: np.ndarray,
    blowup: int | None,
    cause: str,
    ev: dict[str, Any],
) -> tuple[int | None, str, dict[str, Any]]:
    """Cause label for runs with an injected failure, from the injection *and* the live state.

    ``grad_norm``: the raw (pre-clip) gradient norm per step; ``r``: global mean(g²)/mean(v̂_{t-1}).
    * nonfinite: ``nan_from`` was set, the first non-finite loss is at/after it, and no finite blowup came first.
    * bad_batch: at ``bad_batch_at`` = k the live gradient norm is >= INJECT_SPIKE x the median of the 50 steps
      before, g²/v̂ there is >= INJECT_SPIKE² (far outside what v expects), the next step's norm is back under
      1/INJECT_BACK of it, and no blowup started before k. blowup_step becomes k.
    Otherwise the label of :func:`label_cause` stands (evidence says why the injection did not register).
    """
    ev = dict(ev)
    nonfinite = ~np.isfinite(losses)
    if inject.get("nan_from") is not None and nonfinite.any():
        f = int(np.argmax(nonfinite)) + 1
        ev.update(injected="nan", nan_from=int(inject["nan_from"]), first_nonfinite_step=f)
        if f >= int(inject["nan_from"]) and (blowup is None or blowup >= f):
            return f, "nonfinite", ev
    k = inject.get("bad_batch_at")
    if k is not None and 1 < k < len(losses):
        i = int(k) - 1
        base = float(np.median(grad_norm[max(0, i - 50) : i]))
        spike = float(grad_norm[i] / base) if base > 0 else float("nan")
        back = float(grad_norm[i] / grad_norm[i + 1]) if grad_norm[i + 1] > 0 else float("inf")
        ev.update(
            injected="bad_batch",
            bad_batch_at=int(k),
            grad_norm_spike=spike,
            grad_norm_drop_next=back,
            r_at_bad_batch=float(r[i]),
        )
        registered = spike >= INJECT_SPIKE and back >= INJECT_BACK and float(r[i]) >= INJECT_SPIKE**2
        if registered and (blowup is None or blowup >= k):
            return int(k), "bad_batch", ev
    return blowup, cause, ev


# ----------------------------------------------------------------------------------------------------------
# training


def _grad_norm(params: list[torch.nn.Parameter]) -> float:
    """Global L2 norm of the gradients (float64 accumulation; one flat view instead of a per-tensor loop)."""
    grads = [p.grad.reshape(-1) for p in params if p.grad is not None]
    return float(torch.cat(grads).double().pow(2).sum().sqrt()) if grads else 0.0


class _Trace:
    """Per-step live-state records, overwritten on restart overlap (the final trajectory wins)."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}

    def put(self, step: int, row: dict[str, Any]) -> None:
        self.rows[step] = row

    def steps(self) -> list[int]:
        return sorted(self.rows)


def _save_checkpoint(run_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    path = checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, path)


def train(cfg: RunConfig, out_dir: Path, verbose: bool = False) -> dict[str, Any]:
    """Train one run into ``out_dir`` (created/overwritten) and return its truth (the truth.json content).

    Runs single-threaded with deterministic algorithms (restoring the caller's settings afterwards), so two
    runs of the same config give identical losses.
    """
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        return _train(cfg, Path(out_dir), verbose)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)


def _train(cfg: RunConfig, out_dir: Path, verbose: bool) -> dict[str, Any]:
    from torch.utils.tensorboard import SummaryWriter  # lazy: heavy import

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in list(out_dir.glob("events.out.tfevents.*")) + list(out_dir.glob("checkpoints/*.pt")):
        old.unlink()  # a re-generated run must not mix with a previous generation's files
    fam = get_family(cfg.family)
    (out_dir / "config.json").write_text(
        json.dumps(
            {
                "config": cfg.to_json(),
                "family_module": fam.module or _FAMILY_MODULES.get(cfg.family, ""),
                "step_convention": "1-based; train/loss at step t is the loss on batch_for_step(t) before update t; "
                "checkpoint step_N.pt is taken after N updates",
                "torch": torch.__version__,
                # bit-exact reproducibility holds for the same torch build and CPU kernel family only
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            },
            indent=2,
        )
        + "\n"
    )

    data = fam.build_data(cfg)
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    prober = Prober(model, cfg)
    params = list(model.parameters())
    trace = _Trace()
    segments: list[dict[str, Any]] = []

    writer = SummaryWriter(log_dir=str(out_dir))
    segments.append({"segment": 0, "first_step": 1})
    step = 0
    restarted = False
    last_ckpt = 0
    while step < cfg.steps:
        t = step + 1
        lr = lr_at(cfg, t)
        for grp in opt.param_groups:
            grp["lr"] = lr
        batch = batch_for_step(cfg, t, data)
        opt.zero_grad(set_to_none=True)
        heads = fam.head_losses(model, batch)
        loss = _sum_heads(heads)
        loss.backward()
        preclip = _grad_norm(params)
        if cfg.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
        gnorm = _grad_norm(params) if cfg.clip_grad_norm is not None else preclip
        lval = float(loss.detach())
        finite = math.isfinite(lval)
        if cfg.log_every and t % cfg.log_every == 0 or not finite:
            writer.add_scalar("train/loss", lval, t)
            for hname, hv in heads.items():
                writer.add_scalar(f"train/loss_{hname}", float(hv.detach()), t)
            writer.add_scalar("train/lr", lr, t)
            writer.add_scalar("train/grad_norm", gnorm, t)
            if cfg.clip_grad_norm is not None:
                writer.add_scalar("train/grad_norm_preclip", preclip, t)
        if cfg.hist_every and t % cfg.hist_every == 0:
            for n, p in model.named_parameters():
                if p.grad is not None:
                    writer.add_histogram(f"grads/{n}", p.grad, t)
        prober.before(opt)
        opt.step()
        step = t
        probe = prober.after(opt) if finite else None
        trace.put(
            t,
            {
                "loss": lval,
                "heads": {k: float(v.detach()) for k, v in heads.items()},
                "lr": lr,
                "grad_norm": gnorm,
                "grad_norm_preclip": preclip,
                "probe": probe,
            },
        )
        if cfg.ckpt_every and t % cfg.ckpt_every == 0:
            _save_checkpoint(out_dir, model, opt, t)
            last_ckpt = t
        if verbose and t % 500 == 0:
            print(f"  [{cfg.name}] step {t} loss {lval:.3e}", file=sys.stderr)
        if not finite and cfg.stop_on_nonfinite:
            break  # a real script dies here (NaN forever after)
        if cfg.restart_at is not None and not restarted and t == cfg.restart_at:
            # Simulated crash + resume: reload the last checkpoint, new event file, overlapping steps.
            restarted = True
            writer.close()
            model = build_model(cfg)
            opt = build_optimizer(cfg, model)
            if last_ckpt:
                ck = torch.load(checkpoint_path(out_dir, last_ckpt), weights_only=True)
                model.load_state_dict(ck["model"])
                opt.load_state_dict(ck["optimizer"])
            prober = Prober(model, cfg)
            params = list(model.parameters())
            step = last_ckpt
            writer = SummaryWriter(log_dir=str(out_dir))
            segments.append({"segment": 1, "first_step": last_ckpt + 1, "crashed_after_step": t})
    writer.close()

    truth = _summarize(cfg, trace, segments, {n: p.numel() for n, p in model.named_parameters()})
    (out_dir / "truth.json").write_text(json.dumps(truth, indent=1, allow_nan=False) + "\n")
    return truth


# ----------------------------------------------------------------------------------------------------------
# truth.json


def _f(x: float | None, sig: int = 5) -> float | None:
    """JSON-safe float with limited precision (None for non-finite; truth.json stays small)."""
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{sig}g}")


def _trace_steps(n: int, blowup: int | None, target: int = 300, dense: int = 60) -> list[int]:
    """Downsampled step list: ~target evenly spaced steps plus every step within ±dense of the blowup."""
    k = max(1, n // target)
    s = set(range(1, n + 1, k)) | {n}
    if blowup is not None:
        s |= set(range(max(1, blowup - dense), min(n, blowup + dense) + 1))
    return sorted(s)


def _summarize(cfg: RunConfig, trace: _Trace, segments: list[dict[str, Any]], sizes: dict[str, int]) -> dict[str, Any]:
    steps = trace.steps()
    n = len(steps)
    assert steps == list(range(1, n + 1)), "trace must be contiguous"
    rows = [trace.rows[s] for s in steps]
    losses = np.array([r["loss"] for r in rows])
    nan = float("nan")

    def gser(key: str) -> np.ndarray:
        return np.array([r["probe"]["global"][key] if r["probe"] else nan for r in rows])

    r_g = gser("r")
    med_s = gser("median_sqrt_vhat")
    blowup = detect_blowup(losses)
    tensor_names = list(rows[0]["probe"]["tensors"]) if rows[0]["probe"] else []
    r_tmax = np.array(
        [max((r["probe"]["tensors"][tn]["r"] for tn in tensor_names), default=nan) if r["probe"] else nan for r in rows]
    )
    cause, evidence = label_cause(r_g, med_s, r_tmax, blowup)
    if cfg.inject:
        blowup, cause, evidence = label_injection(
            cfg.inject, losses, np.array([r["grad_norm_preclip"] for r in rows]), r_g, blowup, cause, evidence
        )
    eps = cfg.eps

    end_pre = (blowup - 1) if blowup is not None else n  # steps strictly before the blowup
    pre = slice(0, max(end_pre, 1))
    min_s_pre = float(np.nanmin(gser("min_sqrt_vhat")[pre]))
    p01_pre = float(np.nanmin(gser("p01_sqrt_vhat")[pre]))
    med_pre = float(np.nanmin(med_s[pre]))

    per_tensor: dict[str, Any] = {}
    for tn in tensor_names:

        def tser(key: str, tn: str = tn) -> np.ndarray:
            return np.array([r["probe"]["tensors"][tn][key] if r["probe"] else nan for r in rows])

        rt = tser("r")
        ms = tser("min_sqrt_vhat")
        mds = tser("median_sqrt_vhat")
        quiet_len, _ = _longest_quiet_run_before(np.nan_to_num(rt, nan=1.0), end_pre)
        b = (blowup - 1) if blowup is not None else None
        per_tensor[tn] = {
            "numel": sizes[tn],
            "min_sqrt_vhat_over_eps_pre": _f(float(np.nanmin(ms[pre])) / eps),
            "median_sqrt_vhat_min_over_eps_pre": _f(float(np.nanmin(mds[pre])) / eps),
            "median_sqrt_vhat_collapse_factor": _f(float(np.nanmax(mds[pre]) / mds[max(end_pre - 1, 0)])),
            "median_r_last300_pre": _f(float(np.nanmedian(rt[max(1, end_pre - 300) : max(end_pre, 2)]))),
            "quiet_stretch_steps": int(quiet_len),
            "max_r_around_blowup": (_f(float(np.nanmax(rt[max(0, b - 10) : b + 30]))) if b is not None else None),
            "frac_below_10eps_pre_max": _f(float(np.nanmax(tser("frac_below_10eps")[pre]))),
            "max_update_rms_around_blowup": (
                _f(float(np.nanmax(tser("update_rms")[max(0, b - 10) : b + 30]))) if b is not None else None
            ),
        }

    ts = _trace_steps(n, blowup)
    gkeys = list(_GLOBAL_KEYS)
    gtrace = {"step": ts, "loss": [_f(float(losses[s - 1])) for s in ts]}
    for key in gkeys:
        ser = gser(key)
        gtrace[key] = [_f(float(ser[s - 1])) for s in ts]
    gtrace["grad_norm"] = [_f(rows[s - 1]["grad_norm"]) for s in ts]
    # coarse per-tensor trace (every ~n/40 steps + around the blowup) for plots / per-tensor grading
    tts = _trace_steps(n, blowup, target=40, dense=10)
    ttrace = {"step": tts}
    for tn in tensor_names:
        ttrace[tn] = {
            key: [_f(rows[s - 1]["probe"]["tensors"][tn][key], 4) if rows[s - 1]["probe"] else None for s in tts]
            for key in ("r", "min_sqrt_vhat", "median_sqrt_vhat", "update_rms", "frac_below_10eps")
        }
    b = (blowup - 1) if blowup is not None else None
    summary = {
        "blowup_step": blowup,
        "cause": cause,
        "final_step": n,
        "nonfinite": bool(not np.isfinite(losses).all()),
        "eps": eps,
        "min_loss_pre": _f(float(np.nanmin(losses[pre]))),
        "max_loss_after": _f(float(np.nanmax(losses[b:]))) if b is not None else None,
        "loss_at_blowup_minus_1": _f(float(losses[b - 1])) if b else None,
        "min_sqrt_vhat_over_eps_pre": _f(min_s_pre / eps),
        "p01_sqrt_vhat_min_over_eps_pre": _f(p01_pre / eps),
        "median_sqrt_vhat_min_over_eps_pre": _f(med_pre / eps),
        "frac_below_10eps_pre_max": _f(float(np.nanmax(gser("frac_below_10eps")[pre]))),
        "max_update_rms_around_blowup": (
            _f(float(np.nanmax(gser("update_rms")[max(0, b - 10) : b + 30]))) if b is not None else None
        ),
        "evidence": {k: (_f(v) if isinstance(v, float) else v) for k, v in evidence.items()},
    }
    return {
        "schema": TRUTH_SCHEMA,
        "run": cfg.name,
        "definitions": {
            "r": "mean(g_t^2)/mean(vhat_{t-1}) of the gradient Adam used at update t (global = sum/sum)",
            "sqrt_vhat": "sqrt(v_t/(1-beta2^t)) right after update t",
            "update_rms": "sqrt(mean((mhat_t/(sqrt(vhat_t)+eps))^2)), step t in units of lr",
            "blowup": "runlab.detect_blowup: log10 loss > trailing-100 median + max(log10 2, 3*sigma (sigma = 1.4826*median|diff|/sqrt2; losses floored at 1e-7 x the first losses)), "
            "reaching +1 decade within 100 steps, median of the next 10 steps above onset",
            "cause": f"v_collapse: >= {QUIET_MIN_STEPS} consecutive steps with global r < {R_QUIET} ending <= "
            f"{QUIET_MAX_GAP} steps before the blowup, median sqrt(vhat) down >= "
            f"{COLLAPSE_MIN_FACTOR}x from its peak, and within -{SURGE_WINDOW[0]}/+{SURGE_WINDOW[1]} "
            f"steps of the blowup global r >= {R_JUMP}x its quiet median and some tensor's r >= "
            f"{R_SURGE}; lr_too_high: other blowups; healthy: none",
            "pre": "steps strictly before blowup_step (all steps when healthy)",
        },
        "summary": summary,
        "segments": segments,
        "tensors": per_tensor,
        "trace": gtrace,
        "tensor_trace": ttrace,
    }


# ----------------------------------------------------------------------------------------------------------
# replay protocol (adamdiag.replay): generic entry point usable for any registered family


def adamdiag_replay(checkpoint: str) -> dict[str, Any]:
    """Rebuild model architecture, per-step batches and loss for a run from one of its checkpoints.

    Returns {"model": nn.Module (fresh init; adamdiag loads the checkpoint weights into it),
    "batch": step -> batch (1-based, see module docstring), "loss": (model, batch) -> scalar total loss,
    "clip_grad_norm": float | None}, plus "lr_schedule": step -> lr of that update when the run does
    not hold its lr constant (the very float ``lr_at`` gave the optimizer in training, so the replay
    reproduces the log bit for bit).
    """
    cfg = load_config(run_dir_of_checkpoint(checkpoint))
    data = build_data(cfg)
    model = build_model(cfg)

    def batch(step: int) -> Any:
        return batch_for_step(cfg, int(step), data)

    def loss(m: nn.Module, b: Any) -> torch.Tensor:
        return total_loss(cfg, m, b)

    out: dict[str, Any] = {"model": model, "batch": batch, "loss": loss, "clip_grad_norm": cfg.clip_grad_norm}
    if cfg.lr_schedule != "constant" and cfg.warmup_steps > 0:
        out["lr_schedule"] = lambda step: lr_at(cfg, int(step))
    return out
