"""The TF1 sample's replay with its framework-neutral entry, in TensorFlow itself (issue 14, items 5-6).

``sample_logs/tf1_vcollapse`` (tools/runlab/tf1_multitask.py) blows up at step 209 from v collapse;
``examples/tf1_replay_entry.py`` restores its Saver checkpoint and replays the variants in TF1 graph
mode. Skipped where TensorFlow is not installed (``pip install 'adamdiag[tf]'``); the same protocol
runs on every test run with a numpy entry (test_replay_neutral.py).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adamdiag.cli import app

pytestmark = pytest.mark.tf
REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_logs" / "tf1_vcollapse"
ENTRY = f"{REPO / 'examples' / 'tf1_replay_entry.py'}:adamdiag_replay"


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="needs TensorFlow (adamdiag[tf])")
def test_tf1_sample_replay_reproduces_the_blowup_and_shows_the_eps_fix() -> None:
    # not importorskip: the entry sets TF_ENABLE_ONEDNN_OPTS=0 before TensorFlow's first import (the run's kernels)
    before = {p.name: p.stat().st_mtime_ns for p in SAMPLE.iterdir()}
    args = ["replay", str(SAMPLE / "model.ckpt-150"), "--entry", ENTRY, "--eps", "1e-3,1e-2", "--lr", "3.3e-3"]
    res = CliRunner().invoke(app, [*args, "--format", "json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["start_step"] == 150 and d["conclusion"] == "fixed" and d["mode"] == "entry"
    # the same TF kernels, single-threaded: bit for bit on the machine that wrote the sample
    assert d["fidelity"]["reproduced"] and d["fidelity"]["max_rel_dev"] < 1e-5
    by = {v["name"]: v for v in d["variants"]}
    assert by["original"]["outcome"] == "blowup" and by["original"]["blowup_step"] == 209
    assert by["eps=0.01"]["outcome"] == "avoided"
    assert by["eps=0.001"]["outcome"] == "blowup" and by["eps=0.001"]["blowup_step"] > 209  # postponed only
    assert by["lr=0.0033"]["outcome"] in ("at_risk", "blowup")
    assert {p.name: p.stat().st_mtime_ns for p in SAMPLE.iterdir()} == before  # inputs never modified
