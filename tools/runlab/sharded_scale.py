"""Sharded checkpoints of any size in the real writers' layout (issue 13 item 7: the scale bench).

Writing a multi-GB DCP or DeepSpeed ZeRO-3 checkpoint with 4 real ranks needs 4 processes that each
hold their shard and train; on a small machine that is not possible. So:

* ``real``: a *small* checkpoint written by the real libraries with 4 gloo ranks (committed under
  ``tests/fixtures/sharded/``): ``dcp_fsdp4/`` (FSDP2 ``fully_shard`` + ``get_state_dict`` +
  ``torch.distributed.checkpoint.save``) and ``zero3_4/`` (DeepSpeed ZeRO-3 ``engine.save_checkpoint``
  on the CPU accelerator). The model: 16 ``Linear(8, 8)`` + ``LayerNorm(8)`` + ``Linear(8, 4)``, one
  AdamW group (lr 1e-2, betas (0.9, 0.99), eps 1e-7, weight decay 0.1), 2 steps.
* ``scale``: the same files with every dimension of every parameter multiplied by ``k``, written by
  repeating what the real writer did item by item, with the template as the plan: the same files,
  items in the same order, the same pickled metadata / dicts, each tensor saved with ``torch.save``
  as the writers do; only the sizes, offsets and lengths follow from the new shapes (DCP: FSDP2's
  ``Shard(0)`` chunks of ``ceil(rows / world)``; ZeRO-3: ``ceil(numel / world)`` elements per rank and
  parameter, zero padded, concatenated in ``param_shapes`` order). With ``k = 1`` and the template's
  own values the output is the template **byte for byte** (``tests/io/test_sharded_scale.py``) — the
  check that the layout is the writer's. With synthetic values (:func:`synth`: the full tensor of a
  parameter depends only on its name and shape, so the DCP and ZeRO-3 versions hold the same model),
  any ``k``; peak memory is one rank's files' tensors (ZeRO-3) or one tensor (DCP).

::

    python tools/runlab/sharded_scale.py real tests/fixtures/sharded           # needs deepspeed for zero3_4
    python tools/runlab/sharded_scale.py scale tests/fixtures/sharded/dcp_fsdp4 /tmp/big_dcp --k 512
    python tools/runlab/sharded_scale.py scale tests/fixtures/sharded/zero3_4 /tmp/big_z3 --k 512
"""

from __future__ import annotations

import argparse
import copy
import io
import math
import os
import pickle
import re
import shutil
import socket
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

WORLD = 4
STEPS = 2
LAYERS = 16
Values = Callable[[str, str, tuple[int, ...]], torch.Tensor]  # (param name, kind, full shape) -> full tensor


def template_model() -> nn.Sequential:
    """Every dimension a multiple of 4: FSDP2 and ZeRO-3 cut every parameter into 4 equal pieces,
    at any scale k (a layout the scaler reproduces without special cases)."""
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(8, 8) for _ in range(LAYERS)], nn.LayerNorm(8), nn.Linear(8, 4))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train(model: nn.Module, opt: torch.optim.Optimizer, rank: int, step: Callable[[torch.Tensor], None]) -> None:
    g = torch.Generator().manual_seed(rank + 1)
    for _ in range(STEPS):
        step(torch.randn(4, 8, generator=g))


# --- the real writers ------------------------------------------------------------------------------
def _dcp_worker(rank: int, world: int, out: str, port: int) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        model = template_model()
        for layer in model:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-7, weight_decay=0.1)

        def step(x: torch.Tensor) -> None:
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()

        _train(model, opt, rank, step)
        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=out)
    finally:
        dist.destroy_process_group()


def _zero3_worker(rank: int, world: int, out: str, port: int) -> None:
    from make_deepspeed_fixtures import init_cpu_rank

    init_cpu_rank(rank, world, port)  # sets DS_ACCELERATOR before deepspeed is imported
    import deepspeed

    model = template_model()
    # A torch optimizer: DeepSpeed's own "Adam" would JIT-compile CPUAdam (a C++ build).
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-7, weight_decay=0.1)
    cfg = {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3},
        "steps_per_print": 10_000,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)

    def step(x: torch.Tensor) -> None:
        engine.backward(engine(x).pow(2).mean())
        engine.step()

    _train(model, opt, rank, step)
    engine.save_checkpoint(out)


def write_real(out: Path, which: tuple[str, ...] = ("dcp_fsdp4", "zero3_4")) -> None:
    """The small real checkpoints (4 gloo ranks each) under ``out``."""
    import torch.multiprocessing as mp

    out.mkdir(parents=True, exist_ok=True)
    if "dcp_fsdp4" in which:
        d = out / "dcp_fsdp4"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        mp.spawn(_dcp_worker, args=(WORLD, str(d), _free_port()), nprocs=WORLD)
    if "zero3_4" in which:
        os.environ["DS_ACCELERATOR"] = "cpu"
        d = out / "zero3_4"
        shutil.rmtree(d, ignore_errors=True)
        mp.spawn(_zero3_worker, args=(WORLD, str(d), _free_port()), nprocs=WORLD)
        for helper in d.glob("zero_to_*.py"):  # code DeepSpeed copies beside a save, not data
            helper.unlink()


