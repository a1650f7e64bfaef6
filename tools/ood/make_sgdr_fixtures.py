"""Writes runs of the out-of-family probe (bench/out_of_family.py) into tests/fixtures/, trimmed to the event file
and a few checkpoints: tests/fixtures/sgdr/, two warm-restart (SGDR, torch's CosineAnnealingWarmRestarts) runs
with the checkpoints up to the restart (the collapse is read from them), and tests/fixtures/calibration/:

- ``b95_noise_floor/``: ``mlp_adamw_b95_healthy_s3`` — AdamW β2 0.95, full batch, a converged fit whose loss swings
  2e-5..1e-3 from step to step; the labeller finds no blowup.
- ``gru_warmup_climb/``: ``gru_lm_hot_warmup_s4`` — a GRU LM warmed up to lr 3, loss logged every 10 steps: it
  climbs 2.7 → ~20 (8-9.8x held, under a blowup's 10x) and ends 5x above its start; the labeller saw the live
  loss blow up and lr/3 avoid it.
- ``bow_new_vocab/``: ``bow_new_vocab_s1`` — a bag-of-words classifier trained on the 100 most frequent of 400
  tokens; at 3000 the stream draws from all 400 (rows that never had a gradient, labels that depend on them):
  the loss jumps 30x at that step, and in the labeller's replays from 2800 every eps and lr change blows up
  there too.
- ``fullbatch_spike_cycles/``: ``mlp_fullbatch_const_s2`` — an MLP regression, full batch, constant lr 3e-3, loss
  logged every 10 steps: it fits to ~1e-4, then spikes and recovers (the log shows 1070, 1360, 1460) until the
  one at 1570 does not; the labeller saw the every-step loss pass 10x at 1359, and from its checkpoint at 1250
  eps 1e-3 avoids it while lr/3 and lr/10 only postpone it (at risk).

- ``mlp_restart/``: ``mlp_sgdr_b99_s2`` — an MLP regression, full batch, Adam β2 0.99, lr 1e-2, cycle 1000:
  v collapses as the cycle's lr decays to ~0; the restart at 1001 blows the loss up at 1004. The probe's
  labeller (replays from step 1000) found eps 1e-3 blowing up too, eps 1e-2 avoiding it (``truth.json``).
- ``matfac_recovered/``: ``matfac_sgdr_b99_s2`` — matrix factorisation, lr 0.1, cycle 800, no lr scalar:
  the restart's spike is between two logged points (every 10 steps) and the logged loss recovers; the
  live loss blew up at 805 and eps 1e-3 avoided it in the labeller's replay.

Each keeps the design (``lab_spec.json``: ``--entry tools/ood/oodlab.py:adamdiag_replay`` replays it) and its own
``truth.json`` (the live blowup step and the labeller's outcomes), so the tests compare
with what these runs did, not with a retrained run (training differs by CPU).

    .venv/bin/python tools/ood/make_sgdr_fixtures.py [calibration/b95_noise_floor ...]   # all: ~20 s
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT / "tools" / "ood"))
sys.path.insert(0, str(ROOT / "bench"))

# fixture folder (under tests/fixtures) -> (probe design, checkpoint steps kept)
KEEP = {
    "sgdr/mlp_restart": ("mlp_sgdr_b99_s2", (250, 500, 750, 1000)),
    "sgdr/matfac_recovered": ("matfac_sgdr_b99_s2", tuple(range(100, 900, 100))),
    # verdict calibration (tests/e2e/test_probe_calibration.py): a healthy converged fit whose loss swings a
    # decade from step to step, and a warm-up to an lr too high whose sparse log climbs under 10x
    "calibration/b95_noise_floor": ("mlp_adamw_b95_healthy_s3", (1500, 1750)),
    "calibration/gru_warmup_climb": ("gru_lm_hot_warmup_s4", (100, 200)),
    # a blowup no eps or lr moves (session 15's held-out bag-of-words family): a vocabulary shift at 3000
    "calibration/bow_new_vocab": ("bow_new_vocab_s1", (2600, 2800)),
    # spike cycles at a constant lr (verdict rule spike_cycles): a full-batch fit sliding into repeated spikes
    "calibration/fullbatch_spike_cycles": ("mlp_fullbatch_const_s2", (1250, 1500)),
}


def main() -> None:
    import oodlab
    from out_of_family import designs

    specs = {s.name: s for s in designs((1, 2, 3, 4))}
    only = sys.argv[1:]  # fixture folders to (re)write; all without arguments
    for name, (design, steps) in KEEP.items():
        if only and name not in only:
            continue
        spec = specs[design]
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / design
            truth = oodlab.train_run(spec, run)
            label = oodlab.label_run(run)
            dest = OUT / name
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            for ev in run.glob("events.out.tfevents.*"):
                shutil.copy2(ev, dest / ev.name)
            # the design, for the replay entry (--entry tools/ood/oodlab.py:adamdiag_replay)
            shutil.copy2(run / oodlab.SPEC_FILE, dest / oodlab.SPEC_FILE)
            for t in steps:
                src = oodlab.ckpt_path(run, spec, t)
                (dest / src.relative_to(run)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / src.relative_to(run))
            record = {
                "design": design,
                "note": spec.note,
                "live_blowup_step": truth["blowup_step"],
                "label": label["label"],
                "label_start_step": label.get("start_step"),
                "variants": {k: v["outcome"] for k, v in label.get("variants", {}).items()},
            }
            (dest / "truth.json").write_text(json.dumps(record, indent=1) + "\n")
            print(f"{dest.relative_to(ROOT)}: {record}")


if __name__ == "__main__":
    main()
