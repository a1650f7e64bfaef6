"""Unit tests of the replay's pure parts: variants, entry resolution, spike/fidelity rules, results,
the distributed split, the optimizer-to-model parameter matching."""

from __future__ import annotations

import json
import math
import os
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
    MAX_DEFAULT_STEPS,
    Fidelity,
    ReplayResult,
    SpikeRule,
    check_fidelity,
    conclude,
    default_steps,
    reference_rule,
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
    vs = make_variants(ORIG, ["1e-3,1e-2", "1e-3"], ["0.99"], None)
    assert [v.name for v in vs] == ["original", "eps=0.001,beta2=0.99", "eps=0.01,beta2=0.99"]
    # only --beta2: eps stays the original's, no default eps candidates
    vs = make_variants(ORIG, None, ["0.99", "0.999"], None)
    assert [v.name for v in vs] == ["original", "beta2=0.99"]  # 0.999 is the original itself
    vs = make_variants(ORIG, None, None, ["1e-4"])
    assert vs[1] == Variant("lr=0.0001", 1e-8, 0.999, 1e-4)


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


def test_default_steps():
    assert default_steps(100, 200, 1000) == (120, "to the logged blowup at step 200 + margin")
    assert default_steps(100, 110, 115)[0] == 15  # not past the end of the log
    n, why = default_steps(0, MAX_DEFAULT_STEPS + 10, None)
    assert n is None and "--steps" in why
    assert default_steps(100, None, 5000)[0] == MAX_DEFAULT_STEPS
    assert default_steps(100, None, 100)[0] is None


def test_fidelity_rules():
    rule = _rule(level=1.0)
    logged_steps = np.arange(1, 41)
    logged = np.r_[np.full(30, 1.0) + np.arange(30) * 1e-2, np.full(10, 50.0)]
    exact = list(logged[10:])
    f = check_fidelity(10, exact, logged_steps, logged, rule, 40)
    # tracked: steps 11..20, the first half of the way to the logged blowup at 31
    assert f.reproduced and f.max_rel_dev == 0 and f.compared_steps == 10 and f.tracked_until == 20
    assert f.logged_spike_step == 31 == f.replayed_spike_step and f.spike_tolerance == 3
    # after the tracked half, rounding differences may have grown (the instability amplifies them):
    # a replay that drifts away late but blows up within the tolerance reproduces the run
    drift = [x * (1 + (0.3 if t > 20 else 1e-5)) for t, x in zip(range(11, 41), exact)]
    drift[20:23] = [1.0, 1.0, 1.0]  # steps 31-33 calm: it blows up three steps late (34 instead of 31)
    f = check_fidelity(10, drift, logged_steps, logged, rule, 40)
    assert f.reproduced and f.replayed_spike_step == 34, f.message
    assert "tolerance 3" in f.message
    late = exact[:20] + [1.0] * 4 + [50.0] * 6  # blows up at 35: 4 steps late, beyond the tolerance
    f = check_fidelity(10, late, logged_steps, logged, rule, 40)
    assert not f.reproduced and f.message.startswith("the replay blows up at step 35, 4 steps after the logged")
    early = exact[:15] + [50.0] * 15  # tracks the first half, then blows up at 26: 5 steps early
    f = check_fidelity(10, early, logged_steps, logged, rule, 40)
    assert not f.reproduced and "5 steps before the logged blowup at step 31 (tolerance 3)" in f.message
    off = [x * (1 + 3 * FIDELITY_MAX_REL_DEV) for x in exact]
    f = check_fidelity(10, off, logged_steps, logged, rule, 40)
    assert not f.reproduced and "does not reproduce the logged loss" in f.message and "batch(t)" in f.message
    no_blowup = exact[:20] + [1.0] * 10
    f = check_fidelity(10, no_blowup, logged_steps, logged, rule, 40)
    assert not f.reproduced and "does not reproduce the logged blowup at step 31" in f.message
    # the log holds the loss *after* update t at step t: the replay matches it shifted by one step
    shifted = list(logged[9:29])
    f = check_fidelity(10, shifted, logged_steps, logged, rule, 30)
    assert not f.reproduced and "matches the log shifted by -1 step" in f.message
    f = check_fidelity(100, [1.0] * 5, logged_steps, logged, rule, 105)
    assert not f.reproduced and "no logged loss between steps 101 and 105" in f.message


def test_conclusion_and_exit_codes():
    rule = _rule(level=1.0)

    def v(name, losses):
        return summarize_variant(
            name, 1e-3, 0.999, 1e-3, 0, losses, [1.0] * len(losses), [1.0] * len(losses), [0.0] * len(losses), rule
        )

    spiky, calm = [1.0] * 5 + [100.0] * 5, [1.0] * 10
    assert conclude([v("o", spiky), v("a", calm), v("b", spiky)])[:2] == ("fixed", 0)
    assert conclude([v("o", spiky), v("a", spiky)])[:2] == ("not_fixed", 1)
    assert conclude([v("o", calm), v("a", spiky)])[:2] == ("no_blowup", 0)
    nan = v("n", [1.0, math.nan])
    assert nan.spike and nan.spike_step == 2 and nan.nonfinite_step == 2 and nan.max_loss == math.inf


def test_result_json_has_no_nan_and_round_trips():
    rule = _rule()
    var = summarize_variant(
        "original", 1e-8, 0.999, 1e-3, 10, [1.0, math.inf], [2.0, math.nan], [0.1, 0.1], [0.5, 0.5], rule
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
