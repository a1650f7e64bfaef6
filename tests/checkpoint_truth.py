"""Checkpoint statistics against what the optimizer's own library recorded for the live state (the truth.json
of a fixture written by tools/runlab/make_bnb_fixtures.py or make_torchao_fixtures.py)."""

from __future__ import annotations

from typing import Any

import pytest


def assert_stats_match_library(tensors: list[Any], truth: dict[str, dict[str, Any]]) -> None:
    """Every tensor's hyperparameters exactly, its √v̂ quantiles to 1e-7 and mean |m| / mean v to 1e-6 of the truth;
    the same tensors on both sides."""
    assert {t.name for t in tensors} == set(truth)
    for t in tensors:
        ref = truth[t.name]
        assert (t.step, t.lr, t.beta2, t.eps, t.weight_decay) == (
            ref["step"],
            ref["lr"],
            ref["beta2"],
            ref["eps"],
            ref["weight_decay"],
        ), t.name
        for k, x in ref["sqrt_vhat_q"].items():
            assert t.sqrt_vhat_q[k] == pytest.approx(x, rel=1e-7), (t.name, k)
        assert t.m_abs_mean == pytest.approx(ref["m_abs_mean"], rel=1e-6)
        assert t.v_mean == pytest.approx(ref["v_mean"], rel=1e-6)
