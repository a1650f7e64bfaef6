"""oodlab: small CPU training runs from model families *outside* the validation matrix (session 11 probe).

The validation matrix (``bench/accuracy.py`` + ``tools/runlab/``) trains three families (an MLP multi-task
net, a small CNN, a tiny transformer) with one training loop and one logging style. This module trains
other families the way users write them — each with its own TensorBoard tags, logging cadence, checkpoint
file names, schedule, clipping or gradient accumulation — so that ``adamdiag scan`` can be probed on runs
its rules never saw:

* ``logreg``: logistic regression (a linear model, convex); separable data or 10% flipped labels.
* ``gru_lm``: a one-layer GRU language model on a Zipf token stream (order-1 Markov), mini-batches of
  random windows, cross-entropy, optional gradient clipping (logs ``clip_grad_norm_``'s pre-clip norm).
* ``conv_ae``: a small convolutional autoencoder on smooth synthetic images, MSE.
* ``resnet_bn``: a small ResNet with BatchNorm on synthetic template-plus-noise images, cross-entropy.
* ``matfac``: matrix factorisation (user/item embeddings + biases) on observed entries of a noisy
  low-rank matrix, MSE.
* ``mlp_reg``: an MLP regression with a cosine (or warm-restart) schedule and gradient accumulation.
* ``bow_clf``: a bag-of-words classifier (``EmbeddingBag``) on Zipf-distributed tokens: sparse row gradients
  (session 15; designed and scored after every rule it is scored on, as a held-out family).

Designs that make gradients *return* after a long quiet phase do it the way real runs do: a term switched on
late in the loss (an L2 penalty, logreg), a drifting data stream (matfac), a denoising phase that adds
input noise (conv_ae), an lr warm restart (mlp_reg). ``event_at`` is that step (or the corrupted batch's).

**Step convention** (the same as runlab's, which the labeller's rules assume): steps are 1-based; the loss
logged at step t is the loss on the batch(es) of update t before that update; a checkpoint written after t
updates stores ``'step': t``. Every batch, every bit of randomness and the lr are pure functions of
(spec, step), so a run can be resumed from any checkpoint with a changed eps or lr scale and continue on
exactly the original batches — what the counterfactual labeller needs.

**Counterfactual labels** (:func:`label_run`) follow ``tools/runlab/counterfactual.py`` rule for rule and
import its pieces (``decide_label``, ``judge_at_risk``, ``horizon_end``/``train_end``, ``at_risk_window``,
``_confirmed``, ``VARIANTS``) and the lab's blowup rule ``runlab.detect_blowup``; only the training step is
this module's (runlab's ``_Branch`` is bound to runlab's own configs). The variants start from the run's own
checkpoint file (the last one before the live blowup), not a re-trained copy; the original run is
re-trained from it too, and must blow up where the live run did (``reproduces_live_blowup``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_RUNLAB = Path(__file__).resolve().parent.parent / "runlab"
if str(_RUNLAB) not in sys.path:
    sys.path.insert(0, str(_RUNLAB))

import counterfactual as cf  # noqa: E402
import runlab  # noqa: E402

SPEC_FILE = "lab_spec.json"
TRUTH_FILE = "lab_truth.json"


@dataclass
class Spec:
    """One run: family, optimizer, schedule, logging style knobs and the design's event."""

    name: str
    family: str
    intent: str  # what the design is meant to show: v_collapse | lr_too_high | bad_batch | healthy
    note: str = ""
    steps: int = 2000
    lr: float = 1e-3
    eps: float = 1e-8
    betas: tuple[float, float] = (0.9, 0.999)
    optimizer: str = "adam"  # adam | adamw
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | warmup | cosine (linear warm-up then cosine) | sgdr (warm restarts)
    warmup: int = 0
    period: int = 0  # sgdr: cycle length
    min_lr_frac: float = 0.0
    batch: int | None = None  # None = full batch
    accum: int = 1  # gradient accumulation: micro-batches per update
    clip: float | None = None
    log_every: int = 1
    hist_every: int = 0
    ckpt_every: int = 200
    seed: int = 0
    event_at: int | None = None
    event_scale: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Spec:
        d = dict(d)
        d["betas"] = tuple(d["betas"])
        return cls(**d)


