"""Two more model families for runlab: a small CNN and a tiny transformer (issue #6's validation matrix).

Both follow the recipe of ``tools/runlab/multitask.py``: the targets come from a fixed random *teacher* of the
same architecture, so the student can fit them (almost) exactly. With full-batch training the loss keeps
falling, gradients shrink for a long time, g² ≪ v̂ and √v̂ decays — the v-collapse regime — and the same
models trained with mini-batches, a larger eps or a much higher learning rate give the look-alikes.

* ``cnn``: two tanh conv layers on small single-channel synthetic images, a dense layer, then a
  soft-label class head (KL to the teacher's softmax) and a scalar regression head (MSE).
* ``transformer``: continuous token vectors -> linear embedding + learned positions -> 1-2 pre-LN
  transformer blocks (d_model 32) -> a per-token regression head (MSE) and a mean-pooled class head (KL).

Importing this module registers both with :func:`runlab.register_family`; runlab's ``_FAMILY_MODULES``
maps the names back to this module so a bare ``config.json`` finds them again (replay).
Each size is a few thousand to ~20k parameters: CPU-cheap (a few ms per full-batch step).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

if str(Path(__file__).resolve().parent) not in sys.path:  # loadable by file path (replay) and as a module
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import runlab  # noqa: E402
from runlab import Family, RunConfig  # noqa: E402

CNN = "cnn"
TRANSFORMER = "transformer"

# ----------------------------------------------------------------------------------------------------------
# shared pieces


def _recipe(cfg: RunConfig, defaults: dict[str, Any]) -> dict[str, Any]:
    d = dict(defaults)
    d.update(cfg.data)
    return d


def _teacher(build: Any, dims: dict[str, Any], seed: int, scale: float) -> nn.Module:
    """A fixed random network of the student's architecture; ``scale`` multiplies its weights (larger =
    a harder, more non-linear target). Built under a forked RNG so the caller's stream is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        teacher = build(**dims).double()
    with torch.no_grad():
        for p in teacher.parameters():
            p.mul_(scale)
    return teacher


