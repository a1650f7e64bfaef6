"""Benchmark: the cost of ``adamdiag scan`` on a long run against only reading its events (issue 12 item 7).

    python bench/scan_cost.py               # 10^6 steps x 10 tags (10^7 scalar events), 5 rounds
    python bench/scan_cost.py --rounds 9    # more rounds
    python bench/scan_cost.py --steps 1e5   # a smaller run (own cache entry)

The run is written once and cached under bench/out/logs/scan_cost_<steps>/run/: one event file,
every record a real ``tensorboard.compat.proto`` ``Event`` (``simple_value`` summary, one tag per
event as torch's SummaryWriter writes them) framed by adamdiag's TFRecord framing (masked CRC32C,
the format every writer uses). One Event object per tag is reused and only its step, wall time and
value are set before serializing: ~5 us per event instead of SummaryWriter's ~100-250 us, so the
10^7 events take ~1 min to write instead of ~30 min. Tags: ``train/loss`` (falls from ~2 to ~0.05
with multiplicative noise, then blows up at 95% of the run: x100 within 50 steps and stays up),
``train/grad_norm`` (jumps with the blowup), ``train/lr`` and seven ``train/metric_i`` random walks.

Timed, as whole fresh processes, alternating A B A B ... for ``--rounds`` rounds after one untimed
warm-up of each (page cache, .pyc):

* ``scan`` -- ``adamdiag scan RUN --format json`` (stdout to /dev/null);
* ``read`` -- ``python -c "from adamdiag.io.events import read_run; read_run(Path(RUN))"``.

Prints median/min/max wall seconds of each and of the per-round ratio scan/read (and the same for
CPU seconds, user+sys of the child, steadier on a shared box), and writes bench/results/scan_cost.json. Target (issue 12 item 7): median ratio <= 2. Not a test: timings
depend on the machine; on a shared box read the ratio, not the absolute seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
RESULTS = HERE / "results"
TAGS = ["train/loss", "train/grad_norm", "train/lr"] + [f"train/metric_{i}" for i in range(7)]
TARGET = 2.0


def _curves(n_steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """float32 values per tag (float32: what ``simple_value`` stores)."""
    rng = np.random.default_rng(seed)
    s = np.arange(n_steps, dtype=np.float64)
    blow = int(0.95 * n_steps)
    loss = (2.0 * np.exp(-s / (0.1 * n_steps)) + 0.05) * np.exp(rng.normal(0.0, 0.05, n_steps))
    # The blowup: x100 over 50 steps from the level at `blow`, then it stays up (noisy).
    ramp = np.clip((s - blow) / 50.0, 0.0, 1.0)
    loss = loss * np.exp(ramp * np.log(100.0))
    gn = (1.0 + 0.5 * np.exp(-s / (0.2 * n_steps))) * np.exp(rng.normal(0.0, 0.1, n_steps))
    gn = gn * np.where(s >= blow, 50.0, 1.0)
    lr = np.full(n_steps, 1e-3)
    out = {"train/loss": loss, "train/grad_norm": gn, "train/lr": lr}
    for i in range(7):
        out[f"train/metric_{i}"] = np.cumsum(rng.normal(0.0, 0.01, n_steps)) + i
    return {k: v.astype(np.float32) for k, v in out.items()}


def write_run(run_dir: Path, n_steps: int) -> None:
    """One event file, 10 events per step (one per tag), written to a temp dir and renamed."""
    from tensorboard.compat.proto import event_pb2, summary_pb2

    from adamdiag.io.tfrecord import frame

    tmp = run_dir.with_name(run_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    curves = _curves(n_steps)
    cols = [curves[t].tolist() for t in TAGS]
    evs = [
        event_pb2.Event(summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=t, simple_value=0.0)]))
        for t in TAGS
    ]
    vals = [e.summary.value[0] for e in evs]
    t0 = 1.7e9
    with open(tmp / f"events.out.tfevents.{int(t0)}.bench.1.0", "wb") as fh:
        fh.write(frame(event_pb2.Event(wall_time=t0, file_version="brain.Event:2").SerializeToString()))
        buf: list[bytes] = []
        for step in range(n_steps):
            wt = t0 + step * 0.01
            for j in range(len(TAGS)):
                ev = evs[j]
                ev.step = step
                ev.wall_time = wt
                vals[j].simple_value = cols[j][step]
                buf.append(frame(ev.SerializeToString()))
            if len(buf) >= 100_000:
                fh.write(b"".join(buf))
                buf.clear()
        fh.write(b"".join(buf))
    tmp.rename(run_dir)


def run_for(n_steps: int) -> Path:
    run = OUT / "logs" / f"scan_cost_{n_steps}" / "run"
    if not run.exists():
        run.parent.mkdir(parents=True, exist_ok=True)
        t = time.time()
        print(f"writing {n_steps:,} steps x {len(TAGS)} tags -> {run} (once; cached) ...", file=sys.stderr, flush=True)
        write_run(run, n_steps)
        print(f"  done in {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    return run


def commands(run: Path) -> dict[str, list[str]]:
    exe = Path(sys.executable)
    cli = exe.parent / "adamdiag"
    scan = [str(cli), "scan", str(run), "--format", "json"] if cli.exists() else None
    if scan is None:
        scan = [str(exe), "-m", "adamdiag", "scan", str(run), "--format", "json"]
    read = [
        str(exe),
        "-c",
        f"from pathlib import Path; from adamdiag.io.events import read_run; read_run(Path({str(run)!r}))",
    ]
    return {"scan": scan, "read": read}


def time_once(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+sys) of one fresh process. CPU comes from the kernel's
    accounting of the reaped child: on a box shared with other jobs it moves far less than wall."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    dt = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    # 0 or 1 is a diagnosis (scan exits 0, check 1 on findings); 2 means the run could not be read
    if p.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-500:]}")
    return dt, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=float, default=1e6, help="logged steps (10 tags each)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (scan, read) after one warm-up")
    ap.add_argument("--out", type=Path, default=RESULTS / "scan_cost.json")
    args = ap.parse_args()
    n_steps = int(args.steps)
    run = run_for(n_steps)
    cmds = commands(run)
    for c in cmds.values():  # warm-up: page cache, .pyc files
        time_once(c)
    times: dict[str, list[float]] = {"scan": [], "read": []}
    cpu: dict[str, list[float]] = {"scan": [], "read": []}
    for r in range(args.rounds):
        for name in ("scan", "read") if r % 2 == 0 else ("read", "scan"):
            wall, c = time_once(cmds[name])
            times[name].append(wall)
            cpu[name].append(c)
        print(f"round {r + 1}: scan {times['scan'][-1]:.2f} s, read {times['read'][-1]:.2f} s (wall)", file=sys.stderr)
    ratios = [a / b for a, b in zip(times["scan"], times["read"])]
    cpu_ratios = [a / b for a, b in zip(cpu["scan"], cpu["read"])]

    def stats(xs: list[float]) -> dict[str, float]:
        return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}

    rows = {
        "scan": stats(times["scan"]),
        "read": stats(times["read"]),
        "ratio": stats(ratios),
        "scan_cpu": stats(cpu["scan"]),
        "read_cpu": stats(cpu["read"]),
        "ratio_cpu": stats(cpu_ratios),
    }
    nbytes = sum(f.stat().st_size for f in run.iterdir())
    print(f"\n{n_steps:,} steps x {len(TAGS)} tags = {n_steps * len(TAGS):,} events, {nbytes / 2**20:,.0f} MiB")
    print(f"{'':<22}{'median':>9}{'min':>9}{'max':>9}")
    labels = (
        ("scan", "scan --format json s"),
        ("read", "read_run only s"),
        ("ratio", "ratio scan/read"),
        ("scan_cpu", "scan CPU s"),
        ("read_cpu", "read CPU s"),
        ("ratio_cpu", "ratio CPU scan/read"),
    )
    for name, label in labels:
        r = rows[name]
        print(f"{label:<22}{r['median']:>9.2f}{r['min']:>9.2f}{r['max']:>9.2f}")
    ok = rows["ratio"]["median"] <= TARGET
    print(f"target: median wall ratio <= {TARGET:g}: {'met' if ok else 'NOT met'}")
    res = {
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "steps": n_steps,
        "tags": TAGS,
        "events": n_steps * len(TAGS),
        "bytes": nbytes,
        "rounds": args.rounds,
        "commands": {k: " ".join(v) for k, v in cmds.items()},
        "seconds": times,
        "cpu_seconds": cpu,
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "summary": rows,
        "target_ratio": TARGET,
        "target_met": ok,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
