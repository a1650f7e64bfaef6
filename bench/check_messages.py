"""Whole-matrix message check (make validate): scan every cached run of the validation matrix and
report any finding whose message contradicts its own evidence (tests/message_checks.py).

    python bench/check_messages.py [bench/out/accuracy]
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def main() -> int:
    from message_checks import message_problems

    from adamdiag.pipeline.scan import scan_paths

    root = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "bench" / "out" / "accuracy"
    runs = sorted({p.parent for p in root.rglob("events.out.tfevents.*")})
    if not runs:
        print(f"no runs under {root}: run `make validate` (bench/accuracy.py) first")
        return 1
    bad = 0
    for run in runs:
        for r in scan_paths([run]).to_dict()["runs"]:
            for p in message_problems(r):
                bad += 1
                print(f"{r['run']}: {p}")
    print(f"{len(runs)} runs scanned, {bad} message(s) contradicting their evidence")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
