"""Unit tests of the replay's pure parts: variants, entry resolution, spike/fidelity rules, results,
the distributed split, the optimizer-to-model parameter matching."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from adamdiag.errors import InputError
from adamdiag.replay.distributed import World, choose_backend, merge, shard, world_from_env
from adamdiag.replay.protocol import (
    Variant,
    find_config_entry,
    load_entry_function,
    make_variants,
    parse_values,
    variant_groups,
)
from adamdiag.replay.result import (
    FIDELITY_MAX_REL_DEV,
    BlowupJudge,
    Fidelity,
    ReplayResult,
    ScopeSeries,
    SpikeRule,
    check_fidelity,
    conclude,
    decide_outcome,
    default_horizon,
    outcome_findings,
    outcome_window,
    reference_rule,
    risk_evidence,
    summarize_variant,
)

ORIG = Variant("original", 1e-8, 0.999, 1e-3)


# --- variants -------------------------------------------------------------------------------


def test_default_variants_are_the_reports_eps_candidates():
    vs = make_variants(ORIG, None, None, None)
    assert [(v.name, v.eps, v.beta2, v.lr) for v in vs] == [
        ("original", 1e-8, 0.999, 1e-3),
        ("eps=0.001", 1e-3, 0.999, 1e-3),
        ("eps=0.01", 1e-2, 0.999, 1e-3),
        ("eps=0.1", 0.1, 0.999, 1e-3),
    ]


def test_variants_grid_repeatable_and_comma_lists_without_duplicates():
    vs = make_variants(ORIG, ["1e-3,1e-2", "1e-3"], ["0.99"], None, grid=True)
    assert [v.name for v in vs] == ["original", "eps=0.001,beta2=0.99", "eps=0.01,beta2=0.99"]
    # only --beta2: eps stays the original's, no default eps candidates
    vs = make_variants(ORIG, None, ["0.99", "0.999"], None)
    assert [v.name for v in vs] == ["original", "beta2=0.99"]  # 0.999 is the original itself
    vs = make_variants(ORIG, None, None, ["1e-4"])
    assert vs[1] == Variant("lr=0.0001", 1e-8, 0.999, 1e-4)


def test_variants_one_change_each_unless_grid():
    """--eps A --lr B tries eps=A and lr=B separately, so the table says which change helped;
    --grid gives the cross product."""
    vs = make_variants(ORIG, ["1e-3"], None, ["3.3e-4"])
    assert [(v.name, v.eps, v.beta2, v.lr) for v in vs] == [
        ("original", 1e-8, 0.999, 1e-3),
        ("eps=0.001", 1e-3, 0.999, 1e-3),
        ("lr=0.00033", 1e-8, 0.999, 3.3e-4),
    ]
    vs = make_variants(ORIG, ["1e-3"], None, ["3.3e-4"], grid=True)
    assert [(v.name, v.eps, v.lr) for v in vs] == [("original", 1e-8, 1e-3), ("eps=0.001,lr=0.00033", 1e-3, 3.3e-4)]
    vs = make_variants(ORIG, ["1e-3,1e-8"], ["0.99"], ["1e-3", "1e-4"], grid=True)
    assert len(vs) == 1 + 2 * 1 * 2 - 0  # (1e-8, 0.99, 1e-3) differs from the original in beta2: kept
    vs = make_variants(ORIG, ["1e-8", "1e-3"], None, ["1e-3"])  # values equal to the original are dropped
    assert [v.name for v in vs] == ["original", "eps=0.001"]


@pytest.mark.parametrize(
    ("what", "raw", "msg"),
    [
        ("eps", ["0"], "--eps: 0 is outside (0, inf]"),
        ("eps", ["-1e-3"], "outside"),
        ("eps", ["nan"], "outside"),
        ("eps", ["1e-3,x"], "not a number: 'x'"),
    ],
)
def test_bad_values(what, raw, msg):
    with pytest.raises(InputError, match=msg.replace("(", r"\(").replace("[", r"\[")):
        parse_values(raw, what, 0.0, math.inf)


def test_beta2_range():
    assert parse_values(["0", "0.5"], "beta2", 0.0, 1.0, lo_closed=True, hi_open=True) == [0.0, 0.5]
    with pytest.raises(InputError, match=r"--beta2: 1 is outside \[0, 1\)"):
        parse_values(["1"], "beta2", 0.0, 1.0, lo_closed=True, hi_open=True)


def test_variant_groups_scale_other_groups_lr():
    groups = [
        {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "params": [0]},
        {"lr": 1e-4, "betas": (0.8, 0.999), "eps": 1e-8, "params": [1]},
    ]
    out = variant_groups(groups, Variant("x", 1e-3, 0.99, 2e-3))
    assert [g["lr"] for g in out] == [2e-3, pytest.approx(2e-4)]
    assert [g["betas"] for g in out] == [(0.9, 0.99), (0.8, 0.99)]
    assert [g["eps"] for g in out] == [1e-3, 1e-3]
    assert groups[0]["eps"] == 1e-8  # the checkpoint's groups are not modified


# --- entry point resolution -----------------------------------------------------------------


def test_config_search_from_the_checkpoint_upward_then_cwd(tmp_path):
    run = tmp_path / "proj" / "runs" / "a" / "checkpoints"
    run.mkdir(parents=True)
    (tmp_path / "proj" / "pyproject.toml").write_text('[tool.adamdiag.replay]\nentry = "train.py:entry"\n')
    entry, cfg = find_config_entry(run, cwd=tmp_path)
    assert (entry, cfg) == ("train.py:entry", tmp_path / "proj" / "pyproject.toml")
    # a nearer adamdiag.toml wins
    (tmp_path / "proj" / "runs" / "adamdiag.toml").write_text('[replay]\nentry = "../train.py:other"\n')
    assert find_config_entry(run, cwd=tmp_path) == ("../train.py:other", tmp_path / "proj" / "runs" / "adamdiag.toml")
    # a pyproject without the section is skipped; nothing above -> the cwd's config
    other = tmp_path / "elsewhere" / "ck"
    other.mkdir(parents=True)
    (tmp_path / "elsewhere" / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "adamdiag.toml").write_text('[replay]\nentry = "mod:fn"\n')
    assert find_config_entry(other, cwd=cwd) == ("mod:fn", cwd / "adamdiag.toml")


def test_bad_config_is_an_input_error(tmp_path):
    (tmp_path / "adamdiag.toml").write_text("[replay\nentry = ")
    with pytest.raises(InputError, match="cannot read"):
        find_config_entry(tmp_path, cwd=tmp_path)
    (tmp_path / "adamdiag.toml").write_text("[replay]\nentry = 3\n")
    with pytest.raises(InputError, match="must be a string"):
        find_config_entry(tmp_path, cwd=tmp_path)


def test_entry_by_module_and_by_file(tmp_path):
    assert load_entry_function("os.path:join") is os.path.join
    (tmp_path / "helper_mod_for_entry.py").write_text("VALUE = 7\n")
    (tmp_path / "train.py").write_text(
        "import helper_mod_for_entry\ndef entry(ck):\n    return helper_mod_for_entry.VALUE\n"
    )
    fn = load_entry_function("train.py:entry", base=tmp_path)  # relative to the config's directory
    assert fn("x") == 7  # its sibling import works
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(InputError, match="importing entry point file .* failed: RuntimeError: boom"):
        load_entry_function("broken.py:f", base=tmp_path)


# --- spike rule / fidelity ------------------------------------------------------------------


def _rule(level=1.0, scale=0.05):
    return SpikeRule(level=level, scale=scale, threshold=max(math.log(2), 6 * scale), points=50)


def test_spike_rule():
    rng = np.random.default_rng(0)
    steps = np.arange(1, 201)
    noise = np.exp(rng.normal(0, 0.05, 200))
    rule = _rule()
    assert rule.first_spike(steps, noise) is None
    y = noise.copy()
    y[120:] *= 10  # sustained blowup
    assert rule.first_spike(steps, y) == 121
    y = noise.copy()
    y[50] = 30  # one unlucky batch
    assert rule.first_spike(steps, y) is None
    y = noise.copy()
    y[70] = math.nan
    assert rule.first_spike(steps, y) == 71
    assert abs(rule.factor - 2.0) < 1e-12


def test_reference_rule_from_the_log_before_the_checkpoint():
    steps = np.arange(1, 101)
    vals = np.r_[np.full(60, 0.5), np.full(40, 100.0)]
    rule, warn = reference_rule(steps, vals, 60)
    assert warn is None and rule.level == 0.5 and rule.points == 50 and rule.log
    rule, warn = reference_rule(steps, vals, 2, fallback=np.full(10, 0.25))
    assert rule.level == 0.25 and "first 10 replayed losses" in warn
    rule, _ = reference_rule(steps, -vals, 60)  # a negative loss (e.g. a log-likelihood): linear rule
    assert not rule.log and rule.first_spike(steps[60:], -vals[60:]) is None


def test_default_horizon():
    # past the logged blowup by v's memory, at least 2x the checkpoint->blowup gap
    assert default_horizon(600, 663, 2000, [0.999]) == (
        1063,
        "to the logged blowup at step 663 + 1/(1-β2) = 1000 steps",
    )
    n, why = default_horizon(0, 3000, None, [0.999])  # no 2000-step refusal any more
    assert n == 6000 and why.startswith("2x the 3000 steps")
    assert default_horizon(100, 200, 150, [0.99, 0.999])[0] == 1100  # the largest β2 of the variants
    assert default_horizon(100, None, 5000, [0.999])[0] == 4900  # no blowup logged: to the end of the log
    assert default_horizon(100, None, 100, [0.999])[0] is None


def test_fidelity_rules():
    logged_steps = np.arange(1, 41)
    logged = np.r_[np.full(30, 1.0) + np.arange(30) * 1e-2, np.full(10, 50.0)]
    exact = list(logged[10:])

    def fid(start, rep, end, replayed_blowup, logged_blowup=31):
        return check_fidelity(
            start, rep, logged_steps, logged, end, logged_blowup=logged_blowup, replayed_blowup=replayed_blowup
        )

    f = fid(10, exact, 40, 31)
    # tracked: steps 11..20, the first half of the way to the logged blowup at 31
    assert f.reproduced and f.max_rel_dev == 0 and f.compared_steps == 10 and f.tracked_until == 20
    assert f.logged_spike_step == 31 == f.replayed_spike_step and f.spike_tolerance == 3
    # after the tracked half, rounding differences may have grown (the instability amplifies them):
    # a replay that drifts away late but blows up within the tolerance reproduces the run
    drift = [x * (1 + (0.3 if t > 20 else 1e-5)) for t, x in zip(range(11, 41), exact)]
    f = fid(10, drift, 40, 34)
    assert f.reproduced and f.replayed_spike_step == 34, f.message
    assert "tolerance 3" in f.message
    f = fid(10, exact[:20] + [1.0] * 4 + [50.0] * 6, 40, 35)  # 4 steps late, beyond the tolerance
    assert not f.reproduced and f.message.startswith("the replay blows up at step 35, 4 steps after the logged")
    f = fid(10, exact[:15] + [50.0] * 15, 40, 26)  # tracks the first half, then blows up 5 steps early
    assert not f.reproduced and "5 steps before the logged blowup at step 31 (tolerance 3)" in f.message
    off = [x * (1 + 3 * FIDELITY_MAX_REL_DEV) for x in exact]
    f = fid(10, off, 40, 31)
    assert not f.reproduced and "does not reproduce the logged loss" in f.message and "batch(t)" in f.message
    f = fid(10, exact[:20] + [1.0] * 10, 40, None)
    assert not f.reproduced and "does not reproduce the logged blowup at step 31" in f.message
    # the log holds the loss *after* update t at step t: the replay matches it shifted by one step
    f = fid(10, list(logged[9:29]), 30, None)
    assert not f.reproduced and "matches the log shifted by -1 step" in f.message
    f = fid(100, [1.0] * 5, 105, None)
    assert not f.reproduced and "no logged loss between steps 101 and 105" in f.message


def test_blowup_step_is_scans_on_log_and_replay():
    """One definition: the logged blowup is detect_loss_events' on the log, a replayed one the same
    function on the log up to the checkpoint + the replayed losses sampled like the log."""
    from adamdiag.analysis.signals import detect_loss_events

    rng = np.random.default_rng(1)
    steps = np.arange(1, 301)
    vals = np.exp(rng.normal(0, 0.02, 300)) * np.r_[np.full(200, 1.0), np.full(100, 100.0)]
    judge = BlowupJudge(steps, vals, 150)
    assert judge.logged_blowup == detect_loss_events(steps, vals).blowup_step == 201
    assert judge.blowup_step(list(vals[150:])) == 201
    calm = list(vals[150:200]) * 3
    assert judge.blowup_step(calm) is None and judge.stop_after(calm) is None
    late = calm[:100] + [50.0] * 30
    assert judge.blowup_step(late) == 251
    assert judge.stop_after(late) == 101 + 100  # settled BLOWUP_HORIZON steps past the blowup
    assert judge.blowup_step([1.0, math.nan]) == 152 and judge.stop_after([1.0, math.nan]) == 2
    # a log written every 10 steps: the replay is read at the same steps (and interval past the log's end)
    sparse = BlowupJudge(steps[::10], vals[::10], 150)
    assert sparse.logged_blowup == 201
    st, _ = sparse.curve([1.0] * 200)
    assert list(st[-3:]) == [321, 331, 341] and 155 not in st  # logged 1, 11, ..., 291


def _collapsing(n=300, r=1e-3, v0=1e-4, beta2=0.99, grow=False):
    """Moments under pure-ish decay: v̂ ← β2·v̂ + (1-β2)·g² with g² = r·v̂."""
    vs, g2 = [], []
    v = v0
    for _ in range(n):
        vs.append(v)
        g2.append((r if not grow else 1.0) * v)
        v = beta2 * v + (1 - beta2) * g2[-1]
    med = [math.sqrt(x) * 0.8 for x in vs[1:] + [v]]
    return ScopeSeries(g2_mean=g2, vhat_prev_mean=vs, median_sqrt_vhat=med)


def test_outcome_window():
    assert outcome_window(0.999) == 200 and outcome_window(0.9999) == 2000
    assert outcome_window(0.99) == 50 and outcome_window(0.9) == 50  # never judged on fewer than 50 steps


def test_outcomes_from_hand_made_moments():
    coll = _collapsing()
    e = risk_evidence(coll, 0.99, 1e-8, "global")
    assert (
        e["at_risk"] and e["window"] == 50 and e["r"] < 0.1 and e["median_sqrt_vhat_end"] < e["median_sqrt_vhat_start"]
    )
    assert decide_outcome(None, False, {"global": coll}, 0.99, 1e-8)[0] == "at_risk"
    # eps already bounds the step (median √v̂ under 10·eps): the collapse cannot blow the step up any more
    assert decide_outcome(None, False, {"global": coll}, 0.99, 1e-3)[0] == "avoided"
    # gradients as large as v̂ expects (r ~ 1): no collapse
    assert decide_outcome(None, False, {"global": _collapsing(grow=True)}, 0.99, 1e-8)[0] == "avoided"
    # r small but √v̂ not falling any more (it settled on the gradient noise floor)
    flat = ScopeSeries(coll.g2_mean, coll.vhat_prev_mean, [1e-3] * len(coll.g2_mean))
    assert decide_outcome(None, False, {"global": flat}, 0.99, 1e-8)[0] == "avoided"
    # a named tensor still collapsing while the global mean is not: at risk, and it says where
    out, ev = decide_outcome(None, False, {"global": flat, "head.weight": coll}, 0.99, 1e-8)
    assert out == "at_risk" and ev["scope"] == "head.weight"
    assert decide_outcome(120, False, {"global": coll}, 0.99, 1e-8)[0] == "blowup"
    assert decide_outcome(None, True, {"global": flat}, 0.99, 1e-8) == ("at_risk", {"scope": "budget", "at_risk": True})


def _judge():
    return BlowupJudge(np.arange(1, 51), np.ones(50), 50)


def _v(name, losses, scopes=None, truncated=False):
    n = len(losses)
    return summarize_variant(
        name,
        1e-3,
        0.99,
        1e-3,
        50,
        losses,
        [1.0] * n,
        [1.0] * n,
        [0.0] * n,
        _judge(),
        scopes=scopes,
        truncated=truncated,
    )


def test_conclusion_and_exit_codes():
    spiky, calm = [1.0] * 5 + [100.0] * 15, [1.0] * 100
    late = [1.0] * 60 + [100.0] * 15
    assert conclude([_v("o", spiky), _v("a", calm), _v("b", spiky)])[:2] == ("fixed", 0)
    assert conclude([_v("o", spiky), _v("a", spiky)])[:2] == ("not_fixed", 1)
    assert conclude([_v("o", calm), _v("a", spiky)])[:2] == ("no_blowup", 0)
    nan = _v("n", [1.0, math.nan])
    assert nan.spike and nan.blowup_step == nan.spike_step == 52 and nan.nonfinite_step == 52
    assert nan.max_loss == math.inf and nan.outcome == "blowup"
    # a later blowup is a postponement: exit 1, and the text says from where to where
    vs = [_v("o", spiky), _v("lr=3.3e-4", late)]
    c, code, text = conclude(vs, 50)
    assert (c, code) == ("postponed", 1) and "lr=3.3e-4 postpones the blowup from 56 to 111" in text
    assert [f["id"] for f in outcome_findings(vs, 50)] == ["AD106"]
    # a few steps later is the same blowup (the replay's own timing jitter), not a postponement
    assert conclude([_v("o", spiky), _v("a", [1.0] * 8 + [100.0] * 15)], 50)[:2] == ("not_fixed", 1)
    # no blowup but v still collapsing at the end: at risk -> postponed, exit 1
    risky = _v("lr=1e-4", [1.0] * 100, scopes={"global": _collapsing(100, v0=1e-2)})
    assert risky.outcome == "at_risk" and risky.risk["scope"] == "global"
    c, code, text = conclude([_v("o", spiky), risky], 50)
    assert (c, code) == (
        "postponed",
        1,
    ) and "lr=1e-4 reaches step 150 without a blowup, but v is still collapsing" in text
    # cut short by a budget: at risk, truncated
    cut = _v("eps=0.1", [1.0] * 10, truncated=True)
    assert cut.outcome == "at_risk" and cut.truncated
    assert conclude([_v("o", spiky), cut, _v("b", calm)])[:2] == ("fixed", 0)


def test_result_json_has_no_nan_and_round_trips():
    var = summarize_variant(
        "original",
        1e-8,
        0.999,
        1e-3,
        10,
        [1.0, math.inf],
        [2.0, math.nan],
        [0.1, 0.1],
        [0.5, 0.5],
        BlowupJudge(np.arange(1, 11), np.ones(10), 10),
    )
    r = ReplayResult(
        checkpoint="c.pt",
        start_step=10,
        steps=2,
        fidelity=Fidelity(max_rel_dev=math.nan, reproduced=False),
        variants=[var],
    )
    d = r.to_dict()
    text = json.dumps(d, allow_nan=False)  # raises on a NaN/Infinity literal
    assert d["fidelity"]["max_rel_dev"] is None and d["fidelity"]["max_rel_dev_nonfinite"] == "nan"
    assert d["variants"][0]["max_loss"] is None and d["variants"][0]["max_loss_nonfinite"] == "inf"
    back = ReplayResult.from_dict(json.loads(text))
    assert back.variants[0].max_loss == math.inf and math.isnan(back.fidelity.max_rel_dev)
    assert list(d)[:6] == ["schema", "checkpoint", "start_step", "steps", "fidelity", "variants"]


# --- distributed split ----------------------------------------------------------------------


def test_shard_and_merge():
    parts = [shard(5, 2, r) for r in range(2)]
    assert parts == [[0, 2, 4], [1, 3]]  # the original (0) stays on rank 0
    assert merge([[(i, f"v{i}") for i in p] for p in parts], 5) == [f"v{i}" for i in range(5)]
    assert shard(2, 4, 3) == []
    with pytest.raises(ValueError, match="missing variants"):
        merge([[(0, "a")]], 2)
    with pytest.raises(ValueError, match="twice"):
        merge([[(0, "a")], [(0, "b")]], 1)


def test_world_from_env():
    assert not world_from_env({}).distributed
    w = world_from_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    assert (w.size, w.rank, w.local_rank, w.distributed) == (2, 1, 1, True)
    assert not world_from_env({"WORLD_SIZE": "1", "RANK": "0"}).distributed
    assert w.local_size == 2  # without LOCAL_WORLD_SIZE: all ranks on this node
    w = world_from_env({"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"})
    assert (w.size, w.rank, w.local_rank, w.local_size) == (8, 5, 1, 4)


def test_backend_nccl_only_with_a_gpu_per_local_rank():
    four = World(8, 5, 1, 4)
    assert choose_backend("cuda", four, 4) == "nccl"
    assert choose_backend("cuda", four, 8) == "nccl"
    assert choose_backend("cuda", four, 2) == "gloo"  # NCCL refuses two ranks on one GPU
    assert choose_backend("cpu", four, 4) == "gloo"


# --- optimizer parameters -> model parameters -----------------------------------------------


def _ckpt(tmp_path: Path, model, groups) -> object:
    import torch

    from adamdiag.replay.checkpoint import load_replay_checkpoint

    opt = torch.optim.Adam(groups, lr=1e-3)
    sum(p.sum() for p in model.parameters()).backward()
    opt.step()
    path = tmp_path / "ck.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 1}, path)
    return load_replay_checkpoint(path)


def test_param_order(tmp_path):
    import torch

    from adamdiag.replay.checkpoint import order_is_guessed, param_order

    m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 4))
    ck = _ckpt(tmp_path, m, m.parameters())
    assert param_order(ck, m) == [[("0.weight", 0), ("0.bias", 1), ("1.weight", 2), ("1.bias", 3)]]
    assert not order_is_guessed(ck, m)
    # custom groups with names: matched by name
    named = dict(m.named_parameters())
    ck = _ckpt(
        tmp_path,
        m,
        [
            {"params": [("1.bias", named["1.bias"]), ("0.weight", named["0.weight"])]},
            {"params": [("0.bias", named["0.bias"]), ("1.weight", named["1.weight"])]},
        ],
    )
    assert param_order(ck, m) == [[("1.bias", 0), ("0.weight", 1)], [("0.bias", 2), ("1.weight", 3)]]
    # custom groups without names, distinct shapes: matched by shape, and flagged as a guess
    ck = _ckpt(
        tmp_path,
        m,
        [{"params": [named["1.weight"], named["0.weight"]]}, {"params": [named["0.bias"], named["1.bias"]]}],
    )
    assert param_order(ck, m) == [[("1.weight", 0), ("0.weight", 1)], [("0.bias", 2), ("1.bias", 3)]]
    assert order_is_guessed(ck, m)
    # an optimizer over a subset of the parameters, without names: cannot be matched
    ck = _ckpt(tmp_path, m, [named["0.weight"]])
    with pytest.raises(InputError, match="holds 1 parameters but the entry's model has 4"):
        param_order(ck, m)


@pytest.mark.parametrize("name", ["NAdam", "RAdam", "SparseAdam", "Adafactor"])
def test_other_optimizers_state_is_refused_naming_it(tmp_path, name):
    """Replay steps torch.optim.Adam/AdamW: a real NAdam/RAdam/SparseAdam/Adafactor checkpoint is refused
    naming the optimizer before anything is built (NAdam, RAdam and SparseAdam were accepted and replayed
    as Adam before), while Adam and AdamW load."""
    import torch

    from adamdiag.replay.checkpoint import load_replay_checkpoint

    def save(opt_name: str) -> Path:
        torch.manual_seed(0)
        sparse = opt_name == "SparseAdam"
        m = torch.nn.Embedding(10, 3, sparse=True) if sparse else torch.nn.Linear(4, 3)
        opt = getattr(torch.optim, opt_name)(m.parameters(), lr=1e-3)
        for _ in range(3):
            opt.zero_grad()
            (m(torch.randint(0, 10, (5,))) if sparse else m(torch.randn(5, 4))).pow(2).sum().backward()
            opt.step()
        path = tmp_path / f"{opt_name}.pt"
        torch.save({"model": m.state_dict(), "optimizer": opt.state_dict(), "step": 3}, path)
        return path

    assert load_replay_checkpoint(save("AdamW")).step == 3
    with pytest.raises(InputError, match=rf"holds {name} state|state: Adafactor \(row_var/col_var\)"):
        load_replay_checkpoint(save(name))


def test_bitsandbytes_state_is_refused_naming_it():
    """bitsandbytes' 8-bit state (a fixture its Adam8bit wrote; inspect reads it) cannot be replayed with Adam."""
    from adamdiag.replay.checkpoint import load_replay_checkpoint

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "bnb" / "adam8bit.pt"
    with pytest.raises(InputError, match="holds bitsandbytes optimizer state"):
        load_replay_checkpoint(fixture)


