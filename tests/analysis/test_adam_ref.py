"""The plain-loop Adam reference reproduces torch.optim.Adam/AdamW in float64."""

from __future__ import annotations

import math

import pytest
import torch

from adamdiag.analysis.adam_ref import RefState, adam_step

CONFIGS = [
    dict(cls="Adam", kw={}),
    dict(cls="Adam", kw={"weight_decay": 0.1}),  # L2: added to the gradient
    dict(cls="AdamW", kw={"weight_decay": 0.1}),  # decoupled
    dict(cls="Adam", kw={"amsgrad": True, "weight_decay": 0.05}),
    dict(cls="AdamW", kw={"amsgrad": True, "betas": (0.8, 0.95), "eps": 1e-3}),
    dict(cls="Adam", kw={"maximize": True, "lr": 0.1}),
    dict(cls="Adam", kw={"foreach": True, "eps": 1e-2}),
    dict(cls="AdamW", kw={"fused": True, "weight_decay": 0.3, "amsgrad": True}),
]

# 2 shared CPU cores: intra-op threads only oversubscribe them (15x slower under load).


@pytest.mark.parametrize("cfg", CONFIGS, ids=[f"{c['cls']}-{sorted(c['kw'])}" for c in CONFIGS])
def test_reference_matches_torch_float64(cfg):
    g = torch.Generator().manual_seed(1)
    shapes = [(3, 4), (5,)]
    params = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64)) for s in shapes]
    kw = {"lr": 0.01, **cfg["kw"]}
    opt = getattr(torch.optim, cfg["cls"])(params, **kw)
    ref_params = [p.detach().reshape(-1).tolist() for p in params]
    ref_states = [RefState() for _ in params]
    betas = kw.get("betas", (0.9, 0.999))
    wd = kw.get("weight_decay", 0.01 if cfg["cls"] == "AdamW" else 0.0)
    for _ in range(6):
        # Gradients of very different scales, some exactly zero: exercises v decay and eps.
        grads = [
            torch.randn(s, generator=g, dtype=torch.float64) * 10 ** float(torch.randint(-6, 2, (1,), generator=g))
            for s in shapes
        ]
        grads[1][0] = 0.0
        for p, gr in zip(params, grads):
            p.grad = gr.clone()
        opt.step()
        for k in range(len(params)):
            ref_params[k] = adam_step(
                ref_params[k],
                grads[k].reshape(-1).tolist(),
                ref_states[k],
                lr=kw["lr"],
                beta1=betas[0],
                beta2=betas[1],
                eps=kw.get("eps", 1e-8),
                weight_decay=wd,
                decoupled=cfg["cls"] == "AdamW",
                amsgrad=kw.get("amsgrad", False),
                maximize=kw.get("maximize", False),
            )
    for k, p in enumerate(params):
        st = opt.state[p]
        torch.testing.assert_close(
            p.detach().reshape(-1), torch.tensor(ref_params[k], dtype=torch.float64), rtol=1e-13, atol=1e-15
        )
        torch.testing.assert_close(
            st["exp_avg"].reshape(-1), torch.tensor(ref_states[k].m, dtype=torch.float64), rtol=1e-13, atol=1e-300
        )
        torch.testing.assert_close(
            st["exp_avg_sq"].reshape(-1), torch.tensor(ref_states[k].v, dtype=torch.float64), rtol=1e-13, atol=1e-300
        )
        if kw.get("amsgrad"):
            torch.testing.assert_close(
                st["max_exp_avg_sq"].reshape(-1),
                torch.tensor(ref_states[k].v_max, dtype=torch.float64),
                rtol=1e-13,
                atol=1e-300,
            )
        assert int(st["step"]) == ref_states[k].step == 6


def test_tf_convention_is_torch_with_rescaled_eps():
    """TF: lr·√bc2/bc1 · m/(√v+ε) equals torch's lr/bc1 · m/(√v/√bc2 + ε/√bc2)."""
    p0 = [0.5, -1.0, 2.0]
    grads = [[1e-3, -2.0, 0.0], [1e-4, 1.0, 1e-9], [0.0, 0.5, 1e-8]]
    eps = 1e-3
    s_tf, s_t = RefState(), RefState()
    p_tf, p_t = list(p0), list(p0)
    for k, gr in enumerate(grads, start=1):
        p_tf = adam_step(p_tf, gr, s_tf, lr=0.1, eps=eps, convention="tf")
        bc2 = 1 - 0.999**k
        p_t = adam_step(p_t, gr, s_t, lr=0.1, eps=eps / math.sqrt(bc2))
        assert p_tf == pytest.approx(p_t, rel=1e-13, abs=1e-15)
    # And it really differs from torch with the same eps (eps matters here).
    s_same = RefState()
    p_same = list(p0)
    for gr in grads:
        p_same = adam_step(p_same, gr, s_same, lr=0.1, eps=eps)
    assert p_same != pytest.approx(p_tf, rel=1e-6)


def test_reference_rejects_unknown_convention():
    with pytest.raises(ValueError):
        adam_step([1.0], [1.0], RefState(), convention="keras")
