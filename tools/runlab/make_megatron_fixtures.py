"""Writes tests/fixtures/megatron/: small real Megatron-core dist checkpoints (``torch_dist`` backend, the format of
Megatron-LM's ``--ckpt-format torch_dist`` and NeMo 2), so that adamdiag's DCP reader (which needs neither
megatron-core nor a process group) can be tested against what Megatron writes.

Megatron-core's optimizer wrappers shard the state with ``optim_state_to_sharding_state``: one tensor per state key
and model parameter, keyed by the parameter's sharded key — ``optimizer.state.exp_avg.decoder.layers.mlp.
linear_fc1.weight``, the transformer layers stacked on a leading axis — and put the param groups (their ``params``
not saved) and the common step in ``common.pt``. Written here by megatron-core's own ``FP32Optimizer`` and ``dist_checkpointing.save`` around ``torch.optim.AdamW`` (what
megatron-core falls back to without Transformer Engine or apex), on a small model whose parameters carry
Megatron's sharded keys the way ``TransformerBlock.sharded_state_dict`` lays them out:

* ``fp32_tp2`` — 2 ranks (gloo), tensor parallel 2: ``linear_fc1`` split by rows and ``linear_fc2`` by columns
  across the ranks (column / row parallel), the rest replicated (written by rank 0); two param groups (weight decay
  0.1 on matrices, 0 on biases), Megatron-LM's directory layout ``iter_0000020/`` + ``latest_checkpointed_iteration.txt``.

``Float16OptimizerWithFloat16Params`` (bf16/fp16 models: fp32 masters as one more state key, ``fp32_param``) is not
written: it refuses parameters that are not CUDA tensors.

``truth.json`` per configuration: the float64 mean and max of v and the mean |m| of every stacked key, gathered
from the ranks' live optimizer state after the save, plus the step and hyperparameters.

megatron-core 0.16 assumes CUDA in three places that do not change what is written (an fp32 loss-scale tensor,
a ``torch.cuda.synchronize`` after its device-to-host copies, the device of a status broadcast): they are pointed
at the CPU below. Needs megatron-core (``pip install --no-deps megatron-core==0.16.1``: it imports only torch,
numpy and packaging for this)::

    python tools/runlab/make_megatron_fixtures.py tests/fixtures/megatron

``fp32_tp2_mcore014`` is the same script run with megatron-core 0.14.0 (``pip install --no-deps --target DIR
megatron-core==0.14.0``, ``PYTHONPATH=DIR``) and its ``fp32_tp2`` folder renamed: that version pickles its own
MCoreMetadata / MCoreSavePlan classes into ``.metadata``. (0.12.3 does not write with torch 2.13's DCP.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

LAYERS, HIDDEN, STEPS = 2, 8, 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_only_shims() -> None:
    """megatron-core 0.16's CUDA-only spots that do not affect the files (see the module docstring)."""
    tensor = torch.tensor

    def tensor_on_cpu(*a: Any, **k: Any) -> Any:
        return tensor(*a, **({**k, "device": "cpu"} if k.get("device") == "cuda" else k))

    torch.tensor = tensor_on_cpu  # type: ignore[assignment]
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment,return-value]