def test_a_blowup_every_change_moves_to_one_step_is_a_data_event():
    # The original blows up at 56; an eps change and an lr change both "blow up" at 111 together — a jump no
    # optimizer setting moves (a data shift, a loss term switched on): said so, with the horizon to judge by.
    from dataclasses import replace

    from adamdiag.pipeline.verify import decide
    from adamdiag.replay.result import common_blowup
    from adamdiag.results.report import RunReport

    spiky, late = [1.0] * 5 + [100.0] * 15, [1.0] * 60 + [100.0] * 15
    vs = [_v("original", spiky), replace(_v("eps=0.01", late), eps=1e-2), replace(_v("lr=1e-4", late), lr=1e-4)]
    assert common_blowup(vs, 50) == 111
    c, code, text = conclude(vs, 50)
    assert (c, code) == ("postponed", 1) and "the data or the objective at step 111" in text
    assert "replay --steps 60" in text
    # the same later step from one kind of change a few percent apart is an ordinary postponement
    close = [vs[0], replace(vs[1], eps=1.1e-2), vs[1]]
    assert common_blowup(close, 50) is None
    # scan --verify: neither confirmed nor refuted, the verdict's confidence kept
    result = ReplayResult("ck.pt", 50, 75, Fidelity(0.0, True, message="ok"), vs)
    rep = RunReport(run="r", verdict="v_collapse", blowup_step=56, confidence="high")
    decide(rep, result, {"original": {"eps": 1e-3, "beta2": 0.99, "lr": 1e-3}})
    assert rep.confidence == "high" and rep.verification["confirms"] is None
    assert any(f.id == "AD703" and "step 111" in f.message for f in rep.findings), rep.findings


