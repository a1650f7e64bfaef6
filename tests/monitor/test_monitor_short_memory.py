"""The live AD101 measures a stretch against v's memory *at that step*, as scan's after-the-fact rule
measures it at the blowup (collapse_span: v̂ is the plain mean of all g² so far while step < 1/(1-β2)).
Before, the live rule waited for the long-run memory: a β2 0.9999 run (memory 10^4 steps) that collapses
and blows up within 600 steps never got a live warning, though scan warned at step ~300 afterwards."""

from __future__ import annotations

import monitor_validation  # bench/monitor_validation.py (bench is on the test pythonpath)


def test_a_long_memory_run_is_warned_live_as_scan_warns_afterwards(tmp_path):
    (case,) = monitor_validation.cases(("mlp_tiny_sh9999_lr0.03_eps1e-08_s0",))
    row = monitor_validation.validate(case, tmp_path)
    warn = row["scan_without_tags"]["warning_step"]
    assert row["scan_without_tags"]["verdict"] == "v_collapse" and warn is not None
    assert row["monitor_first_global_ad101"] is not None
    assert row["monitor_first_global_ad101"] <= warn + monitor_validation.EVERY
    assert row["same_verdict"] and row["monitor_tags_used"]
