"""Memory and time of ``inspect`` on multi-GB sharded checkpoints (DCP and DeepSpeed ZeRO-3, 4 ranks)
vs a bare read of all their bytes (issue 13 item 7).

The checkpoints come from ``tools/runlab/sharded_scale.py``: the small real 4-rank checkpoints of
``tests/fixtures/sharded/`` (FSDP2 + ``torch.distributed.checkpoint``; DeepSpeed ZeRO-3) scaled by
``--k`` in every dimension, item by item in the writers' layout (at k = 1 the scaler gives back the
real files byte for byte: ``tests/io/test_sharded_scale.py``). k = 512 gives 16 ``4096×4096`` layers:
3.3 GB per checkpoint (fp32 parameters, exp_avg, exp_avg_sq), 36 tensors, each weight's state and
parameter 201 MB. Writing the ZeRO-3 one needs deepspeed importable (it re-saves DeepSpeed's pickles).

Each round runs every mode once, back to back, each in a fresh subprocess on a warm page cache
(every file is read once before the rounds):

Imports are excluded from the times (torch, adamdiag, and DCP's metadata module: ~0.3-0.9 s once per
process, reported as ``import_dcp_seconds``).

* ``bare``   — every byte of every file of the checkpoint read in Python (``readinto`` a 16 MB
               buffer, unbuffered): the least any reader must do;
* ``jobs=N`` — ``adamdiag inspect --format json --jobs N`` as the CLI runs it (``run_inspect``): every
               statistic, exact quantiles, the zip CRC of every member read (DeepSpeed files are
               torch zips; DCP's are not checked), with the compiled kernels when built (statistics;
               CRC-32 by PCLMULQDQ folding, ``io/checkpoints/_crc32_kernel.c``);
* ``jobs=N+zlib`` (``--zlib``) — the same with the CRC by ``zlib.crc32``, as a build without the CRC
               kernel (or a CPU without PCLMULQDQ) computes it;
* ``jobs=N+isal`` (``--isal DIR``) — the same with the CRC by the optional ``isal`` package
               (``adamdiag[fast]``) on the path instead of the kernel.

Reported per mode: best wall time (imports excluded), the median over rounds of the round's own
ratio to ``bare`` (robust to load that changes between rounds: this machine is shared), and the
peak RSS above the process's RSS after imports (VmHWM − VmRSS after imports; VmHWM counts mapped
file pages too) as a fraction of the checkpoint's size. Targets: peak RSS above imports < 25% of
the checkpoint, time ≤ 3× bare (median of the rounds' ratios). Prints a table, writes JSON.

    python bench/sharded_checkpoint.py [--k 512] [--formats dcp,zero3] [--jobs 1,2] [--rounds 5]
                                       [--zlib] [--isal DIR] [--keep] [--out bench/results/sharded_checkpoint.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIX = ROOT / "tests" / "fixtures" / "sharded"
TEMPLATES = {"dcp": FIX / "dcp_fsdp4", "zero3": FIX / "zero3_4"}

CHILD = r"""
import json, sys, time

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0

mode, path = sys.argv[1], sys.argv[2]
jobs, _, crc_mode = mode.partition("+")
import torch
torch.set_num_threads(1)
from adamdiag.cli.inspect import run_inspect
from adamdiag.analysis import moments_kernel
from adamdiag.io.checkpoints import crc_kernel, integrity
if crc_mode in ("zlib", "isal"):  # the CRC as a build without the compiled kernel computes it
    crc_kernel.available = lambda: False
# what the DCP reader imports on first use (DCP's metadata classes pull in torch.distributed): a
# fixed cost, not per byte; counted as an import here and reported as import_dcp_seconds
t_imp = time.perf_counter()
import torch.distributed.checkpoint.metadata
import_dcp = time.perf_counter() - t_imp
rss0 = status("VmRSS")
t0 = time.perf_counter()
if jobs == "bare":
    import os
    buf = bytearray(16 << 20)
    n = 0
    for dirpath, _, names in os.walk(path):
        for name in sorted(names):
            with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                while (got := f.readinto(buf)):
                    n += got
    tensors = None
else:
    out = run_inspect([__import__("pathlib").Path(path)], "json", None, False, jobs=int(jobs))
    tensors = len(json.loads(out)["checkpoints"][0]["tensors"])
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "peak_rss": status("VmHWM"), "rss_after_imports": rss0, "tensors": tensors,
                  "kernel": moments_kernel.available(), "crc": integrity.crc_engine(),
                  "import_dcp_seconds": import_dcp}))