# --- values ----------------------------------------------------------------------------------------
def synth(name: str, kind: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A deterministic full tensor for parameter ``name`` (``kind``: param | exp_avg | exp_avg_sq):
    v spans eps² … 1e-4 down the rows (a gradient scale per row, collapsed rows included, as in
    bench/checkpoint_memory.py's ``rows`` layout), m ~ 0.1·√v·N(0,1), parameters ~ 0.02·N(0,1)."""
    seed = zlib.crc32(name.encode())
    g = torch.Generator().manual_seed(seed)
    if kind == "param":
        return torch.randn(shape, generator=g).mul_(0.02)
    scale = torch.logspace(-12, -2, shape[0]).reshape(-1, *([1] * (len(shape) - 1)))
    v = torch.randn(shape, generator=g).square_().mul_(scale.square())
    if kind == "exp_avg_sq":
        return v
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)).mul_(v.sqrt()).mul_(0.1)


def template_values(path: Path) -> Values:
    """The full tensors of a (small) checkpoint as adamdiag reads them, as :data:`Values`: scaling a
    real checkpoint with ``k = 1`` and these must give back its files byte for byte, through the
    same cutting, padding and metadata code as any ``k``."""
    from adamdiag.io.checkpoints import open_checkpoint

    ck = open_checkpoint(path)
    full: dict[tuple[str, str], torch.Tensor] = {}
    for t in ck.tensors():
        full[(str(t.name), "exp_avg")] = t.exp_avg.clone()
        full[(str(t.name), "exp_avg_sq")] = t.exp_avg_sq.clone()
        if t.param is not None:
            full[(str(t.name), "param")] = t.param.clone()

    def get(name: str, kind: str, shape: tuple[int, ...]) -> torch.Tensor:
        t = full[(name, kind)]
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{name} {kind}: template shape {tuple(t.shape)}, asked for {shape}")
        return t

    return get


def _scaled(shape: Any, k: int) -> tuple[int, ...]:
    return tuple(int(s) * k for s in shape)


# --- DCP -------------------------------------------------------------------------------------------
def _dcp_load_item(f: Any, offset: int, length: int) -> Any:
    f.seek(offset)
    return torch.load(io.BytesIO(f.read(length)), weights_only=True)


def scale_dcp(template: Path, out: Path, k: int, values: Values | None = None) -> None:
    """``template`` (a DCP checkpoint of FSDP2 ``Shard(0)`` tensors) with every dimension × ``k``.
    ``values=None``: the template's items as stored (``k`` must be 1)."""
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorStorageMetadata

    if values is None and k != 1:
        raise ValueError("the template's own values only at k = 1")
    with open(template / ".metadata", "rb") as f:
        md = pickle.load(f)  # noqa: S301 - our own committed fixture / a checkpoint the caller trusts
    new_md = copy.deepcopy(md)
    planner = getattr(md, "planner_data", None) or {}
    # key → (param name, kind): model.<fqn> / optim.state.<fqn>.<kind>, from the planner's paths
    by_file: dict[str, list[tuple[Any, Any]]] = {}
    for idx, info in md.storage_data.items():
        by_file.setdefault(info.relative_path, []).append((idx, info))
    out.mkdir(parents=True, exist_ok=True)
    new_storage = {}
    for rel, items in sorted(by_file.items()):
        items.sort(key=lambda x: x[1].offset)
        rank = int(re.match(r"__(\d+)_", rel).group(1))  # type: ignore[union-attr]
        with open(template / rel, "rb") as src, open(out / rel, "wb") as dst:
            pos = 0
            for idx, info in items:
                if info.offset != pos:
                    raise ValueError(f"{rel}: items not contiguous at {idx.fqn}")
                pos += info.length
                tmd = md.state_dict_metadata[idx.fqn]
                start = dst.tell()
                if isinstance(tmd, TensorStorageMetadata) and len(tmd.size) > 0:  # scalars (step) are copied
                    path = tuple(planner.get(idx.fqn, (idx.fqn,)))
                    name, kind = (path[-1], "param") if path[0] == "model" else (path[-2], path[-1])
                    full = _scaled(tmd.size, k)
                    rows = full[0]
                    per = math.ceil(rows / WORLD)  # FSDP2 Shard(0): torch.chunk of the rows
                    lo, hi = min(rows, rank * per), min(rows, (rank + 1) * per)
                    if values is None:
                        t = _dcp_load_item(src, info.offset, info.length)
                    else:
                        t = values(name, kind, full)[lo:hi].clone()  # clone: save only the rows' storage
                    torch.save(t, dst)
                    new_chunk = ChunkStorageMetadata(
                        offsets=torch.Size((lo,) + (0,) * (len(full) - 1)), sizes=torch.Size((hi - lo,) + full[1:])
                    )
                    stm = new_md.state_dict_metadata[idx.fqn]
                    stm.size = torch.Size(full)
                    ci = idx.index if idx.index is not None else 0
                    stm.chunks[ci] = new_chunk
                    new_idx = MetadataIndex(idx.fqn, new_chunk.offsets, idx.index)
                else:
                    src.seek(info.offset)
                    dst.write(src.read(info.length))
                    new_idx = idx
                new_storage[new_idx] = type(info)(relative_path=rel, offset=start, length=dst.tell() - start)
                for field in ("transform_descriptors",):
                    if hasattr(info, field):
                        setattr(new_storage[new_idx], field, getattr(info, field))
    # the same dict order as the template's (pickled as written)
    order = {(i.fqn, i.index): n for n, i in enumerate(md.storage_data)}
    new_md.storage_data = dict(sorted(new_storage.items(), key=lambda kv: order[(kv[0].fqn, kv[0].index)]))
    with open(out / ".metadata", "wb") as f:
        pickle.dump(new_md, f)


