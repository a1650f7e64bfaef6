"""No message reads as its opposite, on real runs: the shipped samples, the tiny injected-failure runs
and a stale-v run (the whole validation matrix is checked by `make validate`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from message_checks import message_problems
from realruns import train_sh99, train_tiny
from typer.testing import CliRunner

from adamdiag.cli import app

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory) -> list[Path]:
    base = tmp_path_factory.mktemp("messages")
    train_sh99(base / "sh99")
    return [
        REPO / "sample_logs",
        base / "sh99",
        train_tiny(base / "lr", lr=0.5),
        train_tiny(base / "bad", bad_batch_at=250),
        train_tiny(base / "nan", nan_at=300),
    ]


def test_messages_agree_with_their_evidence(run_dirs):
    res = CliRunner().invoke(app, ["scan", *map(str, run_dirs), "--format", "json"])
    assert res.exit_code == 0, res.output
    runs = json.loads(res.stdout)["runs"]
    assert len(runs) >= 6
    problems = [f"{r['run']}: {p}" for r in runs for p in message_problems(r)]
    assert not problems, "\n".join(problems)


def test_the_check_catches_a_contradiction():
    bad = {
        "verdict": "lr_too_high",
        "findings": [
            {
                "id": "AD201",
                "severity": "error",
                "message": "diverged while g²/v̂ stayed O(1)",
                "evidence": {"median_r_before": 6.9e-5},
            }
        ],
        "recommendation": {"message": "eps will not help: v is healthy"},
    }
    assert len(message_problems(bad)) == 1
