"""fwprobe: third-party log trees as real frameworks write them with their default settings (session 12).

One tiny task (an MLP regression, 8 inputs, 2 hidden SiLU layers of 64, 256 samples, trained full batch so
that every framework sees the same batches and a resume is exact) in three designs, each trained with a
framework's OWN logger and checkpointing:

* ``healthy``: Adam lr 1e-3, betas (0.9, 0.999), eps 1e-8, constant lr, 600 steps.
* ``lr_high``: linear warm-up over 300 steps to lr 1.0, betas (0.9, 0.999), 400 steps: the loss falls to
  ~0.02, then diverges near lr 0.25 while the gradients are still large (no quiet phase) and never recovers.
* ``vcollapse``: lr 0.01, betas (0.9, 0.99), eps 1e-8, cosine with a hard warm restart every 1000 steps,
  2000 steps: the loss fits to ~1e-6 while lr decays (a long quiet phase, v collapses), the restart at
  update 1001 puts the full lr back on a collapsed v (oodlab's ``mlp_sgdr_b99``).

The lr of update t (1-based) is ``lr * f(t-1)`` with the same ``f`` in every torch framework (LambdaLR /
HF's schedulers are stepped once per update and start at f(0)).

Frameworks (``python tools/fwprobe/fwprobe.py <framework> <design> [--variant V] [--out DIR]``):

* ``lightning``: ``self.log('train_loss', loss, on_step=True, on_epoch=True)``, ``self.log('val_loss')``
  every 50 epochs, ``save_hyperparameters``; ``TensorBoardLogger`` default (``lightning_logs/version_N``,
  ``log_every_n_steps=50``), ``ModelCheckpoint`` default (the last epoch only). Variants: ``log1``
  (``log_every_n_steps=1``) and ``ckpt`` (``log1`` + ``ModelCheckpoint(every_n_train_steps=250,
  save_top_k=-1)``).
* ``hf``: ``Trainer`` with ``report_to=['tensorboard']`` and its defaults (``logging_steps=500``,
  ``save_steps=500``, ``max_grad_norm=1.0``, AdamW without weight decay); variant ``log10``:
  ``logging_steps=10, save_steps=250``.
* ``torch_sw``: ``torch.utils.tensorboard.SummaryWriter``, every 10 steps ``add_scalars('loss',
  {'train': .., 'val': ..})`` and ``add_scalar('grad_norm')``, ``lr``; ``torch.save`` every 250 steps.
* ``fairseq_layout``: the tree ``fairseq-train --tensorboard-logdir`` writes (``train_inner/``, ``train/``,
  ``valid/``; ``gnorm``; the command line as a text summary), mirrored with torch's SummaryWriter; variant
  ``clip`` (``--clip-norm 0.5``).
* ``tbx``: ``tensorboardX.SummaryWriter``, ``add_scalar('loss')`` every step, ``add_scalars('metrics',
  {'train_loss', 'val_loss'})`` every 10, ``add_text``, ``add_hparams`` at the end; checkpoints every 250.

``cf CKPT --framework F --design D [--clip C]``: the counterfactual from a checkpoint of a torch framework,
replayed in plain torch on the same full batch (original, eps 1e-3, eps 1e-2, lr/3, lr/10), printing each
variant's loss at the start, its maximum and its last value over a horizon.

Runs go to /tmp/s12fw/<framework>/<design>[_<variant>]. Keras: ``tools/fwprobe/keras_probe.py`` (TF venv).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path("/tmp/s12fw")
N, D, H = 256, 8, 64

DESIGNS: dict[str, dict[str, Any]] = {
    "healthy": {"lr": 1e-3, "betas": (0.9, 0.999), "steps": 600, "sched": "constant"},
    "lr_high": {"lr": 1.0, "betas": (0.9, 0.999), "steps": 400, "sched": "warmup", "warmup": 300},
    "vcollapse": {"lr": 0.01, "betas": (0.9, 0.99), "steps": 2000, "sched": "sgdr", "period": 1000},
}


def lr_factor(design: dict[str, Any], s: int) -> float:
    """f(s): the lr factor after s scheduler steps (update s+1 uses it)."""
    if design["sched"] == "constant":
        return 1.0
    if design["sched"] == "warmup":
        return min(1.0, s / design["warmup"])
    p = design["period"]
    return 0.5 * (1.0 + math.cos(math.pi * (s % p) / p))


def data(seed: int = 600) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g)
    y = torch.sin(x[:, :4].sum(1)) + 0.5 * x[:, 4] * x[:, 5] + 0.1 * torch.randn(N, generator=g)
    return x, y


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, H), nn.SiLU(), nn.Linear(H, H), nn.SiLU(), nn.Linear(H, 1))


def out_dir(fw: str, design: str, variant: str | None, out: str | None) -> Path:
    p = Path(out) if out else ROOT / fw / (design + (f"_{variant}" if variant else ""))
    if p.exists():
        shutil.rmtree(p)
    p.mkdir(parents=True)
    return p


# ------------------------------------------------------------------------------------------------ Lightning


def run_lightning(
    design_name: str,
    variant: str | None,
    out: Path,
    *,
    steps: int | None = None,
    checkpointing: bool = True,
    resume: tuple[int, int, int] = (1000, 1100, 250),
) -> None:
    """``resume`` (variant ``resume``): (epochs of the first fit, epochs after resuming, checkpoint interval)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader, TensorDataset

    design = DESIGNS[design_name]

    class Reg(L.LightningModule):
        def __init__(self, lr: float, beta2: float) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = net()

        def training_step(self, batch: Any, idx: int) -> torch.Tensor:
            x, y = batch
            loss = F.mse_loss(self.net(x).squeeze(-1), y)
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, idx: int) -> None:
            x, y = batch
            self.log("val_loss", F.mse_loss(self.net(x).squeeze(-1), y))

        def configure_optimizers(self) -> Any:
            opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, betas=(0.9, self.hparams.beta2))
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(design, s))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    x, y = data()
    xv, yv = data(601)
    train = DataLoader(TensorDataset(x, y), batch_size=N)
    val = DataLoader(TensorDataset(xv, yv), batch_size=N)
    cbs: list[Any] = []
    kw: dict[str, Any] = {}
    if variant in ("log1", "ckpt"):
        kw["log_every_n_steps"] = 1
    if variant == "ckpt":
        cbs.append(ModelCheckpoint(every_n_train_steps=250, save_top_k=-1))
    if variant == "resume":  # stopped after 1000 epochs (checkpoints every 250), resumed from the last one
        kw["log_every_n_steps"] = 1
        for epochs, ck in ((resume[0], None), (resume[1], out / "lightning_logs" / "version_0" / "checkpoints")):
            L.Trainer(
                max_epochs=epochs,
                accelerator="cpu",
                logger=TensorBoardLogger(str(out)),
                callbacks=[ModelCheckpoint(every_n_train_steps=resume[2], save_top_k=-1)],
                check_val_every_n_epoch=50,
                enable_progress_bar=False,
                enable_model_summary=False,
                **kw,
            ).fit(
                Reg(design["lr"], design["betas"][1]),
                train,
                val,
                ckpt_path=None if ck is None else str(max(ck.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)),
            )
        return
    trainer = L.Trainer(
        max_epochs=steps or design["steps"],
        enable_checkpointing=checkpointing,
        accelerator="cpu",
        logger=TensorBoardLogger(str(out)),
        callbacks=cbs or None,
        check_val_every_n_epoch=50,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )
    trainer.fit(Reg(design["lr"], design["betas"][1]), train, val)


