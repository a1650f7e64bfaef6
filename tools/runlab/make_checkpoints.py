"""Write real optimizer checkpoints with each library's own saving code (for tests and for trying
``adamdiag inspect``): PyTorch Lightning ``.ckpt``, Hugging Face ``Trainer`` ``checkpoint-N/``,
accelerate ``save_state``, and ``torch.distributed.checkpoint`` (one process, or sharded by FSDP2
over 2 gloo processes on 127.0.0.1).

Every writer returns the truth at save time: ``{parameter name: {"exp_avg", "exp_avg_sq", "step",
"group"}}`` copied from the live optimizer, so a reader can be checked tensor for tensor.

    python tools/runlab/make_checkpoints.py OUT_DIR     # writes every layout whose library is installed
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

Truth = dict[str, dict[str, Any]]


def live_truth(named_params: list[tuple[str, nn.Parameter]], opt: torch.optim.Optimizer) -> Truth:
    """Copy of the live optimizer state, keyed by parameter name."""
    names = {id(p): n for n, p in named_params}
    out: Truth = {}
    for gi, grp in enumerate(opt.param_groups):
        for p in grp["params"]:
            st = opt.state.get(p)
            if not st:
                continue
            out[names[id(p)]] = {
                "exp_avg": st["exp_avg"].detach().clone(),
                "exp_avg_sq": st["exp_avg_sq"].detach().clone(),
                "step": int(st["step"]),
                "group": gi,
                "param": p.detach().clone(),
            }
    return out


def two_groups(named: list[tuple[str, nn.Parameter]], wd: float = 0.1) -> list[dict]:
    """The usual hand-built param groups: decay on matrices, none on biases and norms."""
    return [
        {"params": [p for n, p in named if p.ndim >= 2], "weight_decay": wd},
        {"params": [p for n, p in named if p.ndim < 2], "weight_decay": 0.0},
    ]


# --- PyTorch Lightning ------------------------------------------------------------------------------
def write_lightning(out: Path, steps: int = 4) -> tuple[Path, Truth]:
    import lightning as L

    class Regressor(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters({"lr": 1e-2})
            self.net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1))

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.AdamW(two_groups(list(self.named_parameters())), lr=1e-2)

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g))
    model = Regressor()
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(out),
    )
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=8))
    path = out / f"epoch=0-step={steps}.ckpt"
    trainer.save_checkpoint(path)
    return path, live_truth(list(model.named_parameters()), trainer.optimizers[0])


def write_lightning_gan(out: Path, steps: int = 9) -> tuple[Path, dict[int, Truth]]:
    """A GAN-style LightningModule with manual optimization and two optimizers — Adam for the
    generator, AdamW with two param groups (β2 0.99) for the discriminator — and, as a third, an SGD
    with momentum on a small head (a non-Adam optimizer in the same ``optimizer_states`` list).
    Returns the checkpoint and the live truth per optimizer index."""
    import lightning as L

    class Gan(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.gen = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6))
            self.disc = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 1))
            self.head = nn.Linear(6, 2)

        def training_step(self, batch, _):
            (z,) = batch
            opt_g, opt_d, opt_h = self.optimizers()
            fake = self.gen(z)
            d_loss = self.disc(fake.detach()).pow(2).mean() + (self.disc(z.repeat(1, 2)[:, :6]) - 1).pow(2).mean()
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            opt_d.step()
            g_loss = (self.disc(fake) - 1).pow(2).mean() + self.head(fake.detach()).pow(2).mean()
            opt_g.zero_grad()
            opt_h.zero_grad()
            self.manual_backward(g_loss)
            opt_g.step()
            opt_h.step()

        def configure_optimizers(self):
            return [
                torch.optim.Adam(self.gen.parameters(), lr=2e-4, betas=(0.5, 0.999)),
                torch.optim.AdamW(two_groups(list(self.disc.named_parameters())), lr=1e-3, betas=(0.9, 0.99)),
                torch.optim.SGD(self.head.parameters(), lr=0.1, momentum=0.9),
            ]

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4, generator=g))
    model = Gan()
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(out),
    )
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=8))
    path = out / f"gan-step={steps}.ckpt"
    trainer.save_checkpoint(path)
    named = list(model.named_parameters())
    return path, {i: live_truth(named, opt) for i, opt in enumerate(trainer.optimizers[:2])}


# --- Hugging Face Trainer ---------------------------------------------------------------------------
class _TokenData(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = torch.randint(0, 32, (8,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": x, "labels": x}


def _train_tiny_gpt2(out: Path, *, steps: int, n_embd: int, optim: str | None = None) -> tuple[nn.Module, Any]:
    """A 1-layer GPT-2 (vocabulary 32, 2 heads) trained ``steps`` steps by ``transformers.Trainer`` on CPU (lr 1e-3,
    weight decay 0.1, its two param groups), checkpoint saved at the last step; ``optim``: Trainer's optimizer
    name (its default when None). Returns the model and the Trainer."""
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=32, n_positions=16, n_embd=n_embd, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        save_steps=steps,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        learning_rate=1e-3,
        weight_decay=0.1,
        disable_tqdm=True,
        logging_strategy="no",
        **({"optim": optim} if optim is not None else {}),
    )
    trainer = Trainer(model=model, args=args, train_dataset=_TokenData())
    trainer.train()
    return model, trainer


def train_hf_with_optim(out: Path, optim: str) -> tuple[nn.Module, Any]:
    """A 1-layer GPT-2 (n_embd 64: its matrices are over the quantized optimizers' size thresholds) trained 3 steps
    by ``transformers.Trainer(optim=optim)``; ``out/checkpoint-3`` keeps only what the reader needs (optimizer,
    model, config, trainer_state). Returns the model and the optimizer under Trainer's wrapper, for the truth."""
    import shutil

    model, trainer = _train_tiny_gpt2(out, steps=3, n_embd=64, optim=optim)
    for f in (out / "checkpoint-3").iterdir():
        if f.name not in ("optimizer.pt", "model.safetensors", "config.json", "trainer_state.json"):
            f.unlink() if f.is_file() else shutil.rmtree(f)
    return model, getattr(trainer.optimizer, "optimizer", trainer.optimizer)


def write_hf(out: Path, steps: int = 3) -> tuple[Path, Truth]:
    """A tiny GPT-2 (tied embedding/LM head) trained by ``transformers.Trainer`` with its default
    AdamW and its two param groups (weight decay / no decay)."""
    model, trainer = _train_tiny_gpt2(out, steps=steps, n_embd=16)
    return out / f"checkpoint-{steps}", live_truth(list(model.named_parameters()), trainer.optimizer)


# --- accelerate ----------------------------------------------------------------------------------
def write_accelerate(out: Path, steps: int = 3) -> tuple[Path, Truth]:
    from accelerate import Accelerator

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    acc = Accelerator(cpu=True)
    model, opt = acc.prepare(model, opt)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = model(torch.randn(8, 4, generator=g)).pow(2).mean()
        acc.backward(loss)
        opt.step()
        opt.zero_grad()
    acc.save_state(str(out))
    return out, live_truth(list(model.named_parameters()), opt)


# --- torch.distributed.checkpoint ---------------------------------------------------------------------
def write_dcp(out: Path, *, flatten: bool = False, steps: int = 3) -> tuple[Path, Truth]:
    """One process (no process group): ``get_state_dict`` + ``dcp.save``, two param groups."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    opt = torch.optim.AdamW(two_groups(list(model.named_parameters())), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        model(torch.randn(8, 4, generator=g)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    msd, osd = get_state_dict(model, opt, options=StateDictOptions(flatten_optimizer_state_dict=flatten))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... single process": intended
        dcp.save({"model": msd, "optim": osd, "step": steps}, checkpoint_id=str(out))
    return out, live_truth(list(model.named_parameters()), opt)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fsdp_worker(rank: int, world: int, out: str, port: int, steps: int) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, get_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 10), nn.LayerNorm(10), nn.Linear(10, 3))
        for layer in model:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(rank + 1)
        for _ in range(steps):
            model(torch.randn(4, 6, generator=g)).pow(2).sum().backward()
            opt.step()
            opt.zero_grad()
        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=out)
        # The truth: the full (unsharded) state, gathered to rank 0 and saved beside the checkpoint.
        full = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            torch.save(full, Path(out).parent / "fsdp_full_optimizer.pt")
    finally:
        dist.destroy_process_group()


def write_dcp_sharded(out: Path, world: int = 2, steps: int = 3) -> tuple[Path, Truth]:
    """FSDP2-sharded model and AdamW state written by ``world`` gloo processes (each rank writes
    its shard: ``__0_0.distcp``, ``__1_0.distcp``)."""
    import torch.multiprocessing as mp

    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(_fsdp_worker, args=(world, str(out), _free_port(), steps), nprocs=world)
    full = torch.load(out.parent / "fsdp_full_optimizer.pt", weights_only=True)
    truth: Truth = {}
    for fqn, st in full["state"].items():
        truth[fqn] = {"exp_avg": st["exp_avg"], "exp_avg_sq": st["exp_avg_sq"], "step": int(st["step"]), "group": 0}
    return out, truth


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "checkpoints_demo")
    out.mkdir(parents=True, exist_ok=True)
    writers = [
        ("dcp", lambda: write_dcp(out / "dcp_step3")),
        ("dcp-sharded", lambda: write_dcp_sharded(out / "dcp_sharded_step3")),
        ("lightning", lambda: write_lightning(out / "lightning")),
        ("hf", lambda: write_hf(out / "hf")),
        ("accelerate", lambda: write_accelerate(out / "accelerate_step3")),
    ]
    for name, fn in writers:
        try:
            path, _ = fn()
            print(f"{name}: {path}")
        except ImportError as e:
            print(f"{name}: skipped ({e})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
