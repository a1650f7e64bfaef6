"""Writes ``tests/fixtures/fairseq_layout/``: the log tree and checkpoints of ``fairseq-train`` (session 14).

fairseq's TensorboardProgressBarWrapper opens one SummaryWriter per tag — ``train_inner/`` every
``--log-interval`` updates, ``train/`` and ``valid/`` once an epoch — logs the interval means (the loss in base 2,
``gnorm`` the norm *before* clipping, ``clip`` the percent of clipped updates) and opens each writer with the
command line as a text summary; ``--save-interval-updates`` writes ``checkpoint_<epoch>_<updates>.pt`` with
``last_optimizer_state``. fairseq itself does not install on this Python, so ``fwprobe.run_fairseq_layout``
mirrors that code with torch's SummaryWriter (which fairseq uses) on fwprobe's task:

- ``vcollapse_clip/``: the ``vcollapse`` design (Adam β2 0.99, cosine with a hard restart at update 1001, full
  batch) with ``--clip-norm 0.5``; checkpoints at 500 and 1000 (the replay start). ``truth.json``: the clip,
  and fwprobe's counterfactual from checkpoint 1000 (300 updates, clipped like the run) — each variant's largest
  loss over its first.
- ``healthy/``: the ``healthy`` design (constant lr 1e-3), its checkpoint at 500.

    .venv/bin/python tools/fwprobe/make_fairseq_fixture.py     # ~10 s
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fwprobe  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "fairseq_layout"
# fixture -> (design, variant, checkpoints kept)
KEEP = {
    "vcollapse_clip": ("vcollapse", "clip", ("checkpoint_5_500.pt", "checkpoint_10_1000.pt")),
    "healthy": ("healthy", None, ("checkpoint_5_500.pt",)),
}


def main() -> None:
    for name, (design, variant, keep) in KEEP.items():
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / name
            run.mkdir()
            fwprobe.run_fairseq_layout(design, variant, run)
            dest = OUT / name
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(run / "tb", dest / "tb")
            (dest / "checkpoints").mkdir()
            for f in keep:
                shutil.copy2(run / "checkpoints" / f, dest / "checkpoints" / f)
            record: dict = {"design": design, "clip_norm": 0.5 if variant == "clip" else None}
            if variant == "clip":
                cf = fwprobe.counterfactual(run / "checkpoints" / keep[-1], design, 300, 0.5)
                record["counterfactual"] = {k: v for k, v in cf.items() if k not in ("checkpoint",)}
            (dest / "truth.json").write_text(json.dumps(record, indent=1) + "\n")
            print(f"{dest}: {record}")


if __name__ == "__main__":
    main()
