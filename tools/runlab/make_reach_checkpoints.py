"""2-rank gloo checkpoints written by torch's own distributed optimizers and state-dict APIs, with the
truth taken from the live (sharded) optimizer state on the ranks that hold it:

* ``zero.pt``            — ``torch.distributed.optim.ZeroRedundancyOptimizer`` (Adam):
  ``consolidate_state_dict(to=0)``, then ``torch.save({"model", "optimizer", "step"})`` on rank 0.
  Truth: each rank's local ``optim.state`` (the parameters it owns), gathered.
* ``fsdp2_full.pt``      — FSDP2 ``fully_shard`` + ``get_optimizer_state_dict(..., full_state_dict=True,
  cpu_offload=True)`` saved on rank 0. Truth: ``exp_avg_sq.full_tensor()`` of the live DTensor state.
* ``fsdp2_sharded_rank{0,1}.pt`` — the same without ``full_state_dict``: each rank's DTensor shards
  (what adamdiag must refuse: one rank's piece is not the tensor).

FSDP1 (``FullyShardedDataParallel``) cannot train on CPU in torch 2.13 (it needs an accelerator, and
with ``device_id=cpu`` its flat parameters fail in forward), so it is not written here.

Usage (tests call :func:`write`): ``python tools/runlab/make_reach_checkpoints.py OUT``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

STEPS, LR, EPS, BETA2 = 4, 1e-2, 1e-6, 0.999


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.LayerNorm(16), nn.Linear(16, 4))


def _stats(v: torch.Tensor, step: int) -> dict[str, Any]:
    s = torch.sort((v.double() / (1 - BETA2**step)).sqrt().flatten()).values
    n = s.numel()
    q = {
        k: float(s[round(f * (n - 1))])
        for k, f in (("min", 0.0), ("p01", 0.01), ("p50", 0.5), ("p99", 0.99), ("max", 1.0))
    }
    return {"step": step, "sqrt_vhat_q": q, "v_mean": float(v.double().mean()), "shape": list(v.shape)}


def _train(model: nn.Module, opt: Any, rank: int) -> None:
    g = torch.Generator().manual_seed(1 + rank)  # different data per rank: the averaged gradient matters
    for _ in range(STEPS):
        x, y = torch.randn(32, 8, generator=g), torch.randn(32, 4, generator=g)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


def _worker(rank: int, port: int, out: str) -> None:
    warnings.simplefilter("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    o_dir = Path(out)
    truth: dict[str, Any] = {}
    try:
        # --- ZeroRedundancyOptimizer (with DDP: gradients averaged over the ranks) ---
        from torch.distributed.optim import ZeroRedundancyOptimizer
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = net()
        ddp = DDP(model)
        zero = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=torch.optim.Adam, lr=LR, eps=EPS)
        _train(ddp, zero, rank)
        names = {id(p): n for n, p in model.named_parameters()}
        mine = {names[id(p)]: _stats(st["exp_avg_sq"], int(st["step"])) for p, st in zero.optim.state.items()}
        gathered: list[Any] = [None, None]
        dist.all_gather_object(gathered, mine)
        zero.consolidate_state_dict(to=0)
        if rank == 0:
            torch.save({"model": model.state_dict(), "optimizer": zero.state_dict(), "step": STEPS}, o_dir / "zero.pt")
            truth["zero.pt"] = {k: v for part in gathered for k, v in part.items()}
        # --- FSDP2 ---
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )
        from torch.distributed.fsdp import fully_shard

        model = net()
        for sub in list(model)[::2]:
            fully_shard(sub)
        fully_shard(model)
        opt = torch.optim.Adam(model.parameters(), lr=LR, eps=EPS)
        _train(model, opt, rank)
        full = {}
        for n, p in model.named_parameters():
            st = opt.state[p]
            full[n] = _stats(st["exp_avg_sq"].full_tensor(), int(st["step"]))  # a collective: every rank
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        osd, msd = get_optimizer_state_dict(model, opt, options=opts), get_model_state_dict(model, options=opts)
        if rank == 0:
            torch.save({"model": msd, "optimizer": osd, "step": STEPS}, o_dir / "fsdp2_full.pt")
            truth["fsdp2_full.pt"] = full
        osd, msd = get_optimizer_state_dict(model, opt), get_model_state_dict(model)
        torch.save({"model": msd, "optimizer": osd, "step": STEPS}, o_dir / f"fsdp2_sharded_rank{rank}.pt")
        if rank == 0:
            (o_dir / "truth.json").write_text(json.dumps(truth, indent=1))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write(out: Path) -> dict[str, Any]:
    """Write the files into ``out``; returns the truth (file -> parameter name -> statistics)."""
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=2)
    return json.loads((out / "truth.json").read_text())


if __name__ == "__main__":
    write(Path(sys.argv[1]))
