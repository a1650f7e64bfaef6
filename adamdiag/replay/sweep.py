"""Batched sweep: K variants in one pass over the same batches.

Every optimized parameter is stacked into a ``[K, ...]`` tensor (one slice per variant). The forward
runs under ``torch.func.vmap`` over ``functional_call`` of the entry's ``loss(model, batch)`` -- the
batch is shared, only the parameters differ -- and one ``autograd.grad`` of the summed K losses gives
each slice exactly its own variant's gradient (the losses do not share parameters). A parameter the
loss does not use gets no gradient (``None``), as in the sequential run, and Adam skips it.

The Adam/AdamW update on the stacked tensors is written out here, vectorized across K with the
per-variant lr/eps/beta2 as ``[K, 1, ...]`` tensors, in the same order of operations as
``torch.optim.adam._single_tensor_adam`` (and the same float64 bias corrections) so that it agrees with
the reference (:mod:`adamdiag.replay.engine`) to rounding; gradient clipping is per variant, like
``clip_grad_norm_`` on each variant's own gradients.

Models that vmap cannot handle (in-place buffer updates such as BatchNorm in train mode, dropout,
``.item()`` in the loss, ...) raise :class:`VmapUnsupported`; the caller falls back to the sequential
path with a warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adamdiag.errors import InputError
from adamdiag.replay.checkpoint import ReplayCheckpoint, load_model_weights, param_order
from adamdiag.replay.engine import Curve, LazyProgress, StopRule, get_batch, median_stride, optimizer_groups
from adamdiag.replay.protocol import ReplaySpec, Variant, scheduled_lrs
from adamdiag.replay.result import ScopeSeries

if TYPE_CHECKING:
    import torch

# How often (steps) to look whether every variant has gone non-finite or is decided; each look is a
# device sync (and, with a StopRule, one run of the loss detector per undecided variant).
CHECK_EVERY = 16


class VmapUnsupported(Exception):
    """The model/loss cannot run under vmap; use the sequential path."""


@dataclass
class _Stacked:
    """One optimized parameter stacked over K variants, with its Adam state."""

    name: str
    group: int  # param group index
    p: torch.Tensor  # [K, ...] leaf
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    max_exp_avg_sq: torch.Tensor | None
    step: float  # shared by the K slices: they all get a gradient at the same steps
    beta1: float
    weight_decay: float
    maximize: bool
    decoupled: bool
    lr: list[float]  # per variant, float64 like the Python scalars torch.optim uses
    beta2: list[float]
    eps: list[float]
    beta2_t: torch.Tensor  # [K, 1, ...] float32 (what torch casts the Python scalar to)
    one_minus_beta2_t: torch.Tensor
    eps_t: torch.Tensor
    eps2_t: torch.Tensor

    def vhat(self) -> torch.Tensor:
        """v̂ = exp_avg_sq / (1 − β2^step) of the K slices, each with its own β2 (step > 0): the
        reference divides by the Python float 1 − β2^k, so per variant that float, as a column."""
        return self.exp_avg_sq / _col([1 - b**self.step for b in self.beta2], self.p)


def _col(values: list[float], like: torch.Tensor) -> torch.Tensor:
    """Per-variant scalars as a [K, 1, ..., 1] tensor broadcasting against ``like`` ([K, ...])."""
    import torch

    return torch.tensor(values, dtype=torch.float64).to(like.dtype).to(like.device).view(-1, *([1] * (like.dim() - 1)))


def stack_state(
    ckpt: ReplayCheckpoint, model: torch.nn.Module, variants: list[Variant], device: torch.device
) -> list[_Stacked]:
    """Stacked copies of the optimized parameters and their Adam state, one slice per variant."""
    import torch

    order = param_order(ckpt, model)
    named = dict(model.named_parameters())
    per_variant = [optimizer_groups(ckpt, v, device) for v in variants]
    K = len(variants)
    out = []
    for gi, row in enumerate(order):
        g0 = per_variant[0][gi]
        for name, pid in row:
            base = named[name].detach().to(device)
            rep = (K,) + (1,) * base.dim()
            p = base.unsqueeze(0).repeat(rep).requires_grad_(True)
            st = ckpt.optim_state["state"].get(pid) or {}

            def moment(key: str, st=st, base=base, rep=rep) -> torch.Tensor:
                t = st.get(key)
                if t is None:
                    return torch.zeros((K,) + tuple(base.shape), dtype=base.dtype, device=device)
                return t.to(device=device, dtype=base.dtype).unsqueeze(0).repeat(rep)

            amsgrad = bool(g0.get("amsgrad", False))
            step = float(st["step"]) if "step" in st else 0.0
            lr = [float(per_variant[k][gi]["lr"]) for k in range(K)]
            beta2 = [float(per_variant[k][gi]["betas"][1]) for k in range(K)]
            eps = [float(per_variant[k][gi]["eps"]) for k in range(K)]
            out.append(
                _Stacked(
                    name=name,
                    group=gi,
                    p=p,
                    exp_avg=moment("exp_avg"),
                    exp_avg_sq=moment("exp_avg_sq"),
                    max_exp_avg_sq=moment("max_exp_avg_sq") if amsgrad else None,
                    step=step,
                    beta1=float(g0["betas"][0]),
                    weight_decay=float(g0.get("weight_decay", 0.0)),
                    maximize=bool(g0.get("maximize", False)),
                    decoupled=bool(g0.get("decoupled_weight_decay", False)),
                    lr=lr,
                    beta2=beta2,
                    eps=eps,
                    beta2_t=_col(beta2, p),
                    one_minus_beta2_t=_col([1 - b for b in beta2], p),
                    eps_t=_col(eps, p),
                    eps2_t=_col([e * e for e in eps], p),
                )
            )
    return out


def clip_grads_(grads: list[torch.Tensor | None], max_norm: float) -> None:
    """Per-variant ``clip_grad_norm_``: variant k's total norm over its own slices, then scale them."""
    import torch

    gl = [g for g in grads if g is not None]
    if not gl:
        return
    K = gl[0].shape[0]
    # One 0-dim norm per (parameter, variant) slice, as clip_grad_norm_ takes one per parameter.
    norms = torch._foreach_norm([g[k] for g in gl for k in range(K)], 2.0)
    per_param = torch.stack(norms).view(len(gl), K)
    total = torch.stack([torch.linalg.vector_norm(per_param[:, k].contiguous(), 2.0) for k in range(K)])
    coef = torch.clamp(float(max_norm) / (total + 1e-6), max=1.0)
    for g in gl:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))