"""


def build(kind: str, out: Path, k: int) -> float:
    """Write the scaled checkpoint (in a child process: this one never holds its tensors)."""
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "runlab" / "sharded_scale.py"), "scale", str(TEMPLATES[kind]), str(out)]
        + ["--k", str(k)],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    if r.returncode != 0:
        raise SystemExit(f"writing the {kind} checkpoint failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def run_child(mode: str, path: Path, isal: Path | None) -> dict:
    pp = [str(ROOT)] + ([str(isal)] if isal else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(pp))
    r = subprocess.run([sys.executable, "-c", CHILD, mode, str(path)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{mode} on {path} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def warm(path: Path) -> int:
    size = 0
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        size += f.stat().st_size
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    return size


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "load average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=512, help="scale of every dimension (512: 3.3 GB per checkpoint)")
    ap.add_argument("--formats", default="dcp,zero3", help="comma-separated: dcp, zero3")
    ap.add_argument("--jobs", default="1,2", help="comma-separated --jobs values to run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--zlib", action="store_true", help="also run each --jobs with zlib's CRC-32 (no kernel CRC)")
    ap.add_argument("--isal", type=Path, default=None, help="a directory holding the isal package (pip --target)")
    ap.add_argument("--dir", type=Path, default=HERE / "out" / "sharded", help="where the checkpoints are written")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints afterwards")
    ap.add_argument("--out", type=Path, default=HERE / "out" / "sharded_checkpoint.json")
    args = ap.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    jobs = [int(j) for j in args.jobs.split(",") if j.strip()]
    if not formats or any(f not in TEMPLATES for f in formats) or not jobs or min(jobs) < 1:
        ap.error("--formats from dcp, zero3; --jobs positive integers")
    modes = ["bare"] + [str(j) for j in jobs] + ([f"{j}+zlib" for j in jobs] if args.zlib else [])
    modes += [f"{jobs[-1]}+isal"] if args.isal else []
    res: dict = {
        "k": args.k,
        "rounds": args.rounds,
        "cpu_count": os.cpu_count(),
        "uptime_before": uptime(),
        "formats": {},
    }
    print(res["uptime_before"])
    for kind in formats:
        path = args.dir / f"{kind}_k{args.k}"
        info: dict = {"path": str(path)}
        if not path.exists():
            info["write_seconds"] = build(kind, path, args.k)
        try:
            size = warm(path)
            runs: dict[str, list[dict]] = {m: [] for m in modes}
            for _ in range(args.rounds):
                for m in modes:
                    runs[m].append(run_child(m, path, args.isal if m.endswith("+isal") else None))
        finally:
            if not args.keep:
                shutil.rmtree(path, ignore_errors=True)
        info.update(bytes=size, files=len(list(path.rglob("*"))) if path.exists() else None)
        for m, rs in runs.items():
            ratios = [r["seconds"] / b["seconds"] for r, b in zip(rs, runs["bare"])]
            above = max(r["peak_rss"] - r["rss_after_imports"] for r in rs)
            info[m] = {
                "best_seconds": min(r["seconds"] for r in rs),
                "median_seconds": statistics.median(r["seconds"] for r in rs),
                "median_ratio_to_bare": statistics.median(ratios),
                "ratios": ratios,
                "peak_rss_above_imports": above,
                "peak_rss_above_imports_fraction": above / size,
                "rss_after_imports": rs[0]["rss_after_imports"],
                "kernel": rs[0]["kernel"],
                "crc": rs[0]["crc"],
                "runs": rs,
            }
        res["formats"][kind] = info
    res["uptime_after"] = uptime()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(
        f"k={args.k}, {args.rounds} rounds (modes alternate within each), 1 torch thread per process; "
        f"{res['uptime_after']}"
    )
    print(f"{'':8}{'mode':>10}{'best s':>9}{'median s':>10}{'median x bare':>15}{'peak RSS-imports':>18}{'/ size':>8}")
    for kind, info in res["formats"].items():
        for m in modes:
            r = info[m]
            label = "bare read" if m == "bare" else f"jobs={m}"
            print(
                f"{kind:8}{label:>10}{r['best_seconds']:>9.2f}{r['median_seconds']:>10.2f}"
                f"{r['median_ratio_to_bare']:>15.2f}{r['peak_rss_above_imports'] / 1e6:>15.0f} MB"
                f"{r['peak_rss_above_imports_fraction']:>8.1%}"
            )
        print(
            f"{kind:8} {info['bytes'] / 1e9:.2f} GB; CRC via {info[modes[1]]['crc']}; kernel {info[modes[1]]['kernel']}"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
