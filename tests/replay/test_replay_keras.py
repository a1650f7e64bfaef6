"""The blown-up Keras 3 run's replay with its framework-neutral entry (issue 14): ``adamdiag replay``
of ``tests/fixtures/keras_blowup/ckpt/epochNN.keras`` through ``examples/keras_replay_entry.py``.

The replay test itself needs TensorFlow (marked ``tf``; skipped without it: ``pip install
'adamdiag[tf]'``). What adamdiag does before the entry runs — the ``.keras`` file read by adamdiag's
own reader, the entry imported (it imports TensorFlow only inside ``run``), the Keras running-mean log
turned into per-batch losses or refused when logged every N batches — is tested on every run.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adamdiag.cli import app

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "tests" / "fixtures" / "keras_blowup"
TRUTH = json.loads((RUN / "truth.json").read_text())
ENTRY = f"{REPO / 'examples' / 'keras_replay_entry.py'}:adamdiag_replay"


@pytest.mark.tf
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="needs TensorFlow (adamdiag[tf])")
def test_keras_replay_reproduces_the_blowup_and_finds_the_fix() -> None:
    # not importorskip: the run's lab sets TF_ENABLE_ONEDNN_OPTS=0 before TensorFlow's first import
    before = {p.name: p.stat().st_mtime_ns for p in (RUN / "ckpt").iterdir()}
    args = ["replay", str(RUN / "ckpt" / "epoch02.keras"), "--logdir", str(RUN / "logs_f1"), "--entry", ENTRY]
    res = CliRunner().invoke(app, [*args, "--eps", "1e-2", "--lr", "2e-3", "--steps", "300", "--format", "json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["start_step"] == 200 and d["mode"] == "entry" and d["conclusion"] == "fixed"
    # train_on_batch is fit's own train step: float32 rounding of Keras' running mean only
    assert d["fidelity"]["reproduced"] and d["fidelity"]["max_rel_dev"] < 1e-4
    by = {v["name"]: v for v in d["variants"]}
    assert by["original"]["outcome"] == "blowup" and by["original"]["blowup_step"] == TRUTH["blowup_step"]
    assert by["lr=0.002"]["outcome"] == "avoided"
    assert by["eps=0.01"]["outcome"] == "blowup"  # the drift is lr-sized steps on noise: eps alone is not enough
    assert {p.name: p.stat().st_mtime_ns for p in (RUN / "ckpt").iterdir()} == before  # inputs never modified


def test_keras_log_every_10_batches_cannot_be_replayed_against() -> None:
    """update_freq=10: Keras logged 10-batch running means, whose per-batch losses are gone; the replay
    stops before running anything (the entry is imported, TensorFlow is not) with what to log instead."""
    args = ["replay", str(RUN / "ckpt" / "epoch02.keras"), "--logdir", str(RUN / "logs_f10"), "--entry", ENTRY]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "every 10 batches" in res.stderr and "update_freq=1" in res.stderr and "Traceback" not in res.output


@pytest.mark.tf
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="needs TensorFlow (adamdiag[tf])")
def test_verify_falls_back_to_the_earlier_checkpoint_when_nothing_avoids_it_from_the_last() -> None:
    """From epoch04 (step 400, the last checkpoint before the blowup at 471) every tried change still blows
    up — the drift is under way. `scan --verify` replays once more from epoch02 (step 200), where changes
    do avoid it, and says so."""
    args = ["scan", str(RUN / "logs_f1"), "--checkpoints", str(RUN / "ckpt"), "--verify", "--entry", ENTRY]
    res = CliRunner().invoke(app, [*args, "--format", "json"])
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["runs"]
    ver = r["verification"]
    assert ver["start_step"] == 200 and ver["fidelity"]["reproduced"]
    assert any(v["outcome"] == "avoided" for v in ver["variants"])
    assert any("already under way" in f["message"] and f["id"] == "AD701" for f in r["findings"])
    assert "epoch02.keras" in r["recommendation"]["verify"]  # the printed command is the one that shows it