# --- DeepSpeed ZeRO-3 ------------------------------------------------------------------------------
def _ds_load(path: Path) -> Any:
    # our own fixture / a checkpoint the caller trusts; deepspeed's classes are needed to re-save it
    # exactly as DeepSpeed pickled it
    return torch.load(path, weights_only=False, map_location="cpu")


def _like(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``new`` with what DeepSpeed's tensor carried into the pickle: requires_grad and its attributes
    (the fp32 flat group has ``ds_id``: pickled through ``_rebuild_from_type_v2``)."""
    new = new.detach().requires_grad_(old.requires_grad)
    new.__dict__.update(old.__dict__)
    return new


def scale_zero3(template: Path, out: Path, k: int, values: Values | None = None) -> None:
    """``template`` (a DeepSpeed save directory of a ZeRO-3 run: ``latest`` + ``global_stepN/``,
    one sub-group) with every dimension × ``k``. Needs deepspeed importable (the pickles name its
    classes). ``values=None``: the template's own values (``k`` must be 1)."""
    if values is None and k != 1:
        raise ValueError("the template's own values only at k = 1")
    tag = (template / "latest").read_text().strip()
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template / "latest", out / "latest")
    (out / tag).mkdir(exist_ok=True)
    src_dir, dst_dir = template / tag, out / tag
    names = sorted(os.listdir(src_dir))
    model_files = [n for n in names if n.endswith("_model_states.pt")]
    optim_files = [n for n in names if n.endswith("_optim_states.pt")]
    world = len(optim_files)
    shapes: list[tuple[str, tuple[int, ...]]] = []
    for n in model_files:
        ms = _ds_load(src_dir / n)
        groups = ms["param_shapes"]
        shapes = [(str(p), tuple(int(s) for s in sh)) for g in groups for p, sh in g.items()]
        if values is not None or k != 1:
            ms["param_shapes"] = [type(g)((p, torch.Size(_scaled(sh, k))) for p, sh in g.items()) for g in groups]
        torch.save(ms, dst_dir / n)
    for n in optim_files:
        rank = int(re.search(r"zero_pp_rank_(\d+)_", n).group(1))  # type: ignore[union-attr]
        obj = _ds_load(src_dir / n)
        osd = obj["optimizer_state_dict"]
        if values is not None:
            if len(osd["fp32_flat_groups"]) != 1:
                raise ValueError(f"{n}: {len(osd['fp32_flat_groups'])} sub-groups; the scaler writes one")
            flats: dict[str, list[torch.Tensor]] = {kind: [] for kind in ("param", "exp_avg", "exp_avg_sq")}
            for name, sh in shapes:
                full = _scaled(sh, k)
                numel = math.prod(full)
                per = math.ceil(numel / world)
                for kind, parts in flats.items():
                    piece = values(name, kind, full).reshape(-1)[rank * per : (rank + 1) * per]
                    parts.append(torch.nn.functional.pad(piece, (0, per - piece.numel())))  # ZeRO-3 zero padding
            cat = {kind: torch.cat(parts) for kind, parts in flats.items()}
            del flats
            osd["fp32_flat_groups"] = [_like(cat["param"], osd["fp32_flat_groups"][0])]
            st = osd["optimizer_state_dict"]["state"][0]
            st["exp_avg"], st["exp_avg_sq"] = (
                _like(cat["exp_avg"], st["exp_avg"]),
                _like(cat["exp_avg_sq"], st["exp_avg_sq"]),
            )
        torch.save(obj, dst_dir / n)
        del obj


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("real", help="write the small real 4-rank checkpoints")
    r.add_argument("out", type=Path)
    r.add_argument("--only", nargs="*", default=["dcp_fsdp4", "zero3_4"])
    s = sub.add_parser("scale", help="a template scaled by k, synthetic values")
    s.add_argument("template", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--k", type=int, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "real":
        write_real(args.out, tuple(args.only))
        return 0
    kind = "dcp" if (args.template / ".metadata").is_file() else "zero3"
    (scale_dcp if kind == "dcp" else scale_zero3)(args.template, args.out, args.k, synth)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {args.out} ({kind}, k={args.k}, {size / 1e9:.3f} GB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
