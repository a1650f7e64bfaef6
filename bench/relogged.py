"""The validation matrix re-logged the way other writers log: does ``adamdiag scan`` still read the same runs right?

The matrix (``bench/accuracy.py``) logs every step (or every 10) on a 1-based axis. Users' logs do not: Lightning
logs every 50 steps by default on its 0-based ``global_step`` (steps 49, 99, ...), HF Trainer every ``logging_steps``
(500 by default) with the loss *averaged* over the interval, a plain ``for step in range(n)`` loop is 0-based, a
summed loss is a scaled one. Each transform rewrites the event files of the cached matrix runs (no retraining: the
same runs, their truth and counterfactual labels unchanged; checkpoints hard-linked, not copied) and scores them
with ``bench/accuracy.py --cached-only``:

* ``as_logged``   the runs as they are (the baseline)
* ``zero_based``  every step one lower (a 0-based loop)
* ``loss_x1000``  loss tags times 1000 (a summed loss)
* ``lightning_everyN``  the points at 0-based steps N-1, 2N-1, ... (Lightning's ``log_every_n_steps``), point values
* ``hf_everyN``   the points at steps N, 2N, ..., loss tags the mean over the N steps up to each (HF Trainer)

Columns: labelled blowups still visible in the re-logged loss (≥ 10x within 100 steps, accuracy.py's test; a NaN
only when a NaN is logged) and the right verdicts among them (counterfactual label; bad_batch and nonfinite by
their injection), ``inconclusive`` and ``healthy`` verdicts among them (``healthy`` on a visible blowup and any
wrong ``high`` are the confidently wrong), false alarms on healthy runs (a cause named; ``inconclusive`` counted
apart) and runs whose verdict or confidence differs from ``as_logged``.

    python bench/relogged.py                                 # seed groups 0 200, every transform
    python bench/relogged.py --seed-groups 10 210 --json bench/results/relogged_10_210.json
    python bench/relogged.py --transforms zero_based hf_every50

Needs the matrix runs cached under bench/out/accuracy (``python bench/accuracy.py --seed-groups ...``). Not part
of the test suite; tests/e2e/test_sparse_logs.py and test_zero_based_logs.py check the mechanisms on real runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from accuracy import full_matrix  # noqa: E402

MATRIX = ROOT / "bench" / "out" / "accuracy"
OUT = ROOT / "bench" / "out" / "relogged"
TRANSFORMS = [
    "as_logged",
    "zero_based",
    "loss_x1000",
    "lightning_every20",
    "lightning_every50",
    "lightning_every100",
    "hf_every20",
    "hf_every50",
    "hf_every100",
]
SCHEMA = "adamdiag.relogged/1"


def _is_loss(tag: str) -> bool:
    return "loss" in tag.lower()


def relog_events(src: Path, dst: Path, transform: str) -> None:
    """Rewrite one event file: the transform's steps and values, every other record as it was."""
    import numpy as np
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.summary.writer.record_writer import RecordWriter
    from tensorboard.util import tensor_util

    def value(v: Any) -> float:
        return float(tensor_util.make_ndarray(v.tensor))

    def set_value(v: Any, x: float) -> None:
        v.tensor.CopyFrom(tensor_util.make_tensor_proto(np.float32(x)))

    every = int(transform.rsplit("every", 1)[1]) if "every" in transform else 0
    pending: dict[str, list[float]] = defaultdict(list)  # hf: loss values since the last logged step
    with open(dst, "wb") as fh:
        w = RecordWriter(fh)
        # EventFileLoader hands scalars over as tensors (simple_value migrated): values are read and set there
        for ev in EventFileLoader(str(src)).Load():
            if not ev.HasField("summary") or ev.step <= 0:
                w.write(ev.SerializeToString())
                continue
            scalars = [v for v in ev.summary.value if v.HasField("tensor") and v.tensor.dtype in (1, 2, 19)]
            if transform == "zero_based":
                ev.step -= 1
            elif transform == "loss_x1000":
                for v in scalars:
                    if _is_loss(v.tag):
                        set_value(v, value(v) * 1000.0)
            elif transform.startswith("lightning_every"):
                if (ev.step - 1) % every != every - 1:
                    continue
                ev.step -= 1
            elif transform.startswith("hf_every"):
                for v in scalars:
                    if _is_loss(v.tag):
                        pending[v.tag].append(value(v))
                if ev.step % every:
                    continue
                for v in scalars:
                    if _is_loss(v.tag) and pending[v.tag]:
                        set_value(v, float(np.mean(pending.pop(v.tag))))
            w.write(ev.SerializeToString())