# ------------------------------------------------------------------------------------------------ HF Trainer


def run_hf(design_name: str, variant: str | None, out: Path) -> None:
    from transformers import Trainer, TrainingArguments

    design = DESIGNS[design_name]

    class Ds(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __init__(self) -> None:
            self.x, self.y = data()

        def __len__(self) -> int:
            return N

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"x": self.x[i], "labels": self.y[i]}

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net()

        def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
            pred = self.net(x).squeeze(-1)
            return {"loss": F.mse_loss(pred, labels), "logits": pred}

    sched = {"constant": "constant", "warmup": "constant_with_warmup", "sgdr": "cosine_with_restarts"}
    kw: dict[str, Any] = {}
    if design["sched"] == "warmup":
        kw["warmup_steps"] = design["warmup"]
    if design["sched"] == "sgdr":
        kw["lr_scheduler_kwargs"] = {"num_cycles": design["steps"] // design["period"]}
    if variant == "log10":
        kw.update(logging_steps=10, save_steps=250)
    args = TrainingArguments(
        output_dir=str(out),
        report_to=["tensorboard"],
        max_steps=design["steps"],
        per_device_train_batch_size=N,
        learning_rate=design["lr"],
        adam_beta2=design["betas"][1],
        lr_scheduler_type=sched[design["sched"]],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        **kw,
    )
    Trainer(model=Model(), args=args, train_dataset=Ds()).train()


# ------------------------------------------------------------------------------------- SummaryWriter loops


def _plain_setup(design: dict[str, Any]) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    """The plain torch loop's model, Adam and LambdaLR schedule (torch_sw, tbx and the fairseq layout share it)."""
    model = net()
    opt = torch.optim.Adam(model.parameters(), lr=design["lr"], betas=design["betas"])
    return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(design, s))


