"""The default replay horizon runs past a warm-up still under way (a real warm-up run from the lab).

The run: the validation matrix's ``mlp_small hot99`` design (mini-batch 32, β2 0.99, a linear warm-up to lr
0.3 over 200 steps), seed 100. It blows up at step 60 from too high an lr (the counterfactual label: lr/10
avoids it, eps 1e-3 and 1e-2 do not). From the checkpoint at 50 the plain horizon ends at step 154 (the
logged blowup + 1/(1-β2) steps) while lr still rises: eps 1e-2 survived to there and read ``avoided`` — a
fix, which ``scan --verify`` took for proof on its sibling runs — yet it blows up once the warm-up has raised
lr further. The horizon now runs to the end of the rise (200) + 1/(1-β2) = 300, and eps 1e-2 is the
postponement it is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from realruns import ENTRY
from typer.testing import CliRunner

from adamdiag.cli import app

REPO = Path(__file__).resolve().parents[2]
NAME = "mlp_small_hot99_lr0.3_eps1e-08_s100_bs32"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    sys.path.insert(0, str(REPO / "bench"))
    import accuracy  # bench/accuracy.py: the matrix's designs

    (case,) = [c for c in accuracy.full_matrix((100,)) if c.name == NAME]
    runlab = accuracy._harness()
    out = tmp_path_factory.mktemp("warmup") / NAME
    truth = runlab.train(runlab.RunConfig(name=case.name, **case.cfg), out)
    assert truth["summary"]["blowup_step"] == 60  # the lab's own detector, from the live run
    return out


def test_eps_that_only_outlasts_the_plain_horizon_is_a_blowup(run: Path) -> None:
    ckpt = run / "checkpoints" / "step_000050.pt"
    res = CliRunner().invoke(
        app, ["replay", str(ckpt), "--entry", ENTRY, "--eps", "1e-2", "--format", "json", "--device", "cpu"]
    )
    d = json.loads(res.stdout)
    assert d["horizon"]["source"] == "default"
    assert "lr schedule rises until step 200" in d["horizon"]["why"], d["horizon"]
    assert d["steps"] == 200 + 100 - 50
    (eps,) = [v for v in d["variants"] if v["name"] == "eps=0.01"]
    assert eps["outcome"] == "blowup" and eps["blowup_step"] > 154, eps
    assert res.exit_code == 1, res.output  # nothing avoided it
