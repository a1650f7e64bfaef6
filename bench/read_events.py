"""Benchmark: reading every scalar of a TensorBoard logdir, side by side.

    python bench/read_events.py                    # 10^6 and 10^7 scalar events (cached logdirs)
    python bench/read_events.py --sizes 1e6        # just one size
    python bench/read_events.py --tbparse-max 1e7  # tbparse at 10^7 too (default: only up to 10^6)

Logdirs are written once with a real writer (torch's SummaryWriter, 10 tags per step) and cached
under bench/out/logs/. The 10^6 set is one run (one file); the 10^7 set is ten such runs in
sub-directories (a logdir of ten runs): its first run is the 10^6 file (hard link), the other nine
are written by SummaryWriter in parallel processes -- slow the first time (~100-250 us per event
on a busy 2-core box), cached afterwards. ``--replicate`` hard-links the 10^6 run nine more times
instead (same real-writer bytes, no writing time).

Each reader runs in a fresh subprocess: peak RSS is that process's VmHWM (high-water mark) and,
for worker processes, the largest worker's ru_maxrss (forked: it includes pages shared with the
parent); "RSS before" is after all imports, before the read. The page cache is warmed by an untimed
raw read first:

* ``raw``      -- the floor: read all files' bytes;
* ``adamdiag`` -- ``adamdiag.io.events.read_runs`` as the CLI calls it (worker processes when there
  are several runs and idle CPUs);
* ``adamdiag-1proc`` / ``adamdiag-nproc`` -- the same forced to one process / one worker per CPU;
* ``tbparse``  -- ``SummaryReader(logdir).scalars``;
* ``ea``       -- TensorBoard's ``EventAccumulator(run, size_guidance={'scalars': 0})`` + ``Reload()``
  + ``Scalars(tag)`` for every tag, for each run.

Prints a table and writes bench/out/read_events.json. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
TAGS = [f"train/metric_{i}" for i in range(10)]
PER_RUN = 1_000_000  # events per run directory


# ------------------------------------------------------------------------------ logdirs


def _write_run(run_dir: str, n_events: int, seed: int) -> str:
    """One run: n_events scalars (10 tags per step) through torch's SummaryWriter."""
    import random

    from torch.utils.tensorboard import SummaryWriter

    tmp = Path(run_dir + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = random.Random(seed)
    w = SummaryWriter(log_dir=str(tmp), max_queue=1000, flush_secs=3600)
    x = 1.0
    for step in range(n_events // len(TAGS)):
        x = x * 0.9999 + rng.gauss(0, 0.01)
        for j, tag in enumerate(TAGS):
            w.add_scalar(tag, x + j, step)
    w.close()
    tmp.rename(run_dir)
    return run_dir


def _link_run(src: Path, dst: Path) -> None:
    dst.mkdir()
    for f in src.iterdir():
        try:
            os.link(f, dst / f.name)
        except OSError:
            shutil.copy2(f, dst / f.name)


def logdir_for(n: int, workers: int, replicate: bool = False) -> Path:
    """The cached logdir with n scalar events (n a multiple of 10^6, or smaller than 10^6)."""
    logs = OUT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if n <= PER_RUN:
        d = logs / f"scalars_{n}"
        if not (d / "run_00").exists():
            t = time.time()
            print(f"writing {n:,} events with SummaryWriter -> {d} ...", file=sys.stderr, flush=True)
            d.mkdir(exist_ok=True)
            with ProcessPoolExecutor(max_workers=1) as pool:  # keep torch out of this process
                pool.submit(_write_run, str(d / "run_00"), n, 0).result()
            print(f"  done in {time.time() - t:.0f} s", file=sys.stderr)
        return d
    runs = n // PER_RUN
    d = logs / (f"scalars_{n}" + ("_replicated" if replicate else ""))
    d.mkdir(exist_ok=True)
    src = logdir_for(PER_RUN, workers) / "run_00"
    if not (d / "run_00").exists():  # the 10^6 run's file, hard-linked (it is real SummaryWriter output too)
        _link_run(src, d / "run_00")
    if replicate:  # every run a hard link of the 10^6 run: same bytes, no writing time
        for i in range(1, runs):
            if not (d / f"run_{i:02d}").exists():
                _link_run(src, d / f"run_{i:02d}")
    todo = [(str(d / f"run_{i:02d}"), PER_RUN, i) for i in range(1, runs) if not (d / f"run_{i:02d}").exists()]
    if todo:
        t = time.time()
        print(
            f"writing {len(todo)} runs x {PER_RUN:,} events with SummaryWriter in {workers} processes "
            f"-> {d} (once; cached) ...",
            file=sys.stderr,
            flush=True,
        )
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for done in pool.map(_write_run, *zip(*todo)):
                print(f"  {done} ({time.time() - t:.0f} s)", file=sys.stderr, flush=True)
    return d


# ------------------------------------------------------------------------------ readers


def _files(logdir: Path) -> list[Path]:
    return sorted(p for p in logdir.rglob("events.out.tfevents.*") if p.is_file())


def _vm(field: str) -> int:
    """VmHWM/VmRSS of this process in bytes. (ru_maxrss would include the parent's RSS at fork:
    Linux carries it across exec.)"""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _measure(tool: str, logdir: Path) -> dict:
    """Runs inside the fresh subprocess: import first, then time only the read."""
    import pandas as pd  # noqa: F401 - everybody's import cost stays out of the timing

    rows = 0
    frame_bytes = None
    if tool.startswith("adamdiag"):
        from adamdiag.io.events import read_runs

        workers = {"adamdiag": None, "adamdiag-1proc": 1, "adamdiag-nproc": os.cpu_count() or 1}[tool]
        rss0 = _vm("VmRSS")
        t = time.perf_counter()
        runs = read_runs([logdir], workers=workers)
        dt = time.perf_counter() - t
        rows = sum(len(r.scalars) for r in runs)
        frame_bytes = int(sum(r.scalars.memory_usage(deep=True).sum() for r in runs))
    elif tool == "tbparse":
        from tbparse import SummaryReader

        rss0 = _vm("VmRSS")
        t = time.perf_counter()
        df = SummaryReader(str(logdir)).scalars
        dt = time.perf_counter() - t
        rows = len(df)
        frame_bytes = int(df.memory_usage(deep=True).sum())
    elif tool == "ea":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        run_dirs = sorted({f.parent for f in _files(logdir)})
        rss0 = _vm("VmRSS")
        t = time.perf_counter()
        for run in run_dirs:
            ea = EventAccumulator(str(run), size_guidance={"scalars": 0})
            ea.Reload()
            for tag in ea.Tags()["scalars"]:
                rows += len(ea.Scalars(tag))
        dt = time.perf_counter() - t
    elif tool == "raw":
        files = _files(logdir)
        rss0 = _vm("VmRSS")
        t = time.perf_counter()
        for f in files:
            with open(f, "rb") as fh:
                rows += len(fh.read())  # bytes, not rows
        dt = time.perf_counter() - t
    else:
        raise SystemExit(f"unknown tool {tool}")
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "tool": tool,
        "seconds": dt,
        "rows": rows,
        "frame_bytes": frame_bytes,
        "rss_before_read_bytes": rss0,
        "peak_rss_bytes": _vm("VmHWM"),
        "peak_rss_workers_bytes": child_kb * 1024,
    }


def run_tool(tool: str, logdir: Path, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--_measure", tool, str(logdir)]
    env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"tool": tool, "error": f"timed out after {timeout:.0f} s"}
    if p.returncode != 0:
        return {"tool": tool, "error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"rc {p.returncode}"}
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["process_seconds"] = time.time() - t
    return res


# ------------------------------------------------------------------------------ main


def _fmt_bytes(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**20:,.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1e6,1e7", help="comma list of event counts (multiples of 1e6 above 1e6)")
    ap.add_argument("--tools", default="raw,adamdiag,adamdiag-1proc,adamdiag-nproc,tbparse,ea")
    ap.add_argument(
        "--tbparse-max",
        type=float,
        default=1e6,
        help="run tbparse only for sizes up to this (default 1e6: at 1e7 it needs ~20 min and GBs)",
    )
    ap.add_argument("--ea-max", type=float, default=float("inf"), help="run EventAccumulator only up to this size")
    ap.add_argument("--timeout", type=float, default=3600, help="per reader run, seconds")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes writing the logdirs")
    ap.add_argument(
        "--replicate",
        action="store_true",
        help="build the 10^7 set from hard links of the 10^6 SummaryWriter run instead of writing 9 more",
    )
    ap.add_argument("--_measure", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._measure:
        print(json.dumps(_measure(args._measure[0], Path(args._measure[1]))))
        return
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    tools = args.tools.split(",")
    results = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "sizes": []}
    for n in sizes:
        logdir = logdir_for(n, args.workers, args.replicate)
        nbytes = sum(f.stat().st_size for f in _files(logdir))
        run_tool("raw", logdir, args.timeout)  # warm the page cache for everybody
        entry = {
            "events": n,
            "logdir": str(logdir),
            "bytes": nbytes,
            "runs": len({f.parent for f in _files(logdir)}),
            "replicated": args.replicate and n > PER_RUN,
            "results": [],
        }
        for tool in tools:
            limit = {"tbparse": args.tbparse_max, "ea": args.ea_max}.get(tool, float("inf"))
            if n > limit:
                entry["results"].append({"tool": tool, "error": f"not run at this size (limit {limit:.0e})"})
                continue
            print(f"[{n:.0e}] {tool} ...", file=sys.stderr, flush=True)
            res = run_tool(tool, logdir, args.timeout)
            res["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
            entry["results"].append(res)
        _keep_previous(entry, tools)
        results["sizes"].append(entry)
        _print_table(entry)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "read_events.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {OUT / 'read_events.json'}")


def _keep_previous(entry: dict, tools: list[str]) -> None:
    """Carry over results of readers not run this time (e.g. the 13-minute EventAccumulator run at
    10^7) from the previous JSON for the same size; each result keeps its ``measured_at``."""
    try:
        old = json.loads((OUT / "read_events.json").read_text())
    except (OSError, ValueError):
        return
    for prev in old.get("sizes", []):
        if prev.get("events") == entry["events"] and prev.get("logdir") == entry["logdir"]:
            entry["results"] += [
                dict(r, carried_over=True) for r in prev["results"] if r["tool"] not in tools and "error" not in r
            ]


def _print_table(entry: dict) -> None:
    n = entry["events"]
    by = {r["tool"]: r for r in entry["results"]}
    base = by.get("adamdiag", {}).get("seconds")
    print(f"\n{n:,} scalar events, {entry['runs']} run(s), {entry['bytes'] / 2**20:,.0f} MiB of event files")
    print(
        f"{'reader':<16}{'wall s':>9}{'events/s':>14}{'RSS before':>12}{'peak RSS':>11}{'+worker':>11}"
        f"{'frame':>11}{'vs adamdiag':>13}"
    )
    for r in entry["results"]:
        if "error" in r:
            print(f"{r['tool']:<16}  {r['error']}")
            continue
        s = r["seconds"]
        rate = "-" if r["tool"] == "raw" else f"{n / s:,.0f}"
        ratio = f"{s / base:.2f}x" if base else "-"
        workers = _fmt_bytes(r["peak_rss_workers_bytes"]) if r["peak_rss_workers_bytes"] > 0 else "-"
        note = f"  (earlier run, {r.get('measured_at', '?')})" if r.get("carried_over") else ""
        print(
            f"{r['tool']:<16}{s:>9.2f}{rate:>14}{_fmt_bytes(r.get('rss_before_read_bytes')):>12}"
            f"{_fmt_bytes(r['peak_rss_bytes']):>11}{workers:>11}{_fmt_bytes(r['frame_bytes']):>11}{ratio:>13}{note}"
        )
        if r["tool"].startswith("adamdiag") and r["rows"] != n:
            print(f"  !! {r['tool']} returned {r['rows']:,} rows, expected {n:,}")


if __name__ == "__main__":
    main()
