"""Benchmark: reading frameworks' own logs (wandb run files, MLflow stores, mmengine's scalars.json, Detectron2's
metrics.json, torchtune's DiskLogger) with the fast
path and its reference, side by side on the same files, and the ratio to the TensorBoard reader on the same values.

    python bench/read_framework_logs.py [--repeat 7] [--out bench/out/read_framework_logs.json]

Inputs are the committed fixtures, written by wandb 0.31.0 and MLflow 3.17.2 themselves (tests/fixtures/wandb,
tests/fixtures/mlflow): sample_logs/vcollapse logged again through ``wandb.log`` (2000 rows of 3 metrics) and
through ``mlflow.log_metrics`` (the same 6000 values, in the SQLite store), beside sample_logs/vcollapse's own
event file read for the same rows; mmengine's fixture run (tests/fixtures/mmengine: 121 lines) from its scalars.json
and from its TensorBoard backend's event file; Detectron2's (tests/fixtures/detectron2/diverge: 15 lines of 7 values)
from its metrics.json and its TensorboardXWriter's event file; torchtune's DiskLogger file (tests/fixtures/torchtune,
60 lines of 4 values); wandb.watch's gradient histograms (tests/fixtures/wandb/watch/plain: 96 histograms, per
histogram). Each figure is the median of ``--repeat`` reads in this process (files cached
by an untimed first read); per row = per (step, metric) value. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(fn: Callable[[], int], repeat: int) -> tuple[float, int]:
    """(median seconds, rows) of ``fn`` (which returns the rows it read)."""
    rows = fn()  # untimed: page cache, imports, lazily built protobuf classes
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "read_framework_logs.json")
    a = p.parse_args(argv)

    from adamdiag.io.detectron2_log import read_metrics_json
    from adamdiag.io.events import read_file
    from adamdiag.io.mlflow_log import read_sqlite_run, sqlite_runs
    from adamdiag.io.mmengine_log import read_scalars_json
    from adamdiag.io.torchtune_log import read_disk_log
    from adamdiag.io.wandb_log import read_wandb

    tmp = Path(tempfile.mkdtemp(prefix="adamdiag-bench-"))
    try:
        (gz,) = (ROOT / "tests" / "fixtures" / "wandb" / "samples" / "vcollapse").rglob("*.wandb.gz")
        wb = tmp / "run-bench.wandb"
        with gzip.open(gz, "rb") as f_in, open(wb, "wb") as f_out:
            shutil.copyfileobj(f_in, f_out)
        db = tmp / "mlflow.db"
        with gzip.open(ROOT / "tests" / "fixtures" / "mlflow" / "sqlite" / "mlflow.db.gz", "rb") as f_in:
            db.write_bytes(f_in.read())
        (ml_run,) = [r for r in sqlite_runs(db) if r.name.startswith("vcollapse-")]
        (tb,) = (ROOT / "sample_logs" / "vcollapse").glob("events.out.tfevents.*")
        (mm,) = (ROOT / "tests" / "fixtures" / "mmengine").rglob("scalars.json")
        (mm_tb,) = mm.parent.glob("events.out.tfevents.*")

        d2 = ROOT / "tests" / "fixtures" / "detectron2" / "diverge"
        (d2_tb,) = d2.glob("events.out.tfevents.*")
        tune = sorted((ROOT / "tests" / "fixtures" / "torchtune" / "output_dir" / "logs").glob("log_*.txt"))[0]
        (gz,) = (ROOT / "tests" / "fixtures" / "wandb" / "watch" / "plain").rglob("*.wandb.gz")
        watch = tmp / "run-watch.wandb"
        with gzip.open(gz, "rb") as f_in, open(watch, "wb") as f_out:
            shutil.copyfileobj(f_in, f_out)

        def n(d: object) -> int:
            return sum(len(x) for x in d.s_step)  # type: ignore[attr-defined]

        cases: list[tuple[str, Callable[[], int]]] = [
            ("wandb run file, protobuf runtime (fast)", lambda: n(read_wandb(wb))),
            ("wandb run file, wire-format walk (reference)", lambda: n(read_wandb(wb, fast=False))),
            ("MLflow SQLite run (one query)", lambda: n(read_sqlite_run(ml_run))),
            ("TensorBoard event file, all 7 tags (fast)", lambda: n(read_file(tb))),
            ("mmengine scalars.json (fixture, 7 values/line)", lambda: n(read_scalars_json(mm))),
            ("the same run's mmengine TensorBoard backend", lambda: n(read_file(mm_tb))),
            ("Detectron2 metrics.json (7 values/line)", lambda: n(read_metrics_json(d2 / "metrics.json"))),
            ("the same run's Detectron2 TensorboardXWriter", lambda: n(read_file(d2_tb))),
            ("torchtune DiskLogger file (4 values/line)", lambda: n(read_disk_log(tune))),
            ("wandb.watch file, per histogram (+2400 values)", lambda: len(read_wandb(watch).h_rows)),
        ]
        results = []
        for name, fn in cases:
            sec, rows = timed(fn, a.repeat)
            results.append({"case": name, "seconds": sec, "rows": rows, "us_per_row": 1e6 * sec / max(rows, 1)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = results[0]["us_per_row"]
    print(f"{'case':48} {'rows':>7} {'median ms':>10} {'us/row':>8} {'x fast wandb':>13}")
    for r in results:
        print(
            f"{r['case']:48} {r['rows']:>7} {1e3 * r['seconds']:>10.1f} {r['us_per_row']:>8.2f} "
            f"{r['us_per_row'] / base:>13.2f}"
        )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"repeat": a.repeat, "results": results}, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
