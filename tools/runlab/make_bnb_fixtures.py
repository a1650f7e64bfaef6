"""Writes tests/fixtures/bnb/: small real bitsandbytes optimizer checkpoints and the live state that
bitsandbytes itself reports for them, so that adamdiag's bitsandbytes reader (which runs without
bitsandbytes) is tested against the library.

Each file is ``torch.save({"model", "optimizer", "step"})`` after 5 steps of a small MLP whose two
weight matrices (5120 and 1280 elements) are over ``min_8bit_size=256`` (8-bit blockwise state) and
whose biases/norm (≤ 80 elements) keep bitsandbytes' 32-bit state:

* ``adam8bit.pt``         — ``bnb.optim.Adam8bit``
* ``paged_adamw8bit.pt``  — ``bnb.optim.PagedAdamW8bit`` (weight decay 0.1; β2 0.99, eps 1e-6)
* ``lion8bit.pt``         — ``bnb.optim.Lion8bit`` (one state: must be refused)
* ``hf_adamw_bnb_8bit/checkpoint-3/`` — ``transformers.Trainer(optim="adamw_bnb_8bit")`` on a 1-layer GPT-2

``truth.json``: per file and parameter name, the step, lr, β2, eps and float64 statistics of the
moments as bitsandbytes dequantizes them (``bitsandbytes.functional.dequantize_blockwise`` on the
live ``optimizer.state[p]``): √v̂ quantiles (nearest rank, v̂ = v/(1-β2^t)), mean |m|, mean v.

Needs bitsandbytes (CPU wheel; ``pip install bitsandbytes`` leaves a CPU torch alone)::

    python tools/runlab/make_bnb_fixtures.py tests/fixtures/bnb
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

STEPS = 5


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 80), nn.ReLU(), nn.Linear(80, 16), nn.LayerNorm(16), nn.Linear(16, 4))


def train(model: nn.Module, opt: Any, steps: int = STEPS) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(32, 64, generator=g), torch.randn(32, 4, generator=g)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


def dequantized(st: dict, k: int) -> torch.Tensor:
    """state1 (k=1, m) or state2 (k=2, v) as bitsandbytes itself reads it."""
    import bitsandbytes.functional as F

    s = st[f"state{k}"]
    if s.dtype != torch.uint8:
        return s.float()
    return F.dequantize_blockwise(s, absmax=st[f"absmax{k}"], code=st[f"qmap{k}"], blocksize=256).float()


def quantiles(x: torch.Tensor) -> dict[str, float]:
    s = torch.sort(x.double().flatten()).values
    n = s.numel()
    return {
        k: float(s[round(q * (n - 1))])
        for k, q in (("min", 0.0), ("p01", 0.01), ("p50", 0.5), ("p99", 0.99), ("max", 1.0))
    }


def truth(model: nn.Module, opt: Any) -> dict[str, Any]:
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for grp in opt.param_groups:
        for p in grp["params"]:
            st = opt.state.get(p)
            if not st or "state2" not in st:
                continue
            t, b2 = int(st["step"]), float(grp["betas"][1])
            m, v = dequantized(st, 1).double(), dequantized(st, 2).double()
            out[names[id(p)]] = {
                "step": t,
                "lr": float(grp["lr"]),
                "beta2": b2,
                "eps": float(grp["eps"]),
                "weight_decay": float(grp["weight_decay"]),
                "bits": 8 if st["state2"].dtype == torch.uint8 else 32,
                "sqrt_vhat_q": quantiles((v / (1 - b2**t)).sqrt()),
                "m_abs_mean": float(m.abs().mean()),
                "v_mean": float(v.mean()),
            }
    return out


def write_hf(out: Path) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).parent))
    from make_checkpoints import train_hf_with_optim

    return truth(*train_hf_with_optim(out, "adamw_bnb_8bit"))


def main() -> None:
    import bitsandbytes as bnb

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    out = ap.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    makers = {
        "adam8bit.pt": lambda ps: bnb.optim.Adam8bit(ps, lr=1e-2, min_8bit_size=256),
        "paged_adamw8bit.pt": lambda ps: bnb.optim.PagedAdamW8bit(
            ps, lr=1e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.1, min_8bit_size=256
        ),
        "lion8bit.pt": lambda ps: bnb.optim.Lion8bit(ps, lr=1e-3, min_8bit_size=256),
    }
    result: dict[str, Any] = {"bitsandbytes": bnb.__version__, "torch": torch.__version__}
    for name, make in makers.items():
        model = net()
        opt = make(model.parameters())
        train(model, opt)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": STEPS}, out / name)
        result[name] = truth(model, opt)
    result["hf_adamw_bnb_8bit/checkpoint-3"] = write_hf(out / "hf_adamw_bnb_8bit")
    (out / "truth.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