def lr_at(spec: Spec, t: int) -> float:
    """The lr of update t (a pure function of the step, like the schedulers users call once per step)."""
    if spec.schedule == "constant":
        return spec.lr
    if spec.schedule == "warmup":
        return spec.lr * min(1.0, t / max(spec.warmup, 1))
    lo = spec.lr * spec.min_lr_frac
    if spec.schedule == "cosine":
        if t <= spec.warmup:
            return spec.lr * t / spec.warmup
        frac = (t - spec.warmup) / max(spec.steps - spec.warmup, 1)
        return lo + (spec.lr - lo) * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))
    if spec.schedule == "sgdr":  # torch's CosineAnnealingWarmRestarts(T_0=period), stepped per update
        frac = ((t - 1) % spec.period) / spec.period
        return lo + (spec.lr - lo) * 0.5 * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"unknown schedule {spec.schedule!r}")


def _gen(spec: Spec, t: int, micro: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(spec.seed * 1_000_003 + t * 17 + micro)


def _rows(n: int, spec: Spec, t: int, micro: int) -> torch.Tensor | None:
    """Mini-batch row indices of update t (None = full batch)."""
    if spec.batch is None:
        return None
    return torch.randint(0, n, (spec.batch,), generator=_gen(spec, t, micro))


# ----------------------------------------------------------------------------------------------------------
# families: model(spec), data(spec), batch(spec, data, t, micro), loss(spec, model, batch, t), and the way
# the family's "user" logs (tags, cadence, checkpoint names)


class Family:
    """Base: subclasses define the model, data, batches and loss, and their user's logging style."""

    loss_tag = "loss"
    lr_tag: str | None = "lr"
    gn_tag: str | None = "grad_norm"
    hist: str | None = None  # "grad" (grads/<name>) | "weight" (weights/<name>) | None
    ckpt_name = "checkpoints/step_{t}.pt"

    def model(self, spec: Spec) -> nn.Module:
        raise NotImplementedError

    def data(self, spec: Spec) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def batch(self, spec: Spec, data: dict[str, torch.Tensor], t: int, micro: int) -> dict[str, torch.Tensor]:
        idx = _rows(int(data["x"].shape[0]), spec, t, micro)
        out = dict(data) if idx is None else {k: v[idx] for k, v in data.items()}
        if spec.intent == "bad_batch" and spec.event_at == t and micro == 0:
            out = self.corrupt(spec, out)
        return out

    def corrupt(self, spec: Spec, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One corrupted batch (the design's bad batch): by default, inputs not normalised (x scale)."""
        b = dict(b)
        b["x"] = b["x"] * spec.event_scale
        return b

    def loss(self, spec: Spec, model: nn.Module, b: dict[str, torch.Tensor], t: int) -> torch.Tensor:
        raise NotImplementedError


class LogReg(Family):
    """Logistic regression on d-dim Gaussian inputs, labels from a random hyperplane (``flip``: label noise,
    so the optimum is finite and the full-batch gradient vanishes there). ``event_at`` with event_scale λ
    (intent v_collapse): an L2 penalty λ/2·|w|² switched on late — the loss barely moves, gradients return."""

    loss_tag, lr_tag, gn_tag = "loss", "lr", "grad_norm"
    ckpt_name = "ckpt/step{t}.pt"

    def model(self, spec: Spec) -> nn.Module:
        return nn.Linear(int(spec.data.get("d", 20)), 1)

    def data(self, spec: Spec) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(100 + int(spec.data.get("data_seed", 0)))
        d, n = int(spec.data.get("d", 20)), int(spec.data.get("n", 512))
        x = torch.randn(n, d, generator=g)
        w = torch.randn(d, generator=g)
        y = (x @ w > 0).float()
        flip = torch.rand(n, generator=g) < float(spec.data.get("flip", 0.0))
        y = torch.where(flip, 1 - y, y)
        return {"x": x, "y": y}

    def loss(self, spec: Spec, model: nn.Module, b: dict[str, torch.Tensor], t: int) -> torch.Tensor:
        out = F.binary_cross_entropy_with_logits(model(b["x"]).squeeze(-1), b["y"])
        if spec.intent != "bad_batch" and spec.event_at is not None and t >= spec.event_at:
            w = model.weight
            assert isinstance(w, torch.Tensor)
            out = out + 0.5 * spec.event_scale * w.pow(2).sum()
        return out


class GRULM(Family):
    """One-layer GRU LM on an order-1 Markov token stream with Zipf marginals (a stand-in for text)."""

    loss_tag, lr_tag, gn_tag = "Loss/train", "LearningRate", "grad_norm"
    ckpt_name = "checkpoint-{t}.pt"

    class Net(nn.Module):
        def __init__(self, vocab: int, emb: int, hidden: int) -> None:
            super().__init__()
            self.emb = nn.Embedding(vocab, emb)
            self.rnn = nn.GRU(emb, hidden, batch_first=True)
            self.out = nn.Linear(hidden, vocab)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.rnn(self.emb(x))[0])

    def model(self, spec: Spec) -> nn.Module:
        return GRULM.Net(int(spec.data.get("vocab", 64)), 32, int(spec.data.get("hidden", 64)))

    def data(self, spec: Spec) -> dict[str, torch.Tensor]:
        vocab = int(spec.data.get("vocab", 64))
        g = torch.Generator().manual_seed(200 + int(spec.data.get("data_seed", 0)))
        zipf = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64) ** 1.1
        # each token's successor distribution: the Zipf law over a per-token random permutation, sharpened
        trans = torch.stack([zipf[torch.randperm(vocab, generator=g)] for _ in range(vocab)]) ** 2
        trans = trans / trans.sum(1, keepdim=True)
        n = int(spec.data.get("tokens", 40_000))
        toks = torch.empty(n, dtype=torch.long)
        toks[0] = 0
        u = torch.rand(n, generator=g, dtype=torch.float64)
        cdf = trans.cumsum(1)
        for i in range(1, n):
            toks[i] = int(torch.searchsorted(cdf[toks[i - 1]], u[i]).clamp_max(vocab - 1))
        return {"tokens": toks}

    def batch(self, spec: Spec, data: dict[str, torch.Tensor], t: int, micro: int) -> dict[str, torch.Tensor]:
        seq = int(spec.data.get("seq", 32))
        toks = data["tokens"]
        starts = torch.randint(0, len(toks) - seq - 1, (spec.batch or 16,), generator=_gen(spec, t, micro))
        win = torch.stack([toks[s : s + seq + 1] for s in starts.tolist()])
        return {"x": win[:, :-1], "y": win[:, 1:]}

    def loss(self, spec: Spec, model: nn.Module, b: dict[str, torch.Tensor], t: int) -> torch.Tensor:
        logits = model(b["x"])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b["y"].reshape(-1))


