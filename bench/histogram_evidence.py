"""What per-tensor gradient histograms alone are worth to the verdict — a run logged as ``wandb.watch`` users log
(loss, lr and gradient histograms; no gradient-norm scalar, no optimizer checkpoint).

Takes the validation matrix's runs that logged gradient histograms (``bench/accuracy.py``'s cached runs and their
counterfactual labels, from its ``--json`` output), writes two copies of each with torch's SummaryWriter — every scalar
but the gradient norms, with and without the histograms (as moments: the bucket estimate wandb's histograms need is
measured in tests/e2e/test_wandb_watch.py) — scans both, and prints right/wrong against the labels (runs labelled
``ambiguous`` not scored) and the confidently wrong (confidence high, wrong).

    python bench/accuracy.py --seed-groups 0 10 20 30 180 190 --cached-only --json acc.json
    python bench/histogram_evidence.py acc.json [--out bench/out/histogram_evidence] [--json result.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("histograms", "loss_only")


def write_copies(cases: list[dict[str, Any]], out: Path) -> dict[str, str]:
    """The two copies of every case with histograms; its label by name."""
    from torch.utils.tensorboard import SummaryWriter

    from adamdiag.io.events import read_run

    labels = {}
    for c in cases:
        if not c.get("hist_every"):
            continue
        ev = read_run(Path(c["run_dir"]))
        for kind in KINDS:
            w = SummaryWriter(str(out / kind / c["name"]))
            for tag, step, value in ev.scalars[["tag", "step", "value"]].itertuples(index=False):
                if "grad_norm" not in tag:
                    w.add_scalar(tag, value, int(step))
            if kind == "histograms":
                for r in ev.histograms.itertuples():
                    w.add_histogram_raw(r.tag, r.min, r.max, r.num, r.sum, r.sum_squares, [r.max], [r.num], int(r.step))
            w.close()
        labels[c["name"]] = c.get("cf_label") or c["true_cause"]
    return labels


def scan(folder: Path) -> dict[str, tuple[str, str]]:
    """(verdict, confidence) of every run under ``folder``, from the CLI as a user runs it."""
    res = subprocess.run(
        [sys.executable, "-m", "adamdiag", "scan", str(folder), "--format", "json", "--jobs", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    return {Path(r["run"]).name: (r["verdict"], r.get("confidence")) for r in json.loads(res.stdout)["runs"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("accuracy_json", type=Path, help="bench/accuracy.py --json output")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "histogram_evidence")
    p.add_argument("--json", type=Path, help="write the comparison here")
    a = p.parse_args(argv)
    cases = json.loads(a.accuracy_json.read_text())["cases"]
    shutil.rmtree(a.out, ignore_errors=True)
    labels = write_copies(cases, a.out)
    got = {kind: scan(a.out / kind) for kind in KINDS}
    tally: dict[str, Counter] = {kind: Counter() for kind in KINDS}
    rows = []
    for name, label in sorted(labels.items()):
        row = {"run": name, "label": label}
        for kind in KINDS:
            verdict, conf = got[kind].get(name, ("missing", None))
            row[kind] = [verdict, conf]
            if label == "ambiguous":
                tally[kind]["not scored"] += 1
                continue
            tally[kind]["right" if verdict == label else "wrong"] += 1
            if verdict != label and conf == "high":
                tally[kind]["confidently wrong"] += 1
        rows.append(row)
    scored = sum(1 for label in labels.values() if label != "ambiguous")
    print(f"{len(labels)} runs with gradient histograms ({scored} scored; no grad-norm scalar, no checkpoint)")
    print(f"{'evidence':12s} {'right':>8s} {'wrong':>6s} {'confidently wrong':>18s}")
    for kind in KINDS:
        t = tally[kind]
        print(f"{kind:12s} {t['right']:>4d}/{scored:<3d} {t['wrong']:>6d} {t['confidently wrong']:>18d}")
    for row in rows:
        if row["histograms"][0] != row["label"] and row["label"] != "ambiguous":
            print(f"  wrong with histograms: {row['run']} label {row['label']}: {row['histograms']}")
    if a.json:
        a.json.write_text(json.dumps({"tally": {k: dict(v) for k, v in tally.items()}, "runs": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
