"""Memory and time of ``summarize_checkpoint`` on a large checkpoint vs a bare pass over it.

Writes a ≥ 2 GB ``torch.save`` checkpoint ({'model', 'optimizer', 'step'}: several large Linear
layers with Adam state whose √v̂ spans eps), then runs, each in a fresh subprocess (so neither
inherits the other's memory), round after round:

* ``bare``       — ``torch.load(mmap=True, weights_only=True)`` + one ``.sum()`` over every moment tensor
                   (the least any reader must do: touch every byte of m and v once);
* ``summarize``  — ``adamdiag.pipeline.summary.summarize_checkpoint`` (every statistic of ``inspect``, exact
                   quantiles), with the compiled kernel (``adamdiag/analysis/_moments_kernel.c``) when
                   it is built — the default;
* ``summarize_torch`` — the same numbers without the kernel (``ADAMDIAG_NO_KERNEL=1``: torch/numpy
                   passes; what a machine without a C compiler runs);
* ``summarize_reference`` — the plain path the fast ones are tested against: no kernel, quantiles
                   from one float32 copy + ``np.partition`` per tensor.

``--layout rows`` (default) gives each row of a weight its own gradient scale (1e-12 … 1e-2 down the
rows, as layers and embedding rows differ in practice); ``--layout iid`` draws every element's scale
at random, so no block of a row spans a narrower range than the whole tensor (the kernel's bracket
skipping never applies: its worst case).

Reports peak RSS (VmHWM; the interpreter + imports alone as ``rss_after_imports``, and the peak above
that as ``peak_rss_above_imports``: a CUDA build of torch alone takes ~520 MB, a CPU build ~230 MB) and wall time of
the work itself (imports excluded): the best of ``--repeats`` rounds per mode, and the median over
rounds of summarize/bare within a round (both ran back to back, so this one is robust to load that
changes between rounds). Both run on a warm page cache (the file is read once before). Targets:
summarize peak RSS < 25% of the file size, time ≤ 3× the bare pass. Prints a table, writes
``bench/out/checkpoint_memory.json``.

    python bench/checkpoint_memory.py [--size-gb 2.2] [--layout rows|iid] [--keep] [--repeats 5]
                                      [--modes bare,summarize,...] [--path FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROWS, COLS = 4096, 3584

CHILD = r"""
import json, resource, sys, time
mode, path = sys.argv[1], sys.argv[2]

def hwm():
    # VmHWM: peak RSS of this process image (ru_maxrss would include the parent's peak at fork).
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

import torch
torch.set_num_threads(int(sys.argv[3]))
from adamdiag.pipeline.summary import summarize_checkpoint
rss0 = hwm()
t0 = time.perf_counter()
if mode == "summarize_reference":
    from adamdiag.analysis import moments
    moments.BRACKET_MIN_SIZE = 1 << 62  # every tensor takes the copy + partition path
from adamdiag.analysis import moments_kernel
if mode == "bare":
    obj = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    total = 0.0
    for st in obj["optimizer"]["state"].values():
        total += float(st["exp_avg"].sum()) + float(st["exp_avg_sq"].sum())
    n = len(obj["optimizer"]["state"])
else:
    s = summarize_checkpoint(path)
    n = len(s.tensors)
dt = time.perf_counter() - t0
print(json.dumps({"mode": mode, "seconds": dt, "peak_rss": hwm(), "rss_after_imports": rss0, "tensors": n,
                  "kernel": moments_kernel.available(), "vector_path": moments_kernel.vector_path()}))
