"""Writes tests/fixtures/torchao/: small real checkpoints of torchao's low-bit Adam optimizers and the moments
torchao itself dequantizes from the live state, so that adamdiag's torchao reader (which runs without torchao)
is tested against the library.

Each file is ``torch.save({"model", "optimizer", "step"})`` after 5 steps of a small MLP whose two weight
matrices (5120 elements each: ≥ 4096 and a multiple of every block size) hold torchao's quantized state and
whose biases / LayerNorm / last layer (≤ 256 elements) keep plain float32 state:

* ``adamw8bit.pt``          — ``torchao.optim.AdamW8bit`` (OptimState8bit; torchao's default weight decay 0.01);
  ``adamw8bit_legacy_format.pt``: the same saved with ``_use_new_zipfile_serialization=False``
* ``adam8bit.pt``           — ``Adam8bit(betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01)`` (L2 into the gradient;
  amsgrad=True fails in torchao 0.18's compiled step on a quantized max_exp_avg_sq, so no such file)
* ``adamw4bit.pt``          — ``AdamW4bit`` (OptimState4bit: two codes per byte, blocks of 128)
* ``adamwfp8.pt``           — ``AdamWFp8`` (OptimStateFp8: float8 e4m3 codes)
* ``hf_adamw_torch_4bit/checkpoint-3/`` — ``transformers.Trainer(optim="adamw_torch_4bit")`` on a 1-layer GPT-2
* ``dcp_adamw8bit/`` — AdamW8bit's training saved with ``torch.distributed.checkpoint`` (one process)

``truth.json``: per file and parameter name, what torchao reports for the live ``optimizer.state[p]``: the kind
of state, step, lr, β2, eps, weight decay, the sha256 of the float32 bytes of ``exp_avg`` / ``exp_avg_sq`` /
``max_exp_avg_sq`` as the subclass's own ``dequantize()`` returns them, and float64 statistics of them: √v̂
quantiles (nearest rank, v̂ = v/(1-β2^t), v the denominator's: max_exp_avg_sq under amsgrad), mean |m|, mean v.

``--older`` writes held-out files of the installed (older) torchao into the folder (``torchao-<version>_*.pt`` +
``truth.json`` there), with the classes where that version keeps them (``torchao.prototype.low_bit_optim``
before 0.11).

torchao is installed beside the project's environment, not into it (``pip install --target DIR --no-deps
torchao==0.18.0``; 0.11.0 and 0.9.0 for ``--older``), and put on PYTHONPATH::

    PYTHONPATH=DIR python tools/runlab/make_torchao_fixtures.py tests/fixtures/torchao
    PYTHONPATH=DIR09 python tools/runlab/make_torchao_fixtures.py --older tests/fixtures/torchao/older
"""

from __future__ import annotations

import argparse
import hashlib
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
    return nn.Sequential(nn.Linear(64, 80), nn.ReLU(), nn.Linear(80, 64), nn.LayerNorm(64), nn.Linear(64, 4))


def train(model: nn.Module, opt: Any, steps: int = STEPS) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(32, 64, generator=g), torch.randn(32, 4, generator=g)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


def values(x: torch.Tensor) -> torch.Tensor:
    """A state tensor's values as torchao computes with them: its subclass's own dequantize(), else itself."""
    return (x.dequantize() if hasattr(x, "codes") else x).float()


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
            if not st:
                continue
            t, b2 = int(st["step"]), float(grp["betas"][1])
            m, v = values(st["exp_avg"]), values(st["exp_avg_sq"])
            den = values(st["max_exp_avg_sq"]) if grp.get("amsgrad") and "max_exp_avg_sq" in st else v
            out[names[id(p)]] = {
                "kind": type(st["exp_avg_sq"]).__name__,
                "step": t,
                "lr": float(grp["lr"]),
                "beta2": b2,
                "eps": float(grp["eps"]),
                "weight_decay": float(grp["weight_decay"]),
                "sha256": {
                    k: hashlib.sha256(values(st[k]).contiguous().numpy().tobytes()).hexdigest()
                    for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
                    if k in st
                },
                "sqrt_vhat_q": quantiles((den.double() / (1 - b2**t)).sqrt()),
                "m_abs_mean": float(m.double().abs().mean()),
                "v_mean": float(v.double().mean()),
            }
    return out


