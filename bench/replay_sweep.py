"""Benchmark: K sequential replays (real torch.optim.Adam, one variant after another) vs one batched
sweep (vmap over K stacked parameter copies + the stacked Adam update), side by side, on CPU and, when
available, CUDA. Also reports how closely the two agree (max relative loss difference).

    .venv/bin/python bench/replay_sweep.py                      # defaults: K=4 and 16, two model sizes
    .venv/bin/python bench/replay_sweep.py --k 8 --steps 100 --devices cpu
    python bench/replay_sweep.py --devices cuda --out sweep_cuda.json  # on a GPU machine

Prints a table and writes bench/out/replay_sweep.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adamdiag.replay.checkpoint import load_replay_checkpoint  # noqa: E402
from adamdiag.replay.engine import replay_sequential  # noqa: E402
from adamdiag.replay.protocol import Variant, validate_spec  # noqa: E402
from adamdiag.replay.sweep import replay_batched  # noqa: E402

SIZES = {
    # name: (input, width, depth, batch)
    "mlp-small": (32, 64, 2, 32),
    "mlp-medium": (256, 1024, 3, 256),
    "mlp-large": (1024, 4096, 3, 512),  # 38M parameters: GPU only by default (minutes per row on CPU)
}
DEFAULT_SIZES = {"cpu": ["mlp-small", "mlp-medium"], "cuda": list(SIZES)}


def make_model(d_in: int, width: int, depth: int) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(d_in, width), nn.Tanh()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.Tanh()]
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def make_batch_fn(d_in: int, batch: int):
    def batch_fn(t: int):
        g = torch.Generator().manual_seed(t)
        x = torch.randn(batch, d_in, generator=g)
        return x, torch.sin(x[:, :1] * 3)

    return batch_fn


def loss_fn(model: nn.Module, b) -> torch.Tensor:
    x, y = b
    return ((model(x) - y) ** 2).mean()


def checkpoint(size: str, folder: Path) -> Path:
    d_in, width, depth, batch = SIZES[size]
    model = make_model(d_in, width, depth)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-8)
    bf = make_batch_fn(d_in, batch)
    for t in range(1, 11):
        opt.zero_grad()
        loss_fn(model, bf(t)).backward()
        opt.step()
    path = folder / f"{size}.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 10}, path)
    return path


def variants(k: int) -> list[Variant]:
    # eps from 1e-8 to 1e-1 and a few beta2: what a sweep looks like
    eps = [10.0 ** (-8 + 7 * i / max(k - 1, 1)) for i in range(k)]
    return [Variant(f"v{i}", e, 0.999 if i % 2 == 0 else 0.99, 1e-3) for i, e in enumerate(eps)]


def timed(fn) -> tuple[float, object]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def bench_one(size: str, device: torch.device, k: int, steps: int, folder: Path) -> dict:
    d_in, width, depth, batch = SIZES[size]
    ckpt = load_replay_checkpoint(checkpoint(size, folder))
    spec = validate_spec(
        {
            "model": make_model(d_in, width, depth),
            "batch": make_batch_fn(d_in, batch),
            "loss": loss_fn,
            "clip_grad_norm": 1.0,
        },
        "bench",
        "bench",
    )
    vs = variants(k)
    # warm-up: first calls pay for kernel selection / allocator growth / vmap tracing
    replay_batched(spec, ckpt, vs, 3, device)
    replay_sequential(spec, ckpt, vs[:1], 3, device)
    t_seq, seq = timed(lambda: replay_sequential(spec, ckpt, vs, steps, device))
    t_bat, bat = timed(lambda: replay_batched(spec, ckpt, vs, steps, device))
    diff = 0.0
    for s, b in zip(seq, bat):
        for x, y in zip(s.losses, b.losses):
            diff = max(diff, abs(x - y) / max(abs(x), 1e-30))
    n_params = sum(p.numel() for p in spec.model.parameters())
    return {
        "device": str(device),
        "model": size,
        "params": n_params,
        "batch": batch,
        "K": k,
        "steps": steps,
        "sequential_s": t_seq,
        "batched_s": t_bat,
        "speedup": t_seq / t_bat,
        "sequential_variant_steps_per_s": k * steps / t_seq,
        "batched_variant_steps_per_s": k * steps / t_bat,
        "max_rel_loss_diff": diff,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, nargs="+", default=[4, 16], help="numbers of variants")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument(
        "--sizes",
        nargs="+",
        default=None,
        choices=list(SIZES),
        help="default: small and medium on CPU, all three on CUDA",
    )
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "replay_sweep.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dev in devices:
            for size in args.sizes or DEFAULT_SIZES[torch.device(dev).type]:
                for k in args.k:
                    row = bench_one(size, torch.device(dev), k, args.steps, Path(tmp))
                    rows.append(row)
                    print(
                        f"{row['device']:6} {row['model']:11} {row['params']:>9,} params  K={row['K']:<3} "
                        f"{row['steps']} steps  sequential {row['sequential_s']:7.2f} s  batched "
                        f"{row['batched_s']:7.2f} s  speedup {row['speedup']:5.2f}x  "
                        f"max rel diff {row['max_rel_loss_diff']:.1e}",
                        flush=True,
                    )
    meta = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