def test_a_blowup_no_change_moves_is_said_so_and_the_fix_is_not_claimed():
    # The original and every change (eps a decade up and more, lr/10) blow up at the original's own step 56:
    # from the checkpoint on no optimizer setting matters. Neither a fix nor a refutation of the verdict.
    from dataclasses import replace

    from adamdiag.replay.result import unmoved_blowup

    vs = [
        _variant("original", SPIKY),
        _variant("eps=0.001", SPIKY, eps=1e-3),
        _variant("eps=0.1", SPIKY, eps=1e-1),
        _variant("lr=0.0001", SPIKY, lr=1e-4),
    ]
    assert unmoved_blowup(vs) == 56
    c, code, text = conclude(vs, 50)
    assert (c, code) == ("not_fixed", 1) and "at the original's own step 56" in text
    assert "something new in the data or the objective" in text
    # one change that moves it (a postponement), or only one kind of change a few percent apart: not this
    assert unmoved_blowup([*vs[:3], replace(vs[3], blowup_step=111)]) is None
    assert unmoved_blowup([vs[0], vs[1], replace(vs[1], eps=1.1e-3)]) is None
    rep = _report_with_eps_recommendation(1e-3)
    rep.verdict, rep.blowup_step = "v_collapse", 56
    _decide_on(rep, vs)
    assert rep.confidence == "low" and rep.verification["confirms"] is None
    ad106 = [f for f in rep.findings if f.id == "AD106"]
    assert len(ad106) == 1 and "the original's own step" in ad106[0].message
    assert rep.recommendation["verified"] is False and rep.recommendation["eps"] == 1e-3
    assert "not confirmed: replayed from step 50 it blows up at step 56" in rep.recommendation["message"]