def _smooth_images(g: torch.Generator, n: int, side: int, ch: int) -> torch.Tensor:
    x = torch.randn(n, ch, side, side, generator=g)
    for _ in range(2):
        x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return x / x.std()


class ConvAE(Family):
    """Conv autoencoder (stride-2 conv encoder, transposed-conv decoder), MSE on smooth synthetic images.
    ``event_at`` (intent v_collapse): a denoising phase from then on — Gaussian input noise of std
    event_scale, the target stays the clean image (a curriculum step users add late)."""

    loss_tag, lr_tag, gn_tag = "train_loss", "learning_rate", None
    hist = "grad"
    ckpt_name = "ckpts/ae_step_{t}.pt"

    def model(self, spec: Spec) -> nn.Module:
        c = int(spec.data.get("ch", 8))
        return nn.Sequential(
            nn.Conv2d(1, c, 3, stride=2, padding=1),
            nn.Tanh(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
            nn.Tanh(),
            nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1),
            nn.Tanh(),
            nn.ConvTranspose2d(c, 1, 4, stride=2, padding=1),
        )

    def data(self, spec: Spec) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(300 + int(spec.data.get("data_seed", 0)))
        return {"x": _smooth_images(g, int(spec.data.get("n", 64)), 12, 1)}

    def corrupt(self, spec: Spec, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"x": b["x"] * spec.event_scale}  # a batch that skipped normalisation (input and target)

    def loss(self, spec: Spec, model: nn.Module, b: dict[str, torch.Tensor], t: int) -> torch.Tensor:
        x = b["x"]
        inp = x
        if spec.intent != "bad_batch" and spec.event_at is not None and t >= spec.event_at:
            inp = x + spec.event_scale * torch.randn(x.shape, generator=_gen(spec, t, 99))
        return F.mse_loss(model(inp), x)


