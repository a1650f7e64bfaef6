"""Writes tests/fixtures/dvclive: DVCLive folders written by dvclive itself, read by adamdiag.io.dvclive_log in
tests/io/test_dvclive_log.py (adamdiag never imports dvclive).

    python -m venv v && v/bin/pip install dvclive tensorboard          # dvclive 3.49.1 made them
    v/bin/python tools/runlab/make_dvclive_fixtures.py [--out tests/fixtures/dvclive]

- ``lr_too_high/dvclive`` — the loss, gradient-norm and lr tags of sample_logs/lr_too_high (read with TensorBoard's
  EventAccumulator) logged again with ``Live.log_metric`` at their steps (``live.step = step``), each row timed
  (``timestamp=True``), and HF-Trainer-like params (adam_epsilon, adam_beta2, max_grad_norm);
- ``nonfinite/dvclive`` — a loss that turns NaN then inf at step 30, logged with ``next_step()``;
- ``hf/`` — an HF Trainer with ``report_to=["dvclive", "tensorboard"]`` (tools/runlab/hf_toy.py: targets move at
  step 80; a log every 4 steps, an evaluation every 10): its DVCLiveCallback counts log calls as DVCLive's step.
  Needs torch and transformers in the venv too.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_TAGS = ("train/loss", "train/grad_norm", "train/lr")


def write_hf(d: Path) -> None:
    import os

    import torch
    from hf_toy import Regressor, ShiftableData, move_targets_at, training_args
    from transformers import Trainer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    d.mkdir(parents=True)
    cwd = os.getcwd()
    os.chdir(d)  # DVCLiveCallback writes ./dvclive
    try:
        data = ShiftableData()
        torch.manual_seed(0)
        args = training_args(
            str(d / "out"),
            ["dvclive", "tensorboard"],
            save_strategy="no",
            eval_strategy="steps",
            eval_steps=10,
            logging_steps=4,
        )
        Trainer(
            model=Regressor(),
            args=args,
            train_dataset=data,
            eval_dataset=ShiftableData(),
            callbacks=[move_targets_at(data, 80)],
        ).train()
    finally:
        os.chdir(cwd)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "dvclive")
    a = p.parse_args(argv)
    from dvclive import Live
    from lightning_toy import sample_rows

    out = a.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rows = sample_rows("lr_too_high", SAMPLE_TAGS)
    with Live(str(out / "lr_too_high" / "dvclive"), save_dvc_exp=False, dvcyaml=None) as live:
        live.log_params({"adam_epsilon": 1e-8, "adam_beta2": 0.999, "max_grad_norm": 0.0, "optim": "adamw_torch"})
        for step in sorted(rows):
            live.step = step
            for tag, value in rows[step].items():
                live.log_metric(tag, value, timestamp=True)
            live.make_summary()
    with Live(str(out / "nonfinite" / "dvclive"), save_dvc_exp=False, dvcyaml=None) as live:
        for s in range(1, 41):
            live.log_metric("train/loss", 1.0 / s if s < 30 else (math.nan if s < 35 else math.inf))
            live.log_metric("train/grad_norm", 0.3)
            live.next_step()
    had_dvc = [p for p in (ROOT / ".dvc", ROOT / ".dvcignore") if p.exists()]
    write_hf(out / "hf")
    # HF's DVCLiveCallback opens Live() with its defaults, which runs `dvc init` at the enclosing git repository:
    # this repository is no DVC project
    for p in (ROOT / ".dvc", ROOT / ".dvcignore"):
        if p not in had_dvc and p.exists():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
