"""Issue #6's validation matrix: adamdiag's verdicts on real runs it never saw, against live-state truth.

The fast subset of ``bench/accuracy.py`` (one real run per cause, generated fresh into tmp_path) must get the
right verdict case by case; the full matrix (``@pytest.mark.slow``, cached under bench/out/accuracy/) must meet
the acceptance targets. Also covers the pieces the matrix is built from: the CNN / transformer families
(realisable teacher targets, determinism, replay) and runlab's failure injection and its truth labels.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import accuracy
import families
import numpy as np
import pytest
import runlab
import torch
from runlab import RunConfig

REPO = Path(__file__).resolve().parents[2]

FAST = [c for c in accuracy.matrix() if c.fast]


# ----------------------------------------------------------------------------------------------------------
# the fast subset, end to end


@pytest.fixture(scope="module")
def fast_doc():
    # A private temp dir rather than tmp_path_factory: concurrent pytest sessions on a shared machine rotate
    # (delete) each other's numbered basetemp dirs, and these runs are read by several tests.
    out = Path(tempfile.mkdtemp(prefix="adamdiag-accuracy-"))
    try:
        # live-state truth only: the counterfactual labeller has its own test (test_counterfactual.py), and
        # labelling the subset's β2-0.999 runs would add ~30 s of training to the default test run
        yield accuracy.run(fast=True, out=out / "runs", jobs=2, verbose=False, counterfactual=False)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_fast_subset_covers_every_cause():
    assert {c.intended for c in FAST} == {"v_collapse", "healthy", "lr_too_high", "bad_batch", "nonfinite"}


@pytest.mark.parametrize("name", [c.name for c in FAST])
def test_fast_case_truth_is_what_the_case_is_designed_to_show(fast_doc, name):
    # The generator itself: the live optimizer state must confirm the designed failure (else the case
    # is broken, not the detector).
    (r,) = [r for r in fast_doc["cases"] if r["name"] == name]
    assert r["true_cause"] == r["intended"], r["truth_evidence"]


@pytest.mark.parametrize("name", [c.name for c in FAST])
def test_fast_case_verdict(fast_doc, name):
    (r,) = [r for r in fast_doc["cases"] if r["name"] == name]
    assert r["scan_error"] is None
    if r["true_cause"] == "lr_too_high" and r["verdict"] == "v_collapse":
        # The live-state label calls a blowup lr_too_high unless v̂ fell >= 10x; scan calls a long quiet
        # stretch before it a stale v, but only with medium/low confidence and lr_too_high as the
        # alternative. Which one is right is decided by counterfactual replays (the full matrix:
        # `make validate`; on the "hot" designs they mostly find that neither lr/3 nor lr/10 avoids it).
        assert r.get("alternative") == "lr_too_high" and r.get("confidence") != "high", r
        return
    assert r["verdict"] == r["true_cause"], {
        k: r[k] for k in ("true_blowup_step", "blowup_step", "warning_step", "error_findings", "truth_evidence")
    }
    if r["true_cause"] in ("bad_batch", "nonfinite"):
        # these have an exact step: the corrupted batch / the first non-finite loss
        assert r["blowup_step"] == r["true_blowup_step"]
    if r["true_cause"] == "v_collapse":
        assert r["lead_time"] is not None and r["lead_time"] >= accuracy.TARGET_MEDIAN_LEAD


def test_fast_scoring_is_consistent(fast_doc):
    s = fast_doc["summary"]
    assert sum(sum(row.values()) for row in s["confusion"].values()) == len(FAST)
    assert s["blown_up"]["n"] + s["healthy"]["n"] == len(FAST)
    assert s["blown_up"]["correct"] == sum(r["correct"] for r in fast_doc["cases"] if r["true_cause"] != "healthy")
    json.dumps(fast_doc, allow_nan=False, default=str)  # accuracy.json must be strict JSON
    text = accuracy.format_report(fast_doc["cases"], s)
    assert "confusion matrix" in text and all(c.name in text for c in FAST)


def test_cache_is_reused_and_keyed_by_config(fast_doc, tmp_path):
    out = Path(fast_doc["out"])
    case = next(c for c in FAST if c.intended == "lr_too_high")
    key = accuracy.case_key(case)
    assert accuracy._cached(case, out / case.name, key)
    other = accuracy.Case(name=case.name, intended=case.intended, cfg={**case.cfg, "lr": case.cfg["lr"] / 2})
    assert accuracy.case_key(other) != key
    assert not accuracy._cached(other, out / case.name, accuracy.case_key(other))


# ----------------------------------------------------------------------------------------------------------
# the full matrix (minutes; cached)


@pytest.mark.slow
def test_full_matrix_meets_issue12_targets():
    # issue #12: the verdicts are scored against the counterfactual labels (the live-state accuracy of
    # issue #6 is still printed, but the live label undercounts v collapse: see bench/README.md)
    doc = accuracy.run(fast=False, jobs=1, verbose=False)
    s = doc["summary"]
    assert len(doc["cases"]) >= 30
    assert not s["scan_errors"]
    assert not s["healthy"]["false_alarms"], s["healthy"]
    assert s["v_collapse_lead_time_per_step_logging"]["median"] >= accuracy.TARGET_MEDIAN_LEAD
    targets = s["counterfactual"]["pooled"]["targets"]
    assert all(v is not False for v in targets.values()), (targets, s["counterfactual"]["pooled"]["misdiagnosed"])


def test_matrix_spans_the_required_variety():
    cases = accuracy.matrix()
    cfgs = [c.cfg for c in cases]
    assert 30 <= len(cases) <= 80
    assert {c["family"] for c in cfgs} == {"mlp_multitask", "cnn", "transformer"}
    for fam in ("mlp_multitask", "cnn", "transformer"):
        assert len({c["size"] for c in cfgs if c["family"] == fam}) >= 2
    assert {1e-8, 1e-3} <= {c["eps"] for c in cfgs}
    assert {1, 10} <= {c["log_every"] for c in cfgs}
    assert any(c["hist_every"] for c in cfgs) and any(not c["hist_every"] for c in cfgs)
    assert any(c["ckpt_every"] for c in cfgs) and any(not c["ckpt_every"] for c in cfgs)
    assert any(c.get("restart_at") for c in cfgs)
    assert len({c["seed"] for c in cfgs}) >= 3 and len({c["lr"] for c in cfgs}) >= 3
    assert any("bad_batch_at" in c.get("inject", {}) for c in cfgs)
    assert any("nan_from" in c.get("inject", {}) for c in cfgs)


# ----------------------------------------------------------------------------------------------------------
# families


@pytest.mark.parametrize(
    "family,size", [("cnn", "tiny"), ("cnn", "small"), ("transformer", "tiny"), ("transformer", "small")]
)
def test_family_target_is_realisable_and_deterministic(family, size):
    cfg = RunConfig(family=family, size=size)
    data = runlab.build_data(cfg)
    assert torch.equal(runlab.build_data(cfg)["x"], data["x"])  # same recipe, same data
    student = runlab.build_model(cfg)
    heads = runlab.get_family(family).head_losses(student, data)
    assert all(torch.isfinite(v) and v > 1e-4 for v in heads.values())  # a random student has work to do
    # The teacher's own weights fit every head exactly: v collapse is reachable by full-batch training.
    rec = families.CNN_DATA if family == "cnn" else families.TFM_DATA
    build = families.SmallCNN if family == "cnn" else families.TinyTransformer
    dims = families._cnn_dims(cfg) if family == "cnn" else families._tfm_dims(cfg)
    teacher = families._teacher(build, dims, rec["teacher_seed"], rec["teacher_scale"]).float()
    student.load_state_dict(teacher.state_dict())
    fitted = runlab.get_family(family).head_losses(student, data)
    assert all(abs(float(v.detach())) < 1e-6 for v in fitted.values()), fitted
    # runlab seeds the init: the same seed gives the same student, another seed another one
    a, b = runlab.build_model(cfg), runlab.build_model(RunConfig(family=family, size=size, seed=1))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), runlab.build_model(cfg).parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_family_registered_for_bare_config(tmp_path):
    assert runlab._FAMILY_MODULES["cnn"] == "families" and runlab._FAMILY_MODULES["transformer"] == "families"
    cfg = RunConfig(
        name="t",
        family="transformer",
        size="tiny",
        steps=12,
        ckpt_every=6,
        batch_size=8,
        inject={"bad_batch_at": 9, "bad_batch_keys": ["y"]},
    )
    runlab.train(cfg, tmp_path / "run")
    rp = families.adamdiag_replay(str(runlab.checkpoint_path(tmp_path / "run", 6)))
    # replay rebuilds the corrupted batch exactly (injection is part of the data pipeline)
    assert torch.equal(rp["batch"](9)["y"], runlab.batch_for_step(cfg, 9)["y"])
    clean = RunConfig.from_json({**cfg.to_json(), "inject": {}})
    assert torch.allclose(rp["batch"](9)["y"], 1e3 * runlab.batch_for_step(clean, 9)["y"])
    assert torch.equal(rp["batch"](8)["y"], runlab.batch_for_step(clean, 8)["y"])
    truth = json.loads((tmp_path / "run" / "truth.json").read_text())
    assert truth["summary"]["final_step"] == 12


# ----------------------------------------------------------------------------------------------------------
# failure injection and its truth labels


def test_inject_batch_never_touches_the_data_set():
    cfg = RunConfig(family="cnn", size="tiny", inject={"bad_batch_at": 5, "bad_batch_keys": ["y"], "nan_from": 7})
    data = runlab.build_data(cfg)
    y0, x0 = data["y"].clone(), data["x"].clone()
    assert runlab.batch_for_step(cfg, 4, data) is data  # untouched steps: the data set itself
    bad = runlab.batch_for_step(cfg, 5, data)
    assert torch.allclose(bad["y"], 1e3 * y0) and torch.equal(bad["x"], x0)
    assert runlab.batch_for_step(cfg, 6, data) is data  # one step only
    for step in (7, 8, 50):
        b = runlab.batch_for_step(cfg, step, data)
        assert math.isnan(float(b["x"].reshape(-1)[0])) and int(torch.isnan(b["x"]).sum()) == 1
    assert torch.equal(data["y"], y0) and torch.equal(data["x"], x0)


def _label_ref(inject, losses, gnorm, r, blowup, cause):
    """Plain restatement of runlab.label_injection's rules, for the comparison below."""
    f = next((i + 1 for i, v in enumerate(losses) if not math.isfinite(v)), None)
    if "nan_from" in inject and f is not None and f >= inject["nan_from"] and (blowup is None or blowup >= f):
        return f, "nonfinite"
    k = inject.get("bad_batch_at")
    if k is not None:
        base = sorted(gnorm[max(0, k - 51) : k - 1])
        med = (base[len(base) // 2] + base[(len(base) - 1) // 2]) / 2
        if (
            gnorm[k - 1] >= 10 * med
            and gnorm[k - 1] >= 10 * gnorm[k]
            and r[k - 1] >= 100
            and (blowup is None or blowup >= k)
        ):
            return k, "bad_batch"
    return blowup, cause


@pytest.mark.parametrize("case", ["spike", "no_spike", "stays_high", "earlier_blowup", "nan", "nan_after_blowup"])
def test_label_injection(case):
    rng = np.random.default_rng(0)
    n = 200
    losses = np.exp(-np.arange(n) / 100) * (1 + 0.05 * rng.random(n))
    gnorm = 1.0 + 0.1 * rng.random(n)
    r = 1.0 + 0.1 * rng.random(n)
    blowup, cause, inject = None, "healthy", {"bad_batch_at": 120}
    if case in ("spike", "earlier_blowup", "stays_high"):
        gnorm[119], r[119] = 5e3, 1e6
    if case == "stays_high":
        gnorm[120] = 4e3
    if case == "earlier_blowup":
        blowup, cause = 100, "lr_too_high"
    if case.startswith("nan"):
        inject = {"nan_from": 150}
        losses[149:] = np.nan
        blowup, cause = (150, "lr_too_high") if case == "nan" else (90, "lr_too_high")
    got = runlab.label_injection(inject, losses, gnorm, r, blowup, cause, {})
    assert got[:2] == _label_ref(inject, list(losses), list(gnorm), list(r), blowup, cause)
    want = {
        "spike": (120, "bad_batch"),
        "no_spike": (None, "healthy"),
        "stays_high": (None, "healthy"),
        "earlier_blowup": (100, "lr_too_high"),
        "nan": (150, "nonfinite"),
        "nan_after_blowup": (90, "lr_too_high"),
    }
    assert got[:2] == want[case]
