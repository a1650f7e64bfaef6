"""Writes tests/fixtures/lookalikes/: optimizer checkpoints of Adam's look-alikes — optimizers whose per-parameter
state has Adam's own keys (``exp_avg``, ``exp_avg_sq``) but whose update, or whose v, is not Adam's — written by the
libraries users train with: timm's ``timm.optim``, torch-optimizer's ``torch_optimizer`` and galore-torch's
``GaLoreAdamW`` (a copy of transformers' legacy ``AdamW``), plus a few of their
optimizers with other keys for the refusal messages.

Each file is ``torch.save({"model", "optimizer"})`` after 3 steps of a small MLP (8→16→4) with the optimizer's
defaults (lr 1e-3); ``dcp/timm_Lamb`` and ``dcp/torch_optimizer_Yogi`` the same trainings saved with
``torch.distributed.checkpoint`` (one process). ``truth.json``: per file, the library and version, the optimizer class, its state's and its
param groups' keys, and the mean of ``exp_avg_sq`` and of ``|exp_avg|`` of every parameter, from the live state.

timm's package ``__init__`` imports torchvision (its models and data), which its optimizers do not use: the
script registers ``timm`` and ``timm.optim`` as bare namespace packages and imports each optimizer module alone.
Both libraries are installed beside the project's environment (``pip install --target DIR --no-deps timm==1.0.31
torch-optimizer==0.3.0 pytorch_ranger galore-torch==1.0``; torch-optimizer imports pytorch_ranger, galore-torch
transformers, which the project's test environment has)::

    PYTHONPATH=DIR python tools/runlab/make_lookalike_fixtures.py DIR tests/fixtures/lookalikes
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import types
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

STEPS = 3
TIMM = {  # module -> classes
    "adamw": ["AdamWLegacy"],
    "adamp": ["AdamP"],
    "adan": ["Adan"],
    "adopt": ["Adopt"],
    "lamb": ["Lamb"],
    "laprop": ["LaProp"],
    "mars": ["Mars"],
    "nadam": ["NAdamLegacy"],
    "nadamw": ["NAdamW"],
    "nvnovograd": ["NvNovoGrad"],
    "radam": ["RAdamLegacy"],
    "adafactor_bv": ["AdafactorBigVision"],
    "adabelief": ["AdaBelief"],
}
TORCH_OPTIMIZER = [
    "AdaBound",
    "AdaMod",
    "AdamP",
    "DiffGrad",
    "Lamb",
    "NovoGrad",
    "QHAdam",
    "RAdam",
    "Ranger",
    "RangerQH",
    "RangerVA",
    "SWATS",
    "Yogi",
    "MADGRAD",
]


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def train(model: nn.Module, opt: Any) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        opt.zero_grad()
        ((model(torch.randn(16, 8, generator=g)) - torch.randn(16, 4, generator=g)) ** 2).mean().backward()
        opt.step()


def timm_classes(site: Path) -> dict[str, type]:
    for pkg in ("timm", "timm.optim"):
        mod = types.ModuleType(pkg)
        mod.__path__ = [str(site / pkg.replace(".", "/"))]
        sys.modules[pkg] = mod
    out = {}
    for mod_name, classes in TIMM.items():
        mod = importlib.import_module(f"timm.optim.{mod_name}")
        out.update({c: getattr(mod, c) for c in classes})
    return out


def write(out: Path, name: str, cls: type, lib: str) -> dict[str, Any]:
    model = net()
    opt = cls(model.parameters(), lr=1e-3)
    train(model, opt)
    sd = opt.state_dict()
    torch.save({"model": model.state_dict(), "optimizer": sd}, out / name)
    names = [n for n, _ in model.named_parameters()]
    moments = {}
    for i, st in sd["state"].items():
        if "exp_avg" in st and "exp_avg_sq" in st:
            moments[names[i]] = {
                "m_abs_mean": float(st["exp_avg"].double().abs().mean()),
                "v_mean": float(st["exp_avg_sq"].double().mean()),
            }
    return {
        "library": f"{lib} {metadata.version(lib)}",
        "class": cls.__name__,
        "state_keys": sorted({str(k) for st in sd["state"].values() for k in st}),
        "group_keys": sorted({str(k) for grp in sd["param_groups"] for k in grp} - {"params"}),
        "moments": moments,
    }


def write_galore(out: Path) -> dict[str, Any]:
    """galore-torch's GaLoreAdamW: ``GaLore.pt`` with a GaLore param group (the 16×8 weight projected to rank 4)
    beside a plain one; ``AdamW_transformers_legacy.pt`` with plain groups only — galore-torch's AdamW is a copy
    of transformers' legacy ``transformers.AdamW`` (``correct_bias``; eps on the un-corrected √v)."""
    # its package __init__ imports bitsandbytes (GaLoreAdamW8bit): the AdamW module is imported alone
    spec = importlib.util.find_spec("galore_torch")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("galore-torch is not on PYTHONPATH")
    mod = types.ModuleType("galore_torch")
    mod.__path__ = list(spec.submodule_search_locations)
    sys.modules["galore_torch"] = mod
    GaLoreAdamW = importlib.import_module("galore_torch.adamw").AdamW  # noqa: N806

    truth = {}
    for name, galore in (("GaLore.pt", True), ("AdamW_transformers_legacy.pt", False)):
        model = net()
        w, rest = model[0].weight, [p for n, p in model.named_parameters() if n != "0.weight"]
        groups = (
            [{"params": rest}, {"params": [w], "rank": 4, "update_proj_gap": 2, "scale": 0.25, "proj_type": "std"}]
            if galore
            else [{"params": [w, *rest]}]
        )
        opt = GaLoreAdamW(groups, lr=1e-3, weight_decay=0.01)
        train(model, opt)
        sd = opt.state_dict()
        torch.save({"model": model.state_dict(), "optimizer": sd}, out / name)
        by_param = {id(p): n for n, p in model.named_parameters()}
        moments = {}
        for grp in opt.param_groups:
            for p in grp["params"]:
                st = opt.state[p]
                moments[by_param[id(p)]] = {
                    "m_abs_mean": float(st["exp_avg"].double().abs().mean()),
                    "v_mean": float(st["exp_avg_sq"].double().mean()),
                }
        truth[f"{out.name}/{name}"] = {
            "library": f"galore-torch {metadata.version('galore-torch')}",
            "class": "GaLoreAdamW",
            "state_keys": sorted({str(k) for st in sd["state"].values() for k in st}),
            "group_keys": sorted({str(k) for grp in sd["param_groups"] for k in grp} - {"params"}),
            "moments": moments,
        }
    return truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("site", type=Path, help="the folder timm is installed in (its timm/optim is imported alone)")
    ap.add_argument("out", type=Path)
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    truth: dict[str, Any] = {}
    for lib, classes in (("timm", timm_classes(a.site)), ("torch-optimizer", None)):
        if classes is None:
            import torch_optimizer

            classes = {c: getattr(torch_optimizer, c) for c in TORCH_OPTIMIZER}
        folder = a.out / lib.replace("-", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for name, cls in classes.items():
            truth[f"{folder.name}/{name}.pt"] = write(folder, f"{name}.pt", cls, lib)
    # the same optimizers saved with torch.distributed.checkpoint (one process): found by their DCP keys
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    for lib, name in (("timm", "Lamb"), ("torch_optimizer", "Yogi")):
        cls = timm_classes(a.site)[name] if lib == "timm" else getattr(importlib.import_module("torch_optimizer"), name)
        model = net()
        opt = cls(model.parameters(), lr=1e-3)
        train(model, opt)
        folder = a.out / "dcp" / f"{lib}_{name}"
        dcp.save({"optimizer": get_optimizer_state_dict(model, opt)}, checkpoint_id=str(folder), no_dist=True)
        truth[f"dcp/{lib}_{name}"] = {**truth[f"{lib}/{name}.pt"], "saved_with": "torch.distributed.checkpoint"}
    galore = a.out / "galore_torch"
    galore.mkdir(parents=True, exist_ok=True)
    truth.update(write_galore(galore))
    (a.out / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")


if __name__ == "__main__":
    main()