def adam_update_(s: _Stacked, grad: torch.Tensor) -> None:
    """One Adam/AdamW step on all K slices (torch.optim.adam._single_tensor_adam, vectorized over K)."""
    import torch

    with torch.no_grad():
        g = grad if not s.maximize else -grad
        s.step += 1.0
        p = s.p
        if s.weight_decay != 0:
            if s.decoupled:
                p.mul_(_col([1 - lr * s.weight_decay for lr in s.lr], p))
            else:
                g = g.add(p, alpha=s.weight_decay)
        s.exp_avg.lerp_(g, 1 - s.beta1)
        # addcmul(g, g, value=1-β2) computes (value·g)·g; the same product keeps results bit-equal.
        s.exp_avg_sq.mul_(s.beta2_t).addcmul_(s.one_minus_beta2_t * g, g)
        bias1 = 1 - s.beta1**s.step
        step_size = [lr / bias1 for lr in s.lr]
        bias2_sqrt = _col([(1 - b**s.step) ** 0.5 for b in s.beta2], p)
        if s.max_exp_avg_sq is not None:
            torch.maximum(s.max_exp_avg_sq, s.exp_avg_sq, out=s.max_exp_avg_sq)
            denom = (s.max_exp_avg_sq.sqrt() / bias2_sqrt).add_(s.eps_t)
        else:
            denom = (s.exp_avg_sq.sqrt() / bias2_sqrt).add_(s.eps_t)
        # addcdiv(m, denom, value=-step) computes (value·m)/denom.
        p.add_((_col([-x for x in step_size], p) * s.exp_avg) / denom)


class _LossModule:
    """Wraps ``loss(model, batch)`` as a module forward so functional_call swaps the parameters of
    ``model`` wherever the loss reaches them (model(x), model.encoder(x), model.parameters(), ...)."""

    def __new__(cls, model: torch.nn.Module, loss_fn: Any) -> torch.nn.Module:  # type: ignore[misc]  # a factory
        import torch

        class LossModule(torch.nn.Module):
            _loss_fn: Any  # set with object.__setattr__ below

            def __init__(self) -> None:
                super().__init__()
                self.model = model
                object.__setattr__(self, "_loss_fn", loss_fn)  # not a submodule even if it is a Module

            def forward(self, batch: Any) -> torch.Tensor:
                return self._loss_fn(self.model, batch)

        return LossModule()


