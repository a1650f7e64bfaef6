"""FSDP2 (DTensor) optimizer state on 2 gloo ranks: the monitor computes on the local shards and
all-reduces the sums and histograms; the result equals an unsharded run on the same data."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.slow

WORLD = 2
STEPS = 4


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10), nn.LayerNorm(10), nn.Linear(10, 3))


def _batch(rank: int, step: int) -> torch.Tensor:
    return torch.randn(4, 6, generator=torch.Generator().manual_seed(100 * step + rank))


def _worker(rank: int, out: str, port: int) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from adamdiag.monitor import AdamMonitor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        model = _model()
        for layer in model:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        mon = AdamMonitor(opt, model=model, every=1, run_dir=out)
        for step in range(1, STEPS + 1):
            model(_batch(rank, step)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        Path(out, f"rank{rank}.json").write_text(json.dumps(mon.last))
        mon.close()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp2_two_gloo_ranks_equal_unsharded(tmp_path) -> None:
    import torch.multiprocessing as mp

    from adamdiag.monitor import LIVE_FILE, AdamMonitor

    mp.spawn(_worker, args=(str(tmp_path), _free_port()), nprocs=WORLD)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0 == r1  # every rank sees the all-reduced numbers
    assert (tmp_path / LIVE_FILE).exists()  # written by rank 0

    # the unsharded reference: the same model, the mean loss over both ranks' batches
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    mon = AdamMonitor(opt, model=model, every=1)
    for step in range(1, STEPS + 1):
        x = torch.cat([_batch(r, step) for r in range(WORLD)])
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    for label, ref in mon.last.items():
        got = r0[label]
        for k in ("g2_mean", "vhat_mean", "r", "update_rms", "frac_below_eps", "frac_below_10eps"):
            assert got[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-12), (label, k)
        for k in ("sqrt_vhat_p01", "sqrt_vhat_p50", "sqrt_vhat_p99"):
            assert got[k] == pytest.approx(ref[k], rel=0.05), (label, k)