"""


def write_checkpoint(path: Path, size_bytes: float, layout: str = "rows") -> dict:
    """Build the checkpoint one tensor at a time (peak memory ≈ the checkpoint, written once by
    torch.save; nothing is held twice)."""
    import torch

    per_layer = 3 * 4 * (ROWS * COLS + ROWS)  # param + exp_avg + exp_avg_sq, fp32
    layers = max(1, math.ceil(size_bytes / per_layer))
    g = torch.Generator().manual_seed(0)
    model, state = {}, {}
    groups = [
        {
            "params": [],
            "lr": 1e-3,
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 0.0,
            "amsgrad": False,
            "maximize": False,
            "foreach": None,
            "capturable": False,
            "differentiable": False,
            "fused": None,
            "decoupled_weight_decay": False,
        }
    ]
    idx = 0
    step = 5000
    for i in range(layers):
        for kind, shape in (("weight", (ROWS, COLS)), ("bias", (ROWS,))):
            name = f"layers.{i}.{kind}"
            model[name] = torch.randn(shape, generator=g) * 0.02
            if layout == "rows":
                # Per-row gradient scales from 1e-12 to 1e-2: v spans eps² … (collapsed rows included).
                scale = torch.logspace(-12, -2, shape[0]).reshape(-1, *([1] * (len(shape) - 1)))
            else:  # every element's scale at random in the same range: no structure along a row
                scale = torch.pow(10.0, torch.rand(shape, generator=g) * 10 - 12)
            v = torch.randn(shape, generator=g).square_().mul_(scale.square())
            m = torch.randn(shape, generator=g).mul_(v.sqrt()).mul_(0.1)
            state[idx] = {"step": torch.tensor(float(step)), "exp_avg": m, "exp_avg_sq": v}
            groups[0]["params"].append(idx)
            idx += 1
    torch.save({"model": model, "optimizer": {"state": state, "param_groups": groups}, "step": step}, path)
    return {"layers": layers, "tensors": idx, "layout": layout}


MODES = {  # name: (child mode, environment)
    "bare": ("bare", {}),
    "summarize": ("summarize", {}),
    "summarize_torch": ("summarize", {"ADAMDIAG_NO_KERNEL": "1"}),
    "summarize_reference": ("summarize_reference", {"ADAMDIAG_NO_KERNEL": "1"}),
}


def run_child(name: str, path: Path, threads: int) -> dict:
    mode, extra = MODES[name]
    env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)
    if not extra:
        env.pop("ADAMDIAG_NO_KERNEL", None)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(path), str(threads)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{name} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=2.2, help="checkpoint size to write, in 1e9 bytes")
    ap.add_argument(
        "--layout",
        choices=("rows", "iid"),
        default="rows",
        help="gradient scale per row (rows) or per element at random (iid); see the module docstring",
    )
    ap.add_argument(
        "--path",
        type=Path,
        default=None,
        help="checkpoint file (default bench/out/big_checkpoint[_iid].pt; written if missing)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint file afterwards")
    ap.add_argument("--repeats", type=int, default=5, help="rounds; each runs every mode once, back to back")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in every run (1: robust to other load on a small shared machine)",
    )
    ap.add_argument("--out", type=Path, default=HERE / "out" / "checkpoint_memory.json")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or "bare" not in modes or "summarize" not in modes:
        ap.error(f"--modes: needs bare and summarize, from {', '.join(MODES)} (got {args.modes!r})")
    if args.path is None:
        args.path = HERE / "out" / ("big_checkpoint.pt" if args.layout == "rows" else "big_checkpoint_iid.pt")
    args.path.parent.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    info: dict = {"layout": args.layout}
    if not args.path.exists():
        # In a child process, so that this one never holds the tensors.
        t0 = time.perf_counter()
        code = (
            "import json, sys; sys.path.insert(0, sys.argv[3]); from checkpoint_memory import write_checkpoint; "
            "print(json.dumps(write_checkpoint(__import__('pathlib').Path(sys.argv[1]), float(sys.argv[2]), "
            "sys.argv[4])))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(args.path), str(args.size_gb * 1e9), str(HERE), args.layout],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise SystemExit(f"writing the checkpoint failed:\n{out.stderr[-3000:]}")
        info = json.loads(out.stdout.strip().splitlines()[-1])
        info["write_seconds"] = time.perf_counter() - t0
    size = args.path.stat().st_size
    load_before = os.getloadavg()
    try:
        warm(args.path)
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for _ in range(args.repeats):
            for name in modes:
                runs[name].append(run_child(name, args.path, args.threads))
    finally:
        if not args.keep:
            args.path.unlink(missing_ok=True)
    best = {m: min(r, key=lambda x: x["seconds"]) for m, r in runs.items()}
    peak = {m: max(x["peak_rss"] for x in r) for m, r in runs.items()}
    res = {
        "checkpoint_bytes": size,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "kernel": runs["summarize"][0]["kernel"],
        "vector_path": runs["summarize"][0]["vector_path"],
        **info,
    }
    bare = best["bare"]["seconds"]
    for m in runs:
        per_round = sorted(r["seconds"] / b["seconds"] for r, b in zip(runs[m], runs["bare"]))
        res[m] = {
            "seconds": best[m]["seconds"],
            "ratio_best": best[m]["seconds"] / bare,
            "ratio_median_per_round": per_round[len(per_round) // 2],
            "peak_rss": peak[m],
            "peak_rss_fraction": peak[m] / size,
            "rss_after_imports": best[m]["rss_after_imports"],
            # what the work itself added: the interpreter + imports differ a lot between torch builds
            "peak_rss_above_imports": max(x["peak_rss"] - x["rss_after_imports"] for x in runs[m]),
        }
    res["runs"] = runs
    s = res["summarize"]
    res["targets"] = {
        "peak_rss_fraction_lt": 0.25,
        "time_ratio_le": 3.0,
        "met": s["peak_rss_fraction"] < 0.25 and s["ratio_best"] <= 3.0 and s["ratio_median_per_round"] <= 3.0,
    }
    args.out.write_text(json.dumps(res, indent=2))
    mb = 1e6
    kernel = (
        ("compiled kernel, vector loop" if res["vector_path"] else "compiled kernel, plain loop")
        if res["kernel"]
        else "NO compiled kernel (summarize = the torch path)"
    )
    print(
        f"checkpoint: {size / 1e9:.2f} GB, layout {res['layout']} ({best['summarize']['tensors']} tensors with "
        f"Adam state), threads={args.threads}, {args.repeats} rounds, {kernel}, load average before/after "
        f"{load_before[0]:.1f}/{res['load_average_after'][0]:.1f}"
    )
    print(
        f"{'':21}{'best s':>8}{'x bare':>8}{'median x':>10}{'peak RSS MB':>13}{'RSS/size':>10}"
        f"{'imports MB':>12}{'work MB':>9}"
    )
    for m in runs:
        r = res[m]
        print(
            f"{m:21}{r['seconds']:>8.2f}{r['ratio_best']:>8.2f}{r['ratio_median_per_round']:>10.2f}"
            f"{r['peak_rss'] / mb:>13.0f}{r['peak_rss_fraction']:>10.1%}{r['rss_after_imports'] / mb:>12.0f}"
            f"{r['peak_rss_above_imports'] / mb:>9.0f}"
        )
    print(
        f"summarize: {s['ratio_best']:.2f}x bare (best of each), {s['ratio_median_per_round']:.2f}x (median of the "
        f"rounds' ratios), target ≤ 3; peak RSS {s['peak_rss_fraction']:.1%} of the file, target < 25% -> targets "
        f"{'met' if res['targets']['met'] else 'NOT met'}"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