def replay_batched(
    spec: ReplaySpec,
    ckpt: ReplayCheckpoint,
    variants: list[Variant],
    steps: int,
    device: torch.device,
    progress: LazyProgress | None = None,
    *,
    named: list[str] | None = None,
    stop: StopRule | None = None,
) -> list[Curve]:
    """All variants at once. Memory: K copies of the optimized parameters and their Adam state, the
    model's other tensors once, one batch (and the K-wide activations of one forward/backward).

    Records what :func:`adamdiag.replay.engine.replay_one` records (tested against it). A variant
    whose blowup is decided keeps running in the stack -- removing a slice would cost a re-stack and
    it is as cheap as the others -- but its curve ends where ``stop`` says, and the pass ends once
    every variant is decided; at the deadline every undecided variant is cut short (``truncated``).
    """
    import torch
    from torch.func import functional_call, vmap

    model = spec.model
    load_model_weights(model, ckpt)
    model.to(device)
    stacked = stack_state(ckpt, model, variants, device)
    K = len(variants)
    original_lrs = [float(g["lr"]) for g in ckpt.param_groups]
    variant_lrs = [[float(g["lr"]) for g in optimizer_groups(ckpt, v, device)] for v in variants]
    wrapper = _LossModule(model, spec.loss)
    tracked = list(named or [])
    stride = median_stride(sum(s.p[0].numel() for s in stacked))

    def loss_of(params: dict[str, torch.Tensor], batch: Any) -> torch.Tensor:
        return functional_call(wrapper, params, (batch,), strict=False, tie_weights=True)

    batched_loss = vmap(loss_of, in_dims=(0, None), randomness="error")
    leaves = [s.p for s in stacked]
    # clip_grad_norm_ sums the per-parameter norms in model.parameters() order, as training does
    position = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    model_order = sorted(range(len(stacked)), key=lambda i: position[stacked[i].name])
    losses = torch.full((steps, K), float("nan"), device=device)
    urms = torch.zeros((steps, K), device=device)
    vsum = torch.zeros((steps, K), device=device)
    below = torch.zeros((steps, K), device=device)
    n_rms = [0] * steps
    n_v = [0] * steps
    # moments for the outcome rule: per scope, sums of g² and v̂_{t-1} (float64, as the reference)
    # over n_mom elements, and the median √v̂ after the update
    scopes = ["global", *tracked]
    g2sum = {k: torch.zeros((steps, K), dtype=torch.float64, device=device) for k in scopes}
    vpsum = {k: torch.zeros((steps, K), dtype=torch.float64, device=device) for k in scopes}
    med = {k: torch.full((steps, K), float("nan"), dtype=torch.float64, device=device) for k in scopes}
    n_mom = {k: [0] * steps for k in scopes}
    stop_at = [steps] * K
    truncated = False
    done = 0
    for i, t in enumerate(range(ckpt.step + 1, ckpt.step + steps + 1)):
        batch = get_batch(spec, t, device)
        try:
            out = batched_loss({f"model.{s.name}": s.p for s in stacked}, batch)
            if out.numel() != K:
                raise VmapUnsupported(f"the loss is not a scalar per variant (shape {tuple(out.shape)})")
            out = out.reshape(K)
            grads_t = torch.autograd.grad(out.sum(), leaves, allow_unused=True)
        except InputError:
            raise
        except VmapUnsupported:
            raise
        except Exception as e:  # noqa: BLE001 - whatever vmap/functional_call cannot do
            raise VmapUnsupported(f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from None
        grads = list(grads_t)
        if spec.clip_grad_norm is not None:
            clip_grads_([grads[i] for i in model_order], spec.clip_grad_norm)
        if spec.lr_schedule is not None:
            lrs = [scheduled_lrs(spec, t, original_lrs, v) for v in variant_lrs]  # [K][groups]
            for s in stacked:
                s.lr = [lrs[k][s.group] for k in range(K)]
        with torch.no_grad():
            losses[i] = out.detach()
            for s, g in zip(stacked, grads):
                if g is None:
                    continue
                dims = tuple(range(1, g.dim()))
                if s.step > 0:
                    vhat = s.vhat()  # v̂_{t-1}: before the update
                    urms[i] += (
                        (g * g / torch.maximum(vhat, s.eps2_t)).sum(dim=dims)
                        if dims
                        else g * g / torch.maximum(vhat, s.eps2_t)
                    )
                    n_rms[i] += s.p[0].numel()
                    vp = vhat.reshape(K, -1)
                    # what Adam puts into v: + wd·p under L2 weight decay (as adam_update_ does)
                    l2 = s.weight_decay and not s.decoupled
                    ge = (-g if s.maximize else g).add(s.p, alpha=s.weight_decay) if l2 else g
                    g2 = (ge * ge).reshape(K, -1).sum(dim=1, dtype=torch.float64)
                    vps = vp.sum(dim=1, dtype=torch.float64)
                    for scope in ("global", s.name) if s.name in g2sum else ("global",):
                        g2sum[scope][i] += g2
                        vpsum[scope][i] += vps
                        n_mom[scope][i] += s.p[0].numel()
                adam_update_(s, g)
            samples: dict[str, list[torch.Tensor]] = {k: [] for k in scopes}
            for s in stacked:
                if s.step <= 0:
                    continue
                vhat = s.vhat()  # v̂_t: after the update
                dims = tuple(range(1, vhat.dim()))
                vsum[i] += vhat.sum(dim=dims) if dims else vhat
                below[i] += (vhat.sqrt() < s.eps_t).sum(dim=dims) if dims else (vhat.sqrt() < s.eps_t).float()
                n_v[i] += s.p[0].numel()
                flat = vhat.reshape(K, -1)
                samples["global"].append(flat[:, ::stride])
                if s.name in samples:
                    samples[s.name].append(flat[:, :: median_stride(flat.shape[1])])
            for scope, parts in samples.items():
                if parts:  # lower median per variant, as torch.median in the reference
                    med[scope][i] = torch.cat(parts, dim=1).median(dim=1).values.double().sqrt()
        done = i + 1
        if progress is not None:
            progress.advance(K)
        if stop is None:
            if done % CHECK_EVERY == 0 and not bool(torch.isfinite(losses[:done]).all(dim=0).any()):
                break
            continue
        if stop.stop_after is not None and done % stop.every == 0:
            L = losses[:done].T.cpu().tolist()
            for k in range(K):
                if stop_at[k] == steps:
                    after = stop.stop_after([float(x) for x in L[k]])
                    if after is not None:
                        stop_at[k] = min(steps, after)
        if all(done >= n for n in stop_at):
            break
        if done < steps and stop.expired():
            truncated = True
            break
    if progress is not None:
        progress.advance(K * (steps - done))
    L = losses[:done].T.cpu().tolist()
    R = urms[:done].T.cpu().tolist()
    V = vsum[:done].T.cpu().tolist()
    B = below[:done].T.cpu().tolist()
    G = {k: g2sum[k][:done].T.cpu().tolist() for k in scopes}
    P = {k: vpsum[k][:done].T.cpu().tolist() for k in scopes}
    M = {k: med[k][:done].T.cpu().tolist() for k in scopes}
    nan = float("nan")
    curves = []
    for k in range(K):
        moments = {
            sc: ScopeSeries(
                g2_mean=[G[sc][k][i] / n_mom[sc][i] if n_mom[sc][i] else nan for i in range(done)],
                vhat_prev_mean=[P[sc][k][i] / n_mom[sc][i] if n_mom[sc][i] else nan for i in range(done)],
                median_sqrt_vhat=[float(x) for x in M[sc][k]],
            )
            for sc in scopes
        }
        c = Curve(
            losses=[float(x) for x in L[k]],
            update_rms=[math.sqrt(R[k][i] / n_rms[i]) if n_rms[i] else nan for i in range(done)],
            sqrt_vhat=[math.sqrt(V[k][i] / n_v[i]) if n_v[i] else nan for i in range(done)],
            frac_eps=[B[k][i] / n_v[i] if n_v[i] else nan for i in range(done)],
            moments=moments,
            truncated=truncated and done < stop_at[k],
        )
        curves.append(c.cut(stop_at[k]).truncate_nonfinite())
    return curves