def _plain_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    clip: float | None = None,
) -> tuple[torch.Tensor, float, float]:
    """One update of the plain loop: (the loss before it, the gradient norm before clipping, the lr it used)."""
    loss = F.mse_loss(model(x).squeeze(-1), y)
    opt.zero_grad()
    loss.backward()
    gn = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    lr = opt.param_groups[0]["lr"]
    opt.step()
    sched.step()
    return loss, gn, lr


def _loop(design_name: str, out: Path, writer: Any, style: str) -> None:
    design = DESIGNS[design_name]
    model, opt, sched = _plain_setup(design)
    x, y = data()
    xv, yv = data(601)
    (out / "checkpoints").mkdir()
    for t in range(1, design["steps"] + 1):
        loss, gn, lr = _plain_step(model, opt, sched, x, y)
        if style == "torch_sw" and t % 10 == 0:
            with torch.no_grad():
                val = F.mse_loss(model(xv).squeeze(-1), yv).item()
            writer.add_scalars("loss", {"train": loss.item(), "val": val}, t)
            writer.add_scalar("grad_norm", gn, t)
            writer.add_scalar("lr", lr, t)
        if style == "tbx":
            writer.add_scalar("loss", loss.item(), t)
            if t % 10 == 0:
                with torch.no_grad():
                    val = F.mse_loss(model(xv).squeeze(-1), yv).item()
                writer.add_scalars("metrics", {"train_loss": loss.item(), "val_loss": val}, t)
                writer.add_scalar("learning_rate", lr, t)
        if t % 250 == 0:
            torch.save(
                {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": t},
                out / "checkpoints" / f"ckpt_{t}.pth",
            )
    if style == "tbx":
        writer.add_text("config", json.dumps(design), 0)
        writer.add_hparams({"lr": design["lr"], "beta2": design["betas"][1]}, {"hparam/final_loss": loss.item()})
    writer.close()


def run_fairseq_layout(design_name: str, variant: str | None, out: Path) -> None:
    """The log tree ``fairseq-train --tensorboard-logdir tb`` writes (fairseq/logging/progress_bar.py's
    TensorboardProgressBarWrapper: one SummaryWriter per tag — ``train_inner`` every ``--log-interval`` updates,
    ``train`` and ``valid`` per epoch — each opened with ``add_text("sys.argv", ...)``; a stat's value is its mean
    over the interval, the loss in base 2, ``gnorm`` the norm before clipping, ``clip`` the percent of clipped
    updates when ``--clip-norm`` > 0) and its checkpoints (``--save-interval-updates 500``:
    ``checkpoints/checkpoint_<epoch>_<updates>.pt`` with ``last_optimizer_state``). fairseq itself does not install on this Python; its logging code is mirrored here
    with torch's SummaryWriter, which it uses. Variant ``clip``: ``--clip-norm 0.5``. One epoch = 100 updates."""
    from torch.utils.tensorboard import SummaryWriter

    design = DESIGNS[design_name]
    clip = 0.5 if variant == "clip" else 0.0
    argv = f"fairseq-train data-bin --arch mlp --optimizer adam --adam-betas '{design['betas']}' --lr {design['lr']}"
    argv += f" --clip-norm {clip} --log-interval 10 --save-interval-updates 500 --tensorboard-logdir {out / 'tb'}"
    writers: dict[str, Any] = {}

    def writer(tag: str) -> Any:
        if tag not in writers:
            writers[tag] = SummaryWriter(str(out / "tb" / tag))
            writers[tag].add_text("sys.argv", argv)
        return writers[tag]

    model, opt, sched = _plain_setup(design)
    x, y = data()
    xv, yv = data(601)
    (out / "checkpoints").mkdir()
    inner: dict[str, list[float]] = {"loss": [], "gnorm": [], "clip": []}
    epoch_loss: list[float] = []
    ln2 = math.log(2)
    for t in range(1, design["steps"] + 1):
        loss, gn, lr = _plain_step(model, opt, sched, x, y, clip if clip > 0 else None)
        inner["loss"].append(loss.item() / ln2)
        inner["gnorm"].append(gn)
        inner["clip"].append(100.0 if clip > 0 and gn > clip else 0.0)
        epoch_loss.append(loss.item() / ln2)
        if t % 10 == 0:
            stats = {k: sum(v) / len(v) for k, v in inner.items() if k != "clip" or clip > 0}
            stats.update(nll_loss=stats["loss"], ppl=2 ** min(stats["loss"], 100.0), lr=lr, wps=2560.0, ups=100.0)
            stats.update(wpb=256.0, bsz=256.0, train_wall=0.0, gb_free=10.0, wall=t / 100)
            for k, v in stats.items():
                writer("train_inner").add_scalar(k, v, t)
            inner = {k: [] for k in inner}
        if t % 100 == 0:
            epoch = t // 100
            mean = sum(epoch_loss) / len(epoch_loss)
            for k, v in {"loss": mean, "nll_loss": mean, "ppl": 2 ** min(mean, 100.0), "lr": lr}.items():
                writer("train").add_scalar(k, v, t)
            with torch.no_grad():
                val = F.mse_loss(model(xv).squeeze(-1), yv).item() / ln2
            for k, v in {"loss": val, "nll_loss": val, "ppl": 2 ** min(val, 100.0)}.items():
                writer("valid").add_scalar(k, v, t)
            epoch_loss = []
            if t % 500 == 0:  # --save-interval-updates 500: checkpoint_<epoch>_<updates>.pt
                torch.save(
                    {
                        "model": model.state_dict(),
                        "optimizer_history": [{"optimizer_name": "FairseqAdam", "num_updates": t}],
                        "extra_state": {"epoch": epoch},
                        "last_optimizer_state": opt.state_dict(),
                    },
                    out / "checkpoints" / f"checkpoint_{epoch}_{t}.pt",
                )
    for w in writers.values():
        w.close()


def run_torch_sw(design_name: str, variant: str | None, out: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    _loop(design_name, out, SummaryWriter(str(out)), "torch_sw")


def run_tbx(design_name: str, variant: str | None, out: Path) -> None:
    from tensorboardX import SummaryWriter

    _loop(design_name, out, SummaryWriter(str(out)), "tbx")


# ------------------------------------------------------------------------------------------------ counterfactual


def _update(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    clip: float | None,
    eps: float | None = None,
) -> float:
    """One update of the plain loop, as the counterfactual replays it: lr (and a variant's eps) set on every
    group, the loss, its gradient (clipped when the run clipped), the step; the loss before the update."""
    for g in opt.param_groups:
        g["lr"] = lr
        if eps is not None:
            g["eps"] = eps
    loss = F.mse_loss(model(x).squeeze(-1), y)
    opt.zero_grad()
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return loss.item()


def train_to(
    design_name: str, step: int, clip: float | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any], int]:
    """The plain loop's state after ``step`` updates (for a run with no checkpoint before its blowup)."""
    design = DESIGNS[design_name]
    model = net()
    opt = torch.optim.Adam(model.parameters(), lr=design["lr"], betas=design["betas"])
    x, y = data()
    for t in range(1, step + 1):
        _update(model, opt, x, y, design["lr"] * lr_factor(design, t - 1), clip)
    return model.state_dict(), opt.state_dict(), step


def load_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], int]:
    """(model state with net's own names, optimizer state dict, step) from a torch framework checkpoint."""
    if path.is_dir():  # HF checkpoint-N/
        from safetensors.torch import load_file

        w = load_file(str(path / "model.safetensors"))
        w = {k.removeprefix("net."): v for k, v in w.items()}
        opt = torch.load(path / "optimizer.pt", weights_only=True)
        step = json.loads((path / "trainer_state.json").read_text())["global_step"]
        return w, opt, int(step)
    ck = torch.load(path, weights_only=False)
    if "last_optimizer_state" in ck:  # fairseq
        return ck["model"], ck["last_optimizer_state"], int(ck["optimizer_history"][-1]["num_updates"])
    if "state_dict" in ck:  # Lightning
        w = {k.removeprefix("net."): v for k, v in ck["state_dict"].items()}
        return w, ck["optimizer_states"][0], int(ck["global_step"])
    return ck["model"], ck["optimizer"], int(ck["step"])