# A replayed variant's losses from a start at step 50: blows up at 56, blows up later (111), never.
SPIKY, LATE, CALM = [1.0] * 5 + [100.0] * 15, [1.0] * 60 + [100.0] * 15, [1.0] * 100


def _variant(name, losses, eps=1e-8, lr=1e-3, **kw):
    """A variant of a run with eps 1e-8 and lr 1e-3 (the original's), changing eps or lr."""
    from dataclasses import replace

    return replace(_v(name, losses, **kw), eps=eps, lr=lr)


def _decide_on(rep, variants) -> None:
    """``--verify``'s decision on ``rep`` from a replay from step 50 that reproduced the log."""
    from adamdiag.pipeline.verify import decide

    result = ReplayResult("ck.pt", 50, 100, Fidelity(0.0, True, message="ok"), variants)
    decide(rep, result, {"original": {"eps": 1e-8, "beta2": 0.99, "lr": 1e-3}})


def _report_with_eps_recommendation(sized: float):
    from adamdiag.results.report import RunReport

    rec = {
        "action": "increase eps",
        "current_eps": 1e-8,
        "eps": sized,
        "message": f"eps 1e-08 → {sized:g}: √v̂ ≤ eps/3 in 80% of the live elements of the collapsed tensors",
    }
    return RunReport(run="r", verdict="v_collapse", blowup_step=56, confidence="medium", recommendation=rec)