def _kl_soft(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ softmax(logits)) = cross-entropy against soft targets minus their entropy: reads 0 at a perfect
    fit, like MSE, with exactly the cross-entropy's gradient.

    Computed in float64 and cast back: in float32, CE − entropy cancels two O(1) numbers, so near a perfect
    fit the result is rounding noise of ~1e-7 and goes *negative* — a log-scale loss curve (and any blowup
    detector) then sees a fake 1e20x jump."""
    logq = F.log_softmax(logits.double(), dim=-1)
    pd = p.double()
    kl = (pd * (pd.clamp_min(1e-30).log() - logq)).sum(-1).mean()
    return kl.clamp_min(0.0).to(logits.dtype)


def _select(data: dict[str, Any], idx: torch.Tensor) -> dict[str, Any]:
    return {k: (v[idx] if isinstance(v, torch.Tensor) else v) for k, v in data.items()}


def _num_examples(data: dict[str, Any]) -> int:
    return int(data["x"].shape[0])


# ----------------------------------------------------------------------------------------------------------
# small CNN

CNN_SIZES: dict[str, dict[str, Any]] = {
    # image side, conv channels, dense width, classes
    "tiny": {"side": 8, "channels": 4, "hidden": 32, "classes": 4},
    "small": {"side": 8, "channels": 8, "hidden": 64, "classes": 4},
    "medium": {"side": 12, "channels": 16, "hidden": 64, "classes": 8},
}
CNN_DATA: dict[str, Any] = {
    "n_examples": 128,
    "data_seed": 0,
    "teacher_seed": 2000,
    "teacher_scale": 1.0,
    "smooth": True,
}


class SmallCNN(nn.Module):
    """conv3x3(1→c) → tanh → conv3x3 stride 2 (c→c) → tanh → dense → tanh → {class logits, scalar}."""

    def __init__(self, side: int, channels: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, stride=2)
        half = (side + 1) // 2
        self.fc = nn.Linear(channels * half * half, hidden)
        self.cls = nn.Linear(hidden, classes)
        self.reg = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.tanh(self.conv1(x))
        h = torch.tanh(self.conv2(h))
        h = torch.tanh(self.fc(h.flatten(1)))
        return {"cls": self.cls(h), "reg": self.reg(h)}


def _cnn_dims(cfg: RunConfig) -> dict[str, Any]:
    d = dict(CNN_SIZES[cfg.size])
    d.update(cfg.model)
    return d


def cnn_build_model(cfg: RunConfig) -> nn.Module:
    """Student CNN (runlab seeds the RNG before calling this)."""
    return SmallCNN(**_cnn_dims(cfg))


def cnn_build_data(cfg: RunConfig) -> dict[str, Any]:
    """Synthetic images (Gaussian noise, optionally smoothed by a 3x3 box filter so neighbouring pixels
    correlate like in real images) and the teacher's soft labels / scalar output as targets.
    Independent of cfg.seed (the init seed), so runs differing only in optimizer settings share data."""
    rec = _recipe(cfg, CNN_DATA)
    dims = _cnn_dims(cfg)
    g = torch.Generator().manual_seed(int(rec["data_seed"]))
    side = int(dims["side"])
    x = torch.randn(int(rec["n_examples"]), 1, side, side, generator=g, dtype=torch.float64)
    if rec["smooth"]:
        x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1) * 3.0  # keep unit-ish variance
    teacher = _teacher(SmallCNN, dims, int(rec["teacher_seed"]), float(rec["teacher_scale"]))
    with torch.no_grad():
        out = teacher(x)
    dtype = runlab._dtype(cfg)
    return {"x": x.to(dtype), "p": out["cls"].softmax(-1).to(dtype), "y": out["reg"].to(dtype)}


def cnn_head_losses(model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """cls: KL to the teacher's soft labels; reg: MSE to the teacher's scalar. Summed in this order."""
    out = model(batch["x"])
    return {"cls": _kl_soft(out["cls"], batch["p"]), "reg": F.mse_loss(out["reg"], batch["y"])}


# ----------------------------------------------------------------------------------------------------------
# tiny transformer

TFM_SIZES: dict[str, dict[str, Any]] = {
    # sequence length, input features, d_model, heads, layers, classes
    "tiny": {"seq": 8, "d_in": 8, "d_model": 32, "heads": 2, "layers": 1, "classes": 4},
    "small": {"seq": 8, "d_in": 8, "d_model": 32, "heads": 4, "layers": 2, "classes": 4},
}
TFM_DATA: dict[str, Any] = {"n_examples": 64, "data_seed": 0, "teacher_seed": 3000, "teacher_scale": 1.0}


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + MLP(LN(x)) (GELU, 2x width).

    Attention is written out (not nn.MultiheadAttention) so the parameter names are plain and the
    computation is the textbook one: softmax(QKᵀ/√d_head)·V over all positions (no mask: a set/sequence
    regression task, every token may look at every other)."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, 2 * d_model)
        self.fc2 = nn.Linear(2 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        hd = d // self.heads
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, hd).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    """Linear token embedding + learned positions → blocks → final LN → per-token scalar + pooled logits."""

    def __init__(self, seq: int, d_in: int, d_model: int, heads: int, layers: int, classes: int) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, d_model)
        self.pos = nn.Parameter(0.1 * torch.randn(seq, d_model))
        self.blocks = nn.ModuleList([Block(d_model, heads) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d_model)
        self.tok = nn.Linear(d_model, 1)
        self.cls = nn.Linear(d_model, classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.embed(x) + self.pos
        for blk in self.blocks:
            h = blk(h)
        h = self.ln_f(h)
        return {"tok": self.tok(h).squeeze(-1), "cls": self.cls(h.mean(1))}


def _tfm_dims(cfg: RunConfig) -> dict[str, Any]:
    d = dict(TFM_SIZES[cfg.size])
    d.update(cfg.model)
    return d


def tfm_build_model(cfg: RunConfig) -> nn.Module:
    """Student transformer (runlab seeds the RNG before calling this)."""
    return TinyTransformer(**_tfm_dims(cfg))


def tfm_build_data(cfg: RunConfig) -> dict[str, Any]:
    """Gaussian token vectors; targets are the teacher's per-token outputs and pooled soft labels."""
    rec = _recipe(cfg, TFM_DATA)
    dims = _tfm_dims(cfg)
    g = torch.Generator().manual_seed(int(rec["data_seed"]))
    x = torch.randn(int(rec["n_examples"]), int(dims["seq"]), int(dims["d_in"]), generator=g, dtype=torch.float64)
    teacher = _teacher(TinyTransformer, dims, int(rec["teacher_seed"]), float(rec["teacher_scale"]))
    with torch.no_grad():
        out = teacher(x)
    dtype = runlab._dtype(cfg)
    return {"x": x.to(dtype), "y": out["tok"].to(dtype), "p": out["cls"].softmax(-1).to(dtype)}


def tfm_head_losses(model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """tok: per-token MSE to the teacher; cls: KL to the teacher's pooled soft labels."""
    out = model(batch["x"])
    return {"tok": F.mse_loss(out["tok"], batch["y"]), "cls": _kl_soft(out["cls"], batch["p"])}


# ----------------------------------------------------------------------------------------------------------
# registration

runlab.register_family(
    CNN,
    Family(
        build_model=cnn_build_model,
        build_data=cnn_build_data,
        num_examples=_num_examples,
        select=_select,
        head_losses=cnn_head_losses,
        module="families",
    ),
)
runlab.register_family(
    TRANSFORMER,
    Family(
        build_model=tfm_build_model,
        build_data=tfm_build_data,
        num_examples=_num_examples,
        select=_select,
        head_losses=tfm_head_losses,
        module="families",
    ),
)


def adamdiag_replay(checkpoint: str) -> dict[str, Any]:
    """adamdiag replay entry point for runs of these families (see :func:`runlab.adamdiag_replay`)."""
    return runlab.adamdiag_replay(checkpoint)


__all__ = ["SmallCNN", "TinyTransformer", "CNN", "TRANSFORMER", "CNN_SIZES", "TFM_SIZES", "adamdiag_replay"]