class _Layer(nn.Module):
    def __init__(self, tp: int) -> None:
        super().__init__()
        self.linear_fc1 = nn.Linear(HIDDEN, 4 * HIDDEN // tp)  # column parallel: output rows split
        self.linear_fc2 = nn.Linear(4 * HIDDEN // tp, HIDDEN)  # row parallel: input columns split

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear_fc2(torch.tanh(self.linear_fc1(x)))


class _Model(nn.Module):
    def __init__(self, tp: int) -> None:
        super().__init__()
        self.embedding = nn.Linear(4, HIDDEN)
        self.layers = nn.ModuleList(_Layer(tp) for _ in range(LAYERS))
        self.output_layer = nn.Linear(HIDDEN, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embedding(x)
        for layer in self.layers:
            h = layer(h)
        return self.output_layer(h)


def _sharded_key(name: str) -> tuple[str, int | None]:
    """Megatron's sharded key of a parameter and its layer number (stacked on a prepended axis)."""
    if name.startswith("layers."):
        _, i, rest = name.split(".", 2)
        return f"decoder.layers.mlp.{rest}", int(i)
    head, leaf = name.split(".")
    return {"embedding": "embedding.word_embeddings", "output_layer": "output_layer"}[head] + "." + leaf, None


def _model_sharded_state_dict(model: nn.Module, tp_rank: int, tp: int) -> dict[str, Any]:
    from megatron.core.dist_checkpointing import ShardedTensor

    sd = {}
    for name, p in model.named_parameters():
        key, layer = _sharded_key(name)
        offsets: list[tuple[int, int, int]] = []
        if layer is not None:
            offsets.append((0, layer, LAYERS))
        split_axis = {"linear_fc1.weight": 0, "linear_fc1.bias": 0, "linear_fc2.weight": 1}.get(name.split(".", 2)[-1])
        prepend = 1 if layer is not None else 0
        if layer is not None and split_axis is not None and tp > 1:
            offsets.append((prepend + split_axis, tp_rank, tp))
            replica = 0
        else:
            replica = tp_rank  # replicated across tensor-parallel ranks: rank 0 writes it
        sd[name] = ShardedTensor.from_rank_offsets(key, p, *offsets, replica_id=replica, prepend_axis_num=prepend)
    return sd


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    _cpu_only_shims()
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.optimizer import OptimizerConfig
    from megatron.core.optimizer.optimizer import FP32Optimizer

    parallel_state.initialize_model_parallel(tensor_model_parallel_size=world)
    torch.manual_seed(0)  # the same replicated parameters on every rank
    model = _Model(world)
    named = list(model.named_parameters())
    order = [n for n, p in named if p.ndim >= 2] + [n for n, p in named if p.ndim < 2]
    params = dict(named)
    groups = [
        {"params": [params[n] for n in order if params[n].ndim >= 2], "weight_decay": 0.1},
        {"params": [params[n] for n in order if params[n].ndim < 2], "weight_decay": 0.0},
    ]
    adamw = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    cfg = OptimizerConfig(optimizer="adam", lr=1e-3, adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-8)
    opt = FP32Optimizer(adamw, cfg, init_state_fn=None)
    g = torch.Generator().manual_seed(1)  # the same batches on every rank (tensor parallel)
    for _ in range(STEPS):
        opt.zero_grad()
        model(torch.randn(16, 4, generator=g)).pow(2).mean().backward()
        adamw.step()
    sd = _model_sharded_state_dict(model, rank, world)
    state = {"model": sd, "optimizer": opt.sharded_state_dict(sd), "iteration": STEPS, "checkpoint_version": 3.0}
    d = Path(out) / f"iter_{STEPS:07d}"
    d.mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save(state, str(d))
    # the truth: each stacked key's full v and m, gathered from the ranks' live state
    stats: dict[str, dict[str, list[torch.Tensor]]] = {}
    for name in order:
        key, _ = _sharded_key(name)
        entry = stats.setdefault(key, {"exp_avg_sq": [], "exp_avg": []})
        split = name.endswith(("linear_fc1.weight", "linear_fc1.bias", "linear_fc2.weight"))
        for k in entry:
            local = adamw.state[params[name]][k].detach().double().flatten()
            parts = [torch.zeros_like(local) for _ in range(world)]
            torch.distributed.all_gather(parts, local)
            entry[k] += parts if split else [local]
    if rank == 0:
        truth = {
            "world_size": world,
            "step": STEPS,
            "lr": 1e-3,
            "betas": [0.9, 0.95],
            "eps": 1e-8,
            "megatron_core": __import__("megatron.core", fromlist=["__version__"]).__version__,
            "torch": str(torch.__version__),
            "tensors": {
                k: {
                    "v_mean": float(torch.cat(e["exp_avg_sq"]).mean()),
                    "v_max": float(torch.cat(e["exp_avg_sq"]).max()),
                    "m_abs_mean": float(torch.cat(e["exp_avg"]).abs().mean()),
                    "numel": int(torch.cat(e["exp_avg_sq"]).numel()),
                }
                for k, e in stats.items()
            },
        }
        (Path(out) / "truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n")
        (Path(out) / "latest_checkpointed_iteration.txt").write_text(str(STEPS))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    import torch.multiprocessing as mp

    d = args.out / "fp32_tp2"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    mp.spawn(_worker, args=(2, _free_port(), str(d)), nprocs=2)
    print(f"wrote {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