class ResNetBN(Family):
    """A small ResNet (stem conv, two BatchNorm basic blocks, global pool, linear) on 3-channel synthetic
    images: one smooth template per class plus noise; cross-entropy; mini-batches."""

    loss_tag, lr_tag, gn_tag = "train/loss", "train/lr", None
    hist = "weight"
    ckpt_name = "checkpoints/epoch_{t}.pth"

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(x + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))

    class Net(nn.Module):
        def __init__(self, c: int, classes: int) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
            self.blocks = nn.Sequential(ResNetBN.Block(c), ResNetBN.Block(c))
            self.fc = nn.Linear(c, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.blocks(self.stem(x)).mean((2, 3)))

    def model(self, spec: Spec) -> nn.Module:
        return ResNetBN.Net(int(spec.data.get("ch", 12)), int(spec.data.get("classes", 8)))

    def data(self, spec: Spec) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(400 + int(spec.data.get("data_seed", 0)))
        k, n = int(spec.data.get("classes", 8)), int(spec.data.get("n", 1024))
        templ = _smooth_images(g, k, 10, 3)
        y = torch.randint(0, k, (n,), generator=g)
        x = templ[y] + float(spec.data.get("noise", 1.0)) * torch.randn(n, 3, 10, 10, generator=g)
        return {"x": x, "y": y}

    def loss(self, spec: Spec, model: nn.Module, b: dict[str, torch.Tensor], t: int) -> torch.Tensor:
        return F.cross_entropy(model(b["x"]), b["y"])