def test_a_sized_eps_that_only_postpones_the_blowup_is_not_the_recommended_fix():
    # Under a warm restart the eps sized from √v̂ (here 1e-4) can still leave lr/eps too large: its replay
    # blows up later. The replay's smallest eps beyond it that avoided the blowup (1e-2) becomes the
    # recommendation; the sized value stays as sized_eps and the text names the postponement.
    vs = [
        _variant("original", SPIKY),
        _variant("eps=0.0001", LATE, eps=1e-4),
        _variant("eps=0.001", LATE, eps=1e-3),
        _variant("eps=0.01", CALM, eps=1e-2),
        _variant("eps=0.1", CALM, eps=1e-1),
        _variant("lr=0.0001", SPIKY, lr=1e-4),
    ]
    rep = _report_with_eps_recommendation(1e-4)
    _decide_on(rep, vs)
    rec = rep.recommendation
    assert rep.verdict == "v_collapse" and rep.verification["best"] == "eps=0.01"
    assert rec["eps"] == 1e-2 and rec["sized_eps"] == 1e-4, rec
    assert rec["message"].startswith("eps 1e-08 → 0.01: verified by replay from step 50: it avoids the blowup")
    assert "eps=0.0001 blows up at step 111" in rec["message"] and "the sizing from √v̂ chose 0.0001" in rec["message"]
    ad701 = next(f for f in rep.findings if f.id == "AD701")
    assert "eps=0.0001 blows up at step 111" in ad701.message and "eps=0.001 blows up" in ad701.message

    # a sized eps the replay saw avoid the blowup stays, message and all
    rep = _report_with_eps_recommendation(1e-2)
    before = dict(rep.recommendation)
    _decide_on(rep, vs)
    assert rep.recommendation == before
    # one cut short by the budget proves nothing either way: it stays too
    cut = [*vs[:1], _variant("eps=0.0001", [1.0] * 10, eps=1e-4, truncated=True), *vs[2:]]
    rep = _report_with_eps_recommendation(1e-4)
    _decide_on(rep, cut)
    assert rep.recommendation["eps"] == 1e-4 and "sized_eps" not in rep.recommendation


