"""Shared real runs of the validation tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def labelled_cf_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """One small real run, trained and labelled by the sequential counterfactual labeller once for the
    session: full batch, β2 0.99, lr 3e-3 — converges to ~1e-7 and blows up at step 462 (seed 0).
    Returns (run dir, what ``runlab.train`` returned, the block ``write_label`` stored in truth.json)."""
    import counterfactual as cf
    import runlab
    from runlab import RunConfig

    cfg = RunConfig(
        name="cf",
        family="mlp_multitask",
        size="tiny",
        data={"prob_weight": 0.0, "n_examples": 32},
        betas=(0.9, 0.99),
        lr=3e-3,
        steps=580,
        ckpt_every=100,
    )
    run = tmp_path_factory.mktemp("cf")
    truth = runlab.train(cfg, run)
    return run, truth, cf.write_label(run, key="k")