class MatFac(Family):
    """Matrix factorisation: user/item embeddings (rank k) + biases predict observed entries of a noisy
    rank-3 matrix (MSE). ``event_at`` (intent v_collapse): the ratings drift from then on — every target
    moves by event_scale × (t − event_at)/1000 along a fixed random direction (a non-stationary stream);
    (intent bad_batch): one batch with its targets on a 0-100 scale instead of 0-1."""

    loss_tag, lr_tag, gn_tag = "Loss/train", None, None
    ckpt_name = "checkpoints/model_{t}.pt"

    class Net(nn.Module):
        def __init__(self, users: int, items: int, k: int) -> None:
            super().__init__()
            self.u = nn.Embedding(users, k)
            self.i = nn.Embedding(items, k)
            self.ub = nn.Embedding(users, 1)
            self.ib = nn.Embedding(items, 1)
            for e in (self.u, self.i):
                nn.init.normal_(e.weight, std=0.3)
            for e in (self.ub, self.ib):
                nn.init.zeros_(e.weight)

        def forward(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
            return (self.u(u) * self.i(i)).sum(-1) + self.ub(u).squeeze(-1) + self.ib(i).squeeze(-1)

    def model(self, spec: Spec) -> nn.Module:
        return MatFac.Net(int(spec.data.get("users", 60)), int(spec.data.get("items", 40)), int(spec.data.get("k", 4)))

    def data(self, spec: Spec) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(500 + int(spec.data.get("data_seed", 0)))
        nu, ni = int(spec.data.get("users", 60)), int(spec.data.get("items", 40))
        truth = torch.randn(nu, 3, generator=g) @ torch.randn(3, ni, generator=g) / math.sqrt(3)
        mask = torch.rand(nu, ni, generator=g) < float(spec.data.get("density", 0.3))
        uu, ii = mask.nonzero(as_tuple=True)
        y = truth[uu, ii] + float(spec.data.get("noise", 0.1)) * torch.randn(len(uu), generator=g)
        drift = torch.randn(len(uu), generator=g)
        return {"u": uu, "i": ii, "y": y, "drift": drift, "x": y}  # "x": row count for _rows

    def corrupt(self, spec: Spec, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        b = dict(b)
        b["y"] = b["y"] * spec.event_scale
        return b

    def loss(self, spec: Spec, model: nn.Module, b: dict[str, torch.Tensor], t: int) -> torch.Tensor:
        y = b["y"]
        if spec.intent != "bad_batch" and spec.event_at is not None and t >= spec.event_at:
            ramp = 1.0 if spec.data.get("sudden") else (t - spec.event_at) / 1000.0
            y = y + spec.event_scale * ramp * b["drift"]
        return F.mse_loss(model(b["u"], b["i"]), y)


class MLPReg(Family):
    """MLP regression (SiLU, 2 hidden layers) to a smooth target of 8 inputs plus noise; the user's script
    accumulates gradients over ``accum`` micro-batches and logs the mean loss every ``log_every`` updates."""

    loss_tag, lr_tag, gn_tag = "loss", "lr", "grad_norm"
    ckpt_name = "out/ckpt_{t}.pt"

    def model(self, spec: Spec) -> nn.Module:
        h = int(spec.data.get("hidden", 64))
        return nn.Sequential(nn.Linear(8, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 1))

    def data(self, spec: Spec) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(600 + int(spec.data.get("data_seed", 0)))
        n = int(spec.data.get("n", 2048))
        x = torch.randn(n, 8, generator=g)
        y = (
            torch.sin(x[:, :4].sum(1))
            + 0.5 * x[:, 4] * x[:, 5]
            + float(spec.data.get("noise", 0.1)) * torch.randn(n, generator=g)
        )
        return {"x": x, "y": y}

    def loss(self, spec: Spec, model: nn.Module, b: dict[str, torch.Tensor], t: int) -> torch.Tensor:
        return F.mse_loss(model(b["x"]).squeeze(-1), b["y"])


class BowClf(Family):
    """A bag-of-words text classifier (``nn.EmbeddingBag`` sum over a document's tokens with per-token weights
    1/L, then a linear head) on documents of Zipf-distributed tokens; the label is a fixed random teacher's
    class of the same bag, 5% flipped. Embedding rows get gradients only when their token occurs: the rarer
    the token, the sparser its row's gradient (Adam's v of that row decays between occurrences).
    ``event_at`` (intent v_collapse): a vocabulary shift — before it documents draw only from the ``keep``
    most frequent tokens, from it on from the whole vocabulary (a new domain whose tokens the model never
    saw: their rows had no gradient, v = 0). Bad batch: token weights not normalised (x event_scale)."""

    loss_tag, lr_tag, gn_tag = "Train/Loss", "Train/LR", "Train/GradNorm"
    ckpt_name = "ckpt/iter_{t:07d}.pt"

    class Net(nn.Module):
        def __init__(self, vocab: int, dim: int, classes: int) -> None:
            super().__init__()
            self.emb = nn.EmbeddingBag(vocab, dim, mode="sum")
            self.head = nn.Linear(dim, classes)

        def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return self.head(self.emb(x, per_sample_weights=w))

    def model(self, spec: Spec) -> nn.Module:
        return BowClf.Net(int(spec.data.get("vocab", 400)), int(spec.data.get("dim", 16)), 4)

    def data(self, spec: Spec) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(700 + int(spec.data.get("data_seed", 0)))
        vocab = int(spec.data.get("vocab", 400))
        zipf = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64) ** float(spec.data.get("zipf", 1.1))
        teacher = torch.randn(vocab, 4, generator=g, dtype=torch.float64)
        out = {"zipf": zipf, "teacher": teacher, "x": torch.zeros(1)}
        if spec.data.get("corpus"):  # a fixed corpus of documents (full batch or mini-batches of its rows)
            out.update(self._docs(spec, out, g, int(spec.data["corpus"]), None))
        return out

    def _docs(
        self, spec: Spec, data: dict[str, torch.Tensor], g: torch.Generator, n: int, t: int | None
    ) -> dict[str, torch.Tensor]:
        length = int(spec.data.get("length", 12))
        p = data["zipf"].clone()
        if t is not None and spec.intent == "v_collapse" and spec.event_at is not None and t < spec.event_at:
            p[int(spec.data.get("keep", 100)) :] = 0.0
        x = torch.multinomial(p / p.sum(), n * length, replacement=True, generator=g).view(n, length)
        y = (data["teacher"][x].sum(1)).argmax(1)
        flip = torch.rand(n, generator=g) < float(spec.data.get("flip", 0.05))
        return {"x": x, "y": torch.where(flip, torch.randint(0, 4, (n,), generator=g), y)}

    def batch(self, spec: Spec, data: dict[str, torch.Tensor], t: int, micro: int) -> dict[str, torch.Tensor]:
        if "y" in data:  # the fixed corpus
            idx = _rows(int(data["x"].shape[0]), spec, t, micro)
            x, y = (data["x"], data["y"]) if idx is None else (data["x"][idx], data["y"][idx])
            w = torch.full(x.shape, 1.0 / x.shape[1])
            if spec.intent == "bad_batch" and spec.event_at == t and micro == 0:
                w = w * spec.event_scale
            return {"x": x, "w": w, "y": y}
        g = _gen(spec, t, micro)
        doc = self._docs(spec, data, g, spec.batch or 64, t)
        x, y = doc["x"], doc["y"]
        w = torch.full(x.shape, 1.0 / x.shape[1])
        if spec.intent == "bad_batch" and spec.event_at == t and micro == 0:
            w = w * spec.event_scale
        return {"x": x, "w": w, "y": y}

    def loss(self, spec: Spec, model: nn.Module, b: dict[str, torch.Tensor], t: int) -> torch.Tensor:
        return F.cross_entropy(model(b["x"], b["w"]), b["y"])


FAMILIES: dict[str, Family] = {
    "bow_clf": BowClf(),
    "logreg": LogReg(),
    "gru_lm": GRULM(),
    "conv_ae": ConvAE(),
    "resnet_bn": ResNetBN(),
    "matfac": MatFac(),
    "mlp_reg": MLPReg(),
}


# ----------------------------------------------------------------------------------------------------------
# one update (shared by the live run and the labeller's variants)


class Trainer:
    """Model + Adam/AdamW trained update by update; eps overridden and the lr schedule scaled when asked."""

    def __init__(self, spec: Spec, data: dict[str, torch.Tensor], eps: float, lr_scale: float = 1.0) -> None:
        self.spec, self.data, self.lr_scale = spec, data, lr_scale
        self.fam = FAMILIES[spec.family]
        torch.manual_seed(spec.seed)
        self.model = self.fam.model(spec)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[spec.optimizer]
        self.opt = cls(
            self.params, lr=lr_at(spec, 1), betas=spec.betas, eps=eps, weight_decay=spec.weight_decay, foreach=False
        )
        self.eps = eps

    def load(self, ckpt: dict[str, Any]) -> None:
        """Continue from a checkpoint (a deep copy of its optimizer state; eps overridden after loading)."""
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(copy.deepcopy(ckpt["optimizer"]))
        for grp in self.opt.param_groups:
            grp["eps"] = self.eps

    def step(self, t: int, probe: bool = False) -> dict[str, float]:
        """Update t: loss before it, gradient norm before clipping (and after), global r = mean g²/mean v̂_{t-1},
        and (probe) the median √v̂ after it."""
        spec, b2 = self.spec, self.spec.betas[1]
        lr = lr_at(spec, t) * self.lr_scale
        for grp in self.opt.param_groups:
            grp["lr"] = lr
        torch.manual_seed(spec.seed * 7919 + t)  # any randomness inside the model is a function of the step
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for k in range(spec.accum):
            b = self.fam.batch(spec, self.data, t, k)
            loss = self.fam.loss(spec, self.model, b, t) / spec.accum
            loss.backward()
            total += float(loss.detach())
        with torch.no_grad():
            g = torch.cat([p.grad.reshape(-1) for p in self.params if p.grad is not None]).double()
            pre = float(g.norm())
        if spec.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, spec.clip, foreach=False)
        r = med = float("nan")
        with torch.no_grad():
            g = torch.cat([p.grad.reshape(-1) for p in self.params if p.grad is not None]).double()
            post = float(g.norm())
            if t > 1 and all("exp_avg_sq" in self.opt.state.get(p, {}) for p in self.params):
                v = torch.cat([self.opt.state[p]["exp_avg_sq"].reshape(-1) for p in self.params]).double()
                vs = float(v.sum()) / (1.0 - b2 ** (t - 1))
                r = float((g * g).sum()) / vs if vs > 0 else float("nan")
        self.opt.step()
        if probe:
            with torch.no_grad():
                v = torch.cat([self.opt.state[p]["exp_avg_sq"].reshape(-1) for p in self.params]).double()
                med = float((v / (1.0 - b2**t)).sqrt().median())
        return {"loss": total, "grad_norm_preclip": pre, "grad_norm": post, "r": r, "median_sqrt_vhat": med, "lr": lr}


