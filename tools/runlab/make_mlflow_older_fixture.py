"""Writes one run into an MLflow store as an older MLflow writes it: tests/fixtures/mlflow/older/<version>/ holds
the file store (mlruns/) and the SQLite store (mlflow.db, gzipped) that MLflow 2.22.0 and 2.9.2 wrote with it —
held-out writers for tests/io/test_mlflow_log.py (developed on 3.17.2). 300 rows at step 10 x row, the loss jumping
at row 200 and NaN at row 250, HF-Trainer-like params.

    python -m venv v && v/bin/pip install "mlflow-skinny==2.9.2" "sqlalchemy<2.1" alembic
    cd tests/fixtures/mlflow/older/2.9.2 && ../../../../../v/bin/python \
        ../../../../../tools/runlab/make_mlflow_older_fixture.py file:$PWD/mlruns
    ... make_mlflow_older_fixture.py sqlite:///$PWD/mlflow.db && gzip -9 mlflow.db
"""

import sys

import mlflow

uri = sys.argv[1]
mlflow.set_tracking_uri(uri)
mlflow.set_experiment("old")
with mlflow.start_run(run_name="old-run"):
    mlflow.log_params({"adam_epsilon": 1e-6, "adam_beta2": 0.95, "max_grad_norm": 1.0, "optim": "adamw_torch"})
    for s in range(300):
        loss = 1.0 / (s + 1) if s < 200 else 5.0 + s * 0.1
        if s == 250:
            loss = float("nan")
        mlflow.log_metrics({"train/loss": loss, "train/grad_norm": 0.5}, step=10 * s)
