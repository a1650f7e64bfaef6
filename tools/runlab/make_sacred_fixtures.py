"""Writes tests/fixtures/sacred: Sacred FileStorageObserver runs (``<basedir>/<run id>/metrics.json``, ``run.json``,
``config.json``, ``cout.txt``) written by Sacred itself, as PyMARL-style research code logs with it —
``_run.log_scalar("loss", l, t)`` and ``_run.log_scalar("grad_norm", g, t)`` at the optimizer step t (every step),
and a ``log_scalar`` without a step (Sacred counts that metric's calls from 0).

    pip install --target /tmp/sacsite sacred && pip install --target /tmp/sacsite2 --no-deps 'setuptools<70'
    PYTHONPATH=/tmp/sacsite:/tmp/sacsite2 python tools/runlab/make_sacred_fixtures.py

(sacred 0.8.7 imports pkg_resources, which setuptools ≥ 81 no longer has.)

Runs: ``runs/1``: sample_logs/vcollapse's loss, gradient norm and lr over its 2000 steps logged again through
``log_scalar`` (the test expects the verdict, blowup and warning step of the TensorBoard log); ``runs/2``: 30
steps, NaN from step 20, a metric logged without steps. Sacred flushes metrics.json on its heartbeat: the run's
end writes the whole file. Run 1's metrics.json is stored gzipped.
"""

from __future__ import annotations

import argparse
import gzip
import math
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TAGS = {"train/loss": "loss", "train/grad_norm": "grad_norm", "train/lr": "lr"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "sacred")
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from sacred import Experiment
    from sacred.observers import FileStorageObserver

    from adamdiag.io.events import read_run

    if a.out.exists():
        shutil.rmtree(a.out)
    ev = read_run(ROOT / "sample_logs" / "vcollapse")
    rows: dict[int, dict[str, float]] = {}
    for tag, step, value in ev.scalars[["tag", "step", "value"]].itertuples(index=False):
        if tag in TAGS:
            rows.setdefault(int(step), {})[TAGS[tag]] = float(value)

    ex = Experiment("vcollapse", save_git_info=False)
    ex.observers.append(FileStorageObserver(str(a.out / "runs")))

    @ex.config
    def config() -> None:
        lr = 0.01  # noqa: F841  (a Sacred config scope: its locals are the config)
        optimizer = "adam"  # noqa: F841

    @ex.main
    def train(_run: object) -> None:
        for step in sorted(rows):
            for name, value in rows[step].items():
                _run.log_scalar(name, value, step)  # type: ignore[attr-defined]

    ex.run()

    ex2 = Experiment("nonfinite", save_git_info=False)
    ex2.observers.append(FileStorageObserver(str(a.out / "runs")))

    @ex2.main
    def train2(_run: object) -> None:
        for step in range(1, 31):
            _run.log_scalar("loss", 1.0 / step if step < 20 else math.nan, step)  # type: ignore[attr-defined]
            _run.log_scalar("episode_return", float(step))  # type: ignore[attr-defined]  # no step: 0, 1, 2...

    ex2.run()
    # run 1's metrics.json is 0.5 MB of indented JSON: gzip only stores it (the test unpacks it)
    big = a.out / "runs" / "1" / "metrics.json"
    with open(big, "rb") as src, gzip.open(big.with_name(big.name + ".gz"), "wb", compresslevel=9) as dst:
        shutil.copyfileobj(src, dst)
    big.unlink()
    print("wrote", a.out, sorted(p.relative_to(a.out).as_posix() for p in a.out.rglob("*") if p.is_file()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