def _deterministic() -> tuple[int, bool]:
    old = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    return old


def _restore(old: tuple[int, bool]) -> None:
    torch.set_num_threads(old[0])
    torch.use_deterministic_algorithms(old[1])


def ckpt_path(run_dir: Path, spec: Spec, t: int) -> Path:
    return Path(run_dir) / FAMILIES[spec.family].ckpt_name.format(t=t)


# ----------------------------------------------------------------------------------------------------------
# the live run


def train_run(spec: Spec, run_dir: Path) -> dict[str, Any]:
    """Train ``spec`` into ``run_dir`` like the family's user would (events, checkpoints) and write the lab's
    own record beside it (``lab_spec.json``; ``lab_truth.json``: every step's loss, the live blowup by
    ``runlab.detect_blowup``, and for bad-batch designs ``runlab.label_injection``'s verdict)."""
    from torch.utils.tensorboard import SummaryWriter  # lazy: heavy import

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for old in [*run_dir.rglob("events.out.tfevents.*"), *run_dir.rglob("*.pt"), *run_dir.rglob("*.pth")]:
        old.unlink()
    (run_dir / SPEC_FILE).write_text(json.dumps(spec.to_json(), indent=1) + "\n")
    fam = FAMILIES[spec.family]
    prev = _deterministic()
    t0 = time.perf_counter()
    try:
        data = fam.data(spec)
        tr = Trainer(spec, data, spec.eps)
        w = SummaryWriter(log_dir=str(run_dir))
        rows: list[dict[str, float]] = []
        for t in range(1, spec.steps + 1):
            row = tr.step(t)
            rows.append(row)
            finite = math.isfinite(row["loss"])
            if t % spec.log_every == 0 or not finite:
                w.add_scalar(fam.loss_tag, row["loss"], t)
                if fam.lr_tag:
                    w.add_scalar(fam.lr_tag, row["lr"], t)
                if fam.gn_tag:  # what users log: clip_grad_norm_'s return value, i.e. the norm before clipping
                    w.add_scalar(fam.gn_tag, row["grad_norm_preclip"], t)
            if spec.hist_every and t % spec.hist_every == 0 and fam.hist:
                for n, p in tr.model.named_parameters():
                    if fam.hist == "grad" and p.grad is not None:
                        w.add_histogram(f"grads/{n}", p.grad, t)
                    elif fam.hist == "weight":
                        w.add_histogram(f"weights/{n}", p.detach(), t)
            if spec.ckpt_every and t % spec.ckpt_every == 0:
                path = ckpt_path(run_dir, spec, t)
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"model": tr.model.state_dict(), "optimizer": tr.opt.state_dict(), "step": t}, path)
            if not finite:
                break  # the script dies on a NaN loss
        w.close()
    finally:
        _restore(prev)
    losses = np.array([r["loss"] for r in rows])
    blowup = runlab.detect_blowup(losses)
    cause = "healthy" if blowup is None else "blowup"
    ev: dict[str, Any] = {}
    if spec.intent == "bad_batch" and spec.event_at is not None:
        blowup, cause, ev = runlab.label_injection(
            {"bad_batch_at": spec.event_at},
            losses,
            np.array([r["grad_norm_preclip"] for r in rows]),
            np.array([r["r"] for r in rows]),
            blowup,
            cause,
            ev,
        )
    truth = {
        "schema": "oodlab.truth/1",
        "blowup_step": blowup,
        "cause": cause,  # healthy | blowup (labelled by experiment, label_run) | bad_batch (registered injection)
        "final_step": len(rows),
        "seconds": time.perf_counter() - t0,
        "injection": cf.json_nulls(ev),
        "min_loss": float(np.nanmin(losses)),
        "losses": [cf.json_nulls(float(x)) for x in losses],
        "r": [cf.json_nulls(round(r["r"], 6) if math.isfinite(r["r"]) else r["r"]) for r in rows],
        "grad_norm_preclip": [cf.json_nulls(float(f"{r['grad_norm_preclip']:.6g}")) for r in rows],
    }
    (run_dir / TRUTH_FILE).write_text(json.dumps(truth) + "\n")
    return truth