def test_an_lr_cut_that_only_postpones_the_blowup_gives_way_to_the_stronger_cut_that_avoided_it():
    from adamdiag.results.report import RunReport

    vs = [
        _variant("original", SPIKY),
        _variant("lr=0.000333", LATE, lr=1e-3 / 3),
        _variant("lr=0.0001", LATE, lr=1e-4),
        _variant("lr=1e-05", CALM, lr=1e-5),
        _variant("eps=0.001", SPIKY, eps=1e-3),
    ]
    rec = {"action": "lower the learning rate", "lr": 1e-4, "lr_scale": 0.1, "current_lr": 1e-3, "message": "lower lr"}
    rep = RunReport(run="r", verdict="lr_too_high", blowup_step=56, confidence="high", recommendation=rec)
    _decide_on(rep, vs)
    assert rep.verdict == "lr_too_high" and rep.recommendation["lr"] == 1e-5 and rep.recommendation["sized_lr"] == 1e-4
    assert math.isclose(rep.recommendation["lr_scale"], 0.01)
    assert rep.recommendation["message"].startswith("lower lr to 1e-05 (100x): verified by replay from step 50")
    assert "lr=0.0001 blows up at step 111" in rep.recommendation["message"]


def test_a_warm_restart_floor_that_only_postpones_moves_on_and_the_measured_sizing_stays():
    # The floor (1e-2) blew up later too; 0.1 avoided it: the recommendation moves to 0.1, sized_eps stays the
    # value measured from √v̂ (1e-4), and the optimizer the advice is for stays named first.
    vs = [
        _variant("original", SPIKY),
        _variant("eps=0.0001", LATE, eps=1e-4),
        _variant("eps=0.01", LATE, eps=1e-2),
        _variant("eps=0.1", CALM, eps=1e-1),
    ]
    rep = _report_with_eps_recommendation(1e-2)
    rep.recommendation.update(
        sized_eps=1e-4, message="in optimizer `gen`: eps 1e-08 → 0.01: the logged lr rose 4,000x from the start"
    )
    _decide_on(rep, vs)
    rec = rep.recommendation
    assert (rec["eps"], rec["sized_eps"]) == (0.1, 1e-4)
    assert rec["message"].startswith("in optimizer `gen`: eps 1e-08 → 0.1: verified by replay from step 50")
    assert (
        "eps=0.01 blows up at step 111" in rec["message"]
        and "the sizing from √v̂ chose 0.0001 (the logged lr rose" in rec["message"]
    )


def test_several_runs_under_logdir_is_one_line_with_their_count(tmp_path: Path) -> None:
    """--logdir naming a folder of six runs: the first four and how many more, then 'name one'."""
    from adamdiag.replay.runner import find_run_dir

    sample = Path(__file__).resolve().parents[2] / "sample_logs" / "vcollapse"
    (events,) = sample.glob("events.out.tfevents.*")
    for i in range(6):
        (tmp_path / f"r{i}").mkdir()
        shutil.copy(events, tmp_path / f"r{i}")
    with pytest.raises(InputError, match=r"r3 and 2 more\); name one$"):
        find_run_dir(sample / "checkpoints" / "step_000600.pt", tmp_path)
