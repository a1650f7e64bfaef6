"""Writes tests/fixtures/mlflow: MLflow tracking stores written by MLflow itself, read by adamdiag.io.mlflow_log in
tests/io/test_mlflow_log.py (adamdiag never imports mlflow).

    python -m venv v && v/bin/pip install torch==2.13.0 mlflow lightning transformers tensorboard
    v/bin/python tools/runlab/make_mlflow_fixtures.py [--out tests/fixtures/mlflow]    # mlflow 3.17.2 made them

What it writes:

- ``filestore/`` — the file store (``mlruns/``, Lightning MLFlowLogger's default; MLflow 3 needs
  MLFLOW_ALLOW_FILE_STORE=true for it): a Lightning Trainer logging through MLFlowLogger and TensorBoardLogger
  at once (targets move at global step 60: a blowup; every 5 steps), a run with NaN/inf values, a deleted run;
- ``sqlite/mlflow.db.gz`` — the SQLite store (MLflow 3's default, ``mlflow.db``; gzipped, the test unpacks it):
  an HF Trainer with ``report_to=["mlflow", "tensorboard"]`` (targets move at step 80; its TensorBoard log in
  ``sqlite/hf/runs``), the loss/grad-norm/lr tags of sample_logs/lr_too_high and vcollapse logged again with
  ``mlflow.log_metrics(row, step=step)`` (read from their event files with TensorBoard's EventAccumulator), a
  NaN/inf run, a deleted run;
- ``nostep/mlflow.db.gz`` — ``log_metric`` without ``step=`` (every point at step 0); ``--only nostep`` rewrites it.

``expected.json``: per run, what was logged (step -> {key: value}, non-finite as strings), for the small runs.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_TAGS = ("train/loss", "train/grad_norm", "train/lr")


def _json_value(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)


def _nonfinite(mlflow: Any, expected: dict[str, Any], key: str) -> None:
    with mlflow.start_run(run_name="nonfinite"):
        logged = {}
        for s in range(1, 41):
            loss = 1.0 / s if s < 30 else (math.nan if s < 35 else (math.inf if s < 38 else -math.inf))
            mlflow.log_metrics({"train/loss": loss, "train/grad_norm": 0.3}, step=s)
            logged[str(s)] = {"train/loss": _json_value(loss), "train/grad_norm": 0.3}
    expected[key] = logged
    with mlflow.start_run(run_name="deleted") as r:
        mlflow.log_metric("train/loss", 1.0, step=1)
    mlflow.delete_run(r.info.run_id)


def write_filestore(out: Path, expected: dict[str, Any]) -> None:
    import mlflow
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger
    from lightning_toy import fit_shifted

    d = out / "filestore"
    d.mkdir(parents=True)
    fit_shifted(
        [
            MLFlowLogger(experiment_name="lightning", save_dir=str(d / "mlruns"), run_name="shift60"),
            TensorBoardLogger(str(d), name="tb"),
        ],
        tag="train/loss",
        hparams={"lr": 1e-2, "eps": 1e-8},
    )
    mlflow.set_tracking_uri(f"file:{d / 'mlruns'}")
    mlflow.set_experiment("plain")
    _nonfinite(mlflow, expected, "filestore/nonfinite")


def write_sqlite(out: Path, expected: dict[str, Any]) -> None:
    import mlflow
    import torch
    from hf_toy import Regressor, ShiftableData, move_targets_at, training_args
    from lightning_toy import sample_rows
    from transformers import Trainer
    from transformers.utils import logging as hf_logging

    d = out / "sqlite"
    d.mkdir(parents=True)
    db = d / "mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{db}"
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    mlflow.set_experiment("samples")
    for name in ("lr_too_high", "vcollapse"):
        rows = sample_rows(name, SAMPLE_TAGS)
        with mlflow.start_run(run_name=name):
            for step in sorted(rows):
                mlflow.log_metrics(rows[step], step=step)
    _nonfinite(mlflow, expected, "sqlite/nonfinite")

    hf_logging.set_verbosity_error()
    os.environ["MLFLOW_EXPERIMENT_NAME"] = "hf"

    data = ShiftableData()
    torch.manual_seed(0)
    args = training_args(
        str(d / "hf"),
        ["mlflow", "tensorboard"],
        run_name="hf-shift80",
        adam_epsilon=1e-6,
        adam_beta2=0.98,
        save_strategy="no",
    )
    Trainer(model=Regressor(), args=args, train_dataset=data, callbacks=[move_targets_at(data, 80)]).train()
    mlflow.end_run()
    with open(db, "rb") as src, gzip.open(d / "mlflow.db.gz", "wb", compresslevel=9) as dst:
        shutil.copyfileobj(src, dst)
    db.unlink()


def write_nostep(out: Path, expected: dict[str, Any]) -> None:
    """``nostep/mlflow.db.gz`` — ``mlflow.log_metric(key, value)`` without ``step=`` (MLflow stores step 0 for every
    point), 200 points, the loss jumping at the 150th, several points per millisecond: read in logging order."""
    import mlflow

    d = out / "nostep"
    d.mkdir(parents=True)
    db = d / "mlflow.db"
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    mlflow.set_experiment("Default")  # not the one write_sqlite left active: it is in another database
    logged = []
    with mlflow.start_run(run_name="nostep"):
        for s in range(1, 201):
            loss = 1.0 / s + (5.0 if s >= 150 else 0.0)
            mlflow.log_metric("loss", loss)
            mlflow.log_metric("grad_norm", 0.5)
            logged.append(loss)
    with open(db, "rb") as src, gzip.open(d / "mlflow.db.gz", "wb", compresslevel=9) as dst:
        shutil.copyfileobj(src, dst)
    db.unlink()
    expected["nostep"] = logged


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "mlflow")
    p.add_argument("--only", choices=["nostep"], help="only (re)write this part, keeping the rest of --out")
    a = p.parse_args(argv)
    import mlflow

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    out = a.out.resolve()
    if a.only:
        shutil.rmtree(out / a.only, ignore_errors=True)
        expected = json.loads((out / "expected.json").read_text())
        {"nostep": write_nostep}[a.only](out, expected)
        (out / "expected.json").write_text(json.dumps(expected, indent=0, sort_keys=True) + "\n")
        return 0
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    expected: dict[str, Any] = {"mlflow_version": mlflow.__version__}
    write_filestore(out, expected)
    write_sqlite(out, expected)
    write_nostep(out, expected)
    for junk in out.rglob("mlartifacts"):
        shutil.rmtree(junk)
    (out / "expected.json").write_text(json.dumps(expected, indent=0, sort_keys=True) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