# ----------------------------------------------------------------------------------------------------------
# the counterfactual label (tools/runlab/counterfactual.py's rules, this module's training step)


def run_variant(
    spec: Spec,
    data: dict[str, torch.Tensor],
    prefix: list[float],
    ckpt: dict[str, Any] | None,
    start: int,
    end: int,
    eps: float,
    lr_scale: float,
) -> dict[str, Any]:
    """One variant from ``start`` to ``end`` or a confirmed blowup (mirrors ``counterfactual.run_variant``)."""
    tr = Trainer(spec, data, eps, lr_scale)
    if ckpt is not None:
        tr.load(ckpt)
    window = cf.at_risk_window(spec.betas[1])
    losses = list(prefix)
    rs: list[float] = []
    meds: list[float] = []
    checked_to, blowup, t = 0, None, start
    while t < end:
        t += 1
        probe = t > end - window
        row = tr.step(t, probe)
        losses.append(row["loss"])
        if probe:
            rs.append(row["r"])
            meds.append(row["median_sqrt_vhat"])
        if not math.isfinite(row["loss"]):
            losses += [float("nan")] * runlab.BLOWUP_HORIZON
            blowup = runlab.detect_blowup(losses, start=max(checked_to - 1, 0))
            break
        if (t - start) % cf.CHECK_EVERY == 0:
            blowup, checked_to = cf._confirmed(losses, checked_to)
            if blowup is not None:
                break
    if blowup is None and t >= end:
        blowup = runlab.detect_blowup(losses, start=max(checked_to - 1, 0))
    out: dict[str, Any] = {"eps": eps, "lr_scale": lr_scale, "trained_to": t, "blowup_step": blowup}
    if blowup is not None:
        out["outcome"] = "blowup"
        return out
    risky, ev = cf.judge_at_risk(np.array(rs), np.array(meds), eps)
    out["outcome"] = "at_risk" if risky else "avoided"
    out["at_risk_evidence"] = ev
    return out