def save(out: Path, name: str, make: Any, *, legacy: str | None = None) -> dict[str, Any]:
    model = net()
    opt = make(model.parameters())
    train(model, opt)
    ck = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": STEPS}
    torch.save(ck, out / name)
    if legacy:  # the same state in torch's legacy (pre-1.6) format: no zip to search for torchao's classes
        torch.save(ck, out / legacy, _use_new_zipfile_serialization=False)
    return truth(model, opt)


def save_dcp(folder: Path, make: Any) -> dict[str, Any]:
    """The same training saved with torch.distributed.checkpoint (one process, ``no_dist``), as torchtune's and
    torchtitan's distributed recipes save: each torchao state is a stored item pickling its subclass."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    model = net()
    opt = make(model.parameters())
    train(model, opt)
    osd = get_optimizer_state_dict(model, opt)
    dcp.save({"model": get_model_state_dict(model), "optimizer": osd}, checkpoint_id=str(folder), no_dist=True)
    return truth(model, opt)


def write_hf(out: Path) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).parent))
    from make_checkpoints import train_hf_with_optim

    return truth(*train_hf_with_optim(out, "adamw_torch_4bit"))


def optimizers() -> Any:
    try:
        import torchao.optim as ao

        ao.AdamW8bit  # noqa: B018 - 0.11 on: torchao.optim
    except (ImportError, AttributeError):
        import torchao.prototype.low_bit_optim as ao
    return ao


def main() -> None:
    import torchao

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--older", action="store_true", help="held-out files of the installed (older) torchao")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    ao = optimizers()
    if a.older:
        v = torchao.__version__.split("+")[0]
        makers = {
            f"torchao-{v}_adamw8bit.pt": lambda ps: ao.AdamW8bit(ps, lr=1e-2),
            f"torchao-{v}_adamw4bit.pt": lambda ps: ao.AdamW4bit(ps, lr=1e-2),
        }
    else:
        makers = {
            "adamw8bit.pt": lambda ps: ao.AdamW8bit(ps, lr=1e-2),
            "adam8bit.pt": lambda ps: ao.Adam8bit(ps, lr=1e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01),
            "adamw4bit.pt": lambda ps: ao.AdamW4bit(ps, lr=1e-2),
            "adamwfp8.pt": lambda ps: ao.AdamWFp8(ps, lr=1e-2),
        }
    truth_file = a.out / "truth.json"
    # --older runs once per version into one folder: each adds its files
    out: dict[str, Any] = json.loads(truth_file.read_text()) if a.older and truth_file.exists() else {}
    out.setdefault("writers", {})
    out.setdefault("files", {})
    writer = f"torchao {torchao.__version__}, torch {torch.__version__}"
    for name, make in makers.items():
        legacy = "adamw8bit_legacy_format.pt" if name == "adamw8bit.pt" else None
        out["files"][name] = save(a.out, name, make, legacy=legacy)
        out["writers"][name] = writer
        if legacy:
            out["files"][legacy], out["writers"][legacy] = out["files"][name], writer
    if not a.older:
        out["files"]["dcp_adamw8bit"] = save_dcp(a.out / "dcp_adamw8bit", lambda ps: ao.AdamW8bit(ps, lr=1e-2))
        out["writers"]["dcp_adamw8bit"] = writer
        name = "hf_adamw_torch_4bit/checkpoint-3"
        import transformers

        out["files"][name] = write_hf(a.out / "hf_adamw_torch_4bit")
        out["writers"][name] = f"{writer}, transformers {transformers.__version__}"
    truth_file.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