def counterfactual(path: Path, design_name: str, horizon: int, clip: float | None) -> dict[str, Any]:
    design = DESIGNS[design_name]
    w, opt_state, start = (
        train_to(design_name, int(str(path)[5:]), clip) if str(path).startswith("init:") else load_state(path)
    )
    x, y = data()
    res: dict[str, Any] = {"checkpoint": str(path), "start_step": start}
    for name, eps, lr_mul in [
        ("original", None, 1.0),
        ("eps1e-3", 1e-3, 1.0),
        ("eps1e-2", 1e-2, 1.0),
        ("lr/3", None, 1 / 3),
        ("lr/10", None, 0.1),
    ]:
        model = net()
        model.load_state_dict(w)
        if len(opt_state["param_groups"]) == 2:  # HF Trainer: AdamW, weights then biases (no weight decay)
            named = list(model.named_parameters())
            opt: torch.optim.Optimizer = torch.optim.AdamW(
                [
                    {"params": [p for n, p in named if not n.endswith("bias")]},
                    {"params": [p for n, p in named if n.endswith("bias")]},
                ]
            )
        else:
            opt = torch.optim.Adam(model.parameters())
        opt.load_state_dict(copy.deepcopy(opt_state))  # load_state_dict keeps the tensors: a copy per variant
        losses = []
        for t in range(start + 1, start + horizon + 1):
            losses.append(_update(model, opt, x, y, design["lr"] * lr_factor(design, t - 1) * lr_mul, clip, eps))
        lo = min(losses[:1])
        imax = max(range(len(losses)), key=lambda i: losses[i] if math.isfinite(losses[i]) else float("inf"))
        res[name] = {
            "first": losses[0],
            "max": losses[imax],
            "max_at": start + 1 + imax,
            "last": losses[-1],
            "max_over_first": losses[imax] / max(lo, 1e-30),
        }
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("framework")
    ap.add_argument("design")
    ap.add_argument("--variant")
    ap.add_argument("--out")
    ap.add_argument("--framework-of")
    ap.add_argument("--horizon", type=int, default=300)
    ap.add_argument("--clip", type=float)
    a = ap.parse_args(argv)
    if a.framework == "cf":  # design = checkpoint path, --framework-of = the design name
        print(json.dumps(counterfactual(Path(a.design), a.framework_of, a.horizon, a.clip), indent=1))
        return
    out = out_dir(a.framework, a.design, a.variant, a.out)
    t0 = time.time()
    frameworks = {"lightning": run_lightning, "hf": run_hf, "torch_sw": run_torch_sw, "tbx": run_tbx}
    frameworks["fairseq_layout"] = run_fairseq_layout
    frameworks[a.framework](a.design, a.variant, out)
    print(f"{a.framework} {a.design} {a.variant or ''}: {time.time() - t0:.1f}s -> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