def label_run(run_dir: Path) -> dict[str, Any]:
    """The counterfactual block for a blown-up run (``label: None`` with a reason otherwise)."""
    run_dir = Path(run_dir)
    spec = Spec.from_json(json.loads((run_dir / SPEC_FILE).read_text()))
    truth = json.loads((run_dir / TRUTH_FILE).read_text())
    blowup = truth["blowup_step"]
    if blowup is None:
        return {"label": None, "skipped": "no blowup"}
    if truth["cause"] == "bad_batch":
        return {"label": None, "skipped": "injected failure (bad_batch)"}
    every = spec.ckpt_every or cf.VIRTUAL_CKPT_EVERY
    start = ((blowup - 1) // every) * every
    ckpt = None
    if start > 0:
        path = ckpt_path(run_dir, spec, start)
        if not path.is_file():
            return {"label": None, "skipped": f"no checkpoint at {start}"}
        ckpt = torch.load(path, weights_only=True)
    end = cf.train_end(blowup, start, spec.betas[1])
    prefix = [float("nan") if x is None else float(x) for x in truth["losses"][:start]]
    prev = _deterministic()
    t0 = time.perf_counter()
    try:
        data = FAMILIES[spec.family].data(spec)
        orig = run_variant(spec, data, prefix, ckpt, start, end, spec.eps, 1.0)
        variants = {
            name: run_variant(spec, data, prefix, ckpt, start, end, ch.get("eps", spec.eps), ch.get("lr_scale", 1.0))
            for name, ch in cf.VARIANTS.items()
        }
    finally:
        _restore(prev)
    label = cf.decide_label({k: v["outcome"] for k, v in variants.items()})
    return cf.json_nulls(
        {
            "label": label,
            "start_step": start,
            "horizon_end_step": cf.horizon_end(blowup, start, spec.betas[1]),
            "trained_to_step": end,
            "live_blowup_step": blowup,
            "original": {k: orig[k] for k in ("outcome", "blowup_step", "trained_to")},
            "reproduces_live_blowup": orig["blowup_step"] == blowup,
            "variants": variants,
            "seconds": time.perf_counter() - t0,
        }
    )


# ----------------------------------------------------------------------------------------------------------
# the replay entry (adamdiag's PyTorch protocol, docs/replay.md): `--entry tools/ood/oodlab.py:adamdiag_replay`


def adamdiag_replay(checkpoint: str) -> dict[str, Any]:
    """A lab run replayed by ``adamdiag replay`` / ``scan --verify``: the design is the ``lab_spec.json`` in the
    checkpoint's run folder (or a folder above it); batches, loss and lr schedule are the live run's own
    (``Trainer.step``: batch ``t``, the loss before update ``t``, ``lr_at(spec, t)``). One micro-batch per update
    only (the replay protocol has no gradient accumulation)."""
    folder = Path(checkpoint).resolve().parent
    while not (folder / SPEC_FILE).is_file():
        if folder.parent == folder:
            raise FileNotFoundError(f"no {SPEC_FILE} in a folder above {checkpoint}")
        folder = folder.parent
    spec = Spec.from_json(json.loads((folder / SPEC_FILE).read_text()))
    if spec.accum != 1:
        raise ValueError(f"{spec.name}: gradient accumulation ({spec.accum}) is not replayable")
    fam = FAMILIES[spec.family]
    data = fam.data(spec)
    torch.manual_seed(spec.seed)
    model = fam.model(spec)
    model.train()

    def batch(t: int) -> dict[str, Any]:
        return {**fam.batch(spec, data, t, 0), "_update": t}

    def loss(m: nn.Module, b: dict[str, Any]) -> torch.Tensor:
        t = int(b["_update"])
        torch.manual_seed(spec.seed * 7919 + t)  # as Trainer.step: any randomness in the model is the step's
        return fam.loss(spec, m, {k: v for k, v in b.items() if k != "_update"}, t)

    return {
        "model": model,
        "batch": batch,
        "loss": loss,
        "clip_grad_norm": spec.clip,
        "lr_schedule": lambda t: lr_at(spec, t),
    }