def _link_tree(src: Path, dst: Path) -> None:
    """Hard links (the scanner never writes its inputs), a copy across file systems."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def relog_run(run: Path, dst: Path, transform: str) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for f in run.iterdir():
        if f.name.startswith("events.out.tfevents"):
            relog_events(f, dst / f.name, transform)
        elif f.is_dir():
            _link_tree(f, dst / f.name)
        else:
            shutil.copy2(f, dst / f.name)


def label_of(case: dict[str, Any]) -> str | None:
    """What a right verdict is: the counterfactual label (v_collapse / lr_too_high; None when ambiguous), else
    the injected cause (bad_batch, nonfinite), else the truth."""
    if case.get("cf_label") in ("v_collapse", "lr_too_high"):
        return str(case["cf_label"])
    if case.get("cf_label") == "ambiguous":
        return None
    return case.get("true_cause")


def _logs_a_nonfinite_loss(run_dir: Path) -> bool:
    import numpy as np

    from adamdiag.analysis.frames import series
    from adamdiag.io.events import read_run

    s = series(read_run(run_dir).scalars, "train/loss")
    return bool(len(s)) and not bool(np.isfinite(s.to_numpy(np.float64)).all())


def summarize(cases: list[dict[str, Any]], base: dict[str, dict[str, Any]] | None, out_dir: Path) -> dict[str, Any]:
    """The table row of one transform (see the module docstring)."""
    visible = []
    for c in cases:
        lab = label_of(c)
        if c.get("true_blowup_step") is None or lab is None:
            continue
        if lab == "nonfinite":
            # the lab stops a run at its first NaN: one between two logged points was never logged
            if not _logs_a_nonfinite_loss(out_dir / c["name"]):
                continue
        elif c.get("blowup_visible_in_log") is False:
            continue
        visible.append(c)
    healthy = [c for c in cases if c.get("true_cause") == "healthy"]
    right = [c for c in visible if c["verdict"] == label_of(c)]
    changed = [
        c["name"]
        for c in cases
        if base is not None
        and c["name"] in base
        and (c["verdict"], c.get("confidence")) != (base[c["name"]]["verdict"], base[c["name"]].get("confidence"))
    ]
    return {
        "runs": len(cases),
        "visible_labelled": len(visible),
        "right": len(right),
        "accuracy": round(len(right) / len(visible), 4) if visible else None,
        "inconclusive": sum(c["verdict"] == "inconclusive" for c in visible),
        "healthy_on_visible_blowup": sorted(c["name"] for c in visible if c["verdict"] == "healthy"),
        "high_and_wrong": sorted(
            c["name"] for c in visible if c.get("confidence") == "high" and c["verdict"] != label_of(c)
        ),
        "healthy_runs": len(healthy),
        "false_alarms": sorted(c["name"] for c in healthy if c["verdict"] not in ("healthy", "inconclusive")),
        "inconclusive_on_healthy": sum(c["verdict"] == "inconclusive" for c in healthy),
        "changed_vs_as_logged": changed,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed-groups", type=int, nargs="+", default=[0, 200])
    ap.add_argument("--transforms", nargs="+", default=TRANSFORMS, choices=TRANSFORMS)
    ap.add_argument("--matrix", type=Path, default=MATRIX, help="the cached matrix runs (bench/accuracy.py --out)")
    ap.add_argument("--out", type=Path, default=OUT, help="where the re-logged copies go")
    ap.add_argument("--json", type=Path, default=None, help="write the table as JSON here")
    ap.add_argument("--show", type=Path, default=None, help="print the table of a stored JSON and exit")
    ap.add_argument("--rescore", action="store_true", help="summarize the results stored under --out again")
    args = ap.parse_args()
    if args.show:
        try:
            doc = json.loads(args.show.read_text())
            print(render(doc))
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"relogged: {args.show}: not a readable {SCHEMA} table ({type(e).__name__}: {e})", file=sys.stderr)
            return 2
        return 0

    # the cases of these seed groups as the matrix itself names them (accuracy.full_matrix), those cached
    names = {c.name for c in full_matrix(tuple(args.seed_groups))}
    runs = sorted(args.matrix / n for n in names if (args.matrix / n).is_dir())
    if not runs:
        print(f"no cached runs of seed groups {args.seed_groups} under {args.matrix}", file=sys.stderr)
        return 2
    rows: dict[str, Any] = {}
    base: dict[str, dict[str, Any]] | None = None
    t0 = time.perf_counter()
    for tr in ["as_logged", *[t for t in args.transforms if t != "as_logged"]]:
        d = args.matrix if tr == "as_logged" else args.out / tr
        res = args.out / f"{tr}.accuracy.json"
        if not args.rescore:  # --rescore: the stored scan results and re-logged runs, summarized again
            if tr != "as_logged":
                for r in runs:
                    relog_run(r, d / r.name, tr)
            res.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, str(ROOT / "bench" / "accuracy.py"), "--cached-only", "--out", str(d)]
            cmd += ["--json", str(res), "--seed-groups", *map(str, args.seed_groups)]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode not in (0, 1):
                print(p.stdout[-2000:], p.stderr[-2000:], file=sys.stderr)
                return 2
            print(f"{tr}: done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        cases = [c for c in json.loads(res.read_text())["cases"] if c["name"] in names]
        rows[tr] = summarize(cases, base, d)
        if tr == "as_logged":
            base = {c["name"]: c for c in cases}

    doc = {"schema": SCHEMA, "seed_groups": args.seed_groups, "runs": len(runs), "transforms": rows}
    print(render(doc))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.json}")
    return 0


def render(doc: dict[str, Any]) -> str:
    """The table of a ``relogged/1`` document (``python bench/relogged.py --show FILE`` prints a stored one)."""

    def pct(a: int, n: int) -> str:
        return f"{a}/{n} ({100 * a / n:.0f}%)" if n else "-"

    cols = [
        "transform",
        "right (visible blowups)",
        "inconclusive",
        "healthy",
        "high & wrong",
        "false alarms",
        "changed",
    ]
    table = [cols]
    for tr, r in doc["transforms"].items():
        table.append(
            [
                tr,
                pct(r["right"], r["visible_labelled"]),
                str(r["inconclusive"]),
                str(len(r["healthy_on_visible_blowup"])),
                str(len(r["high_and_wrong"])),
                f"{len(r['false_alarms'])}/{r['healthy_runs']}",
                "-" if tr == "as_logged" else str(len(r["changed_vs_as_logged"])),
            ]
        )
    width = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = [f"seed groups {' '.join(map(str, doc['seed_groups']))}: {doc['runs']} runs"]
    for row in table:
        lines.append("  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(row, width))))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
