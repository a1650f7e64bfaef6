"""The missing-hyperparameter policy, one for every format (issue 13): a value a checkpoint does not
store is ``null`` with ``<name>_source: "unknown"`` and the statistics that need it are ``null`` too
(``unknown_inputs`` says which); ``--assume-lr/--assume-beta2/--assume-eps`` (inspect, scan/check,
replay) supply it, marked ``"user"`` and named in the text output; a stored value is never replaced.

Real checkpoints throughout: DCP written by torch's ``HuggingFaceStorageWriter`` (no lr/betas/eps in
safetensors), Keras ``.weights.h5`` fixtures written by Keras 3 (no β/eps, lr a schedule), a torch
file of a real AdamW (everything stored), the same with a param group that lost its eps."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.io.checkpoints.hyper import Assumptions
from adamdiag.pipeline.summary import summarize_checkpoint

runner = CliRunner()
KERAS = Path(__file__).resolve().parents[1] / "fixtures" / "tf" / "keras"
LR, BETA2, EPS = 1e-2, 0.999, 1e-8  # what the live AdamW below runs with (torch's defaults but lr)
NEEDS_LR = ("update_rms", "update_max", "update_rms_rel")
NEEDS_EPS = ("frac_sqrt_vhat_below_eps", "frac_sqrt_vhat_below_10eps", "update_ratio_rms", *NEEDS_LR)


def _train(steps: int = 3) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, BETA2), eps=EPS)
    for _ in range(steps):
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def _hf_dcp(out: Path, steps: int = 3) -> Path:
    """DCP written by HuggingFaceStorageWriter: tensors only, so lr/betas/eps/weight decay are lost."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model, opt = _train(steps)
    msd, osd = get_state_dict(model, opt, options=StateDictOptions(flatten_optimizer_state_dict=True))
    osd = {k: v for k, v in osd.items() if isinstance(v, torch.Tensor)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # single process: DCP warns that no process group exists
        dcp.save({**msd, **osd}, storage_writer=dcp.HuggingFaceStorageWriter(path=str(out)))
    return out


def _torch_file(out: Path, *, drop: tuple[str, ...] = ()) -> Path:
    """The same live optimizer saved by torch.save; ``drop``: param-group keys taken out first."""
    model, opt = _train()
    osd = opt.state_dict()
    for g in osd["param_groups"]:
        for k in drop:
            g.pop(k)
    torch.save({"model": model.state_dict(), "optimizer": osd}, out)
    return out


def _inspect(*args: str) -> dict:
    res = runner.invoke(app, ["inspect", *args, "--format", "json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_unknown_is_null_with_its_source_and_so_is_every_statistic_that_needs_it(tmp_path):
    out = _hf_dcp(tmp_path / "ckpt")
    (ck,) = _inspect(str(out))["checkpoints"]
    for t in ck["tensors"]:
        for k in ("lr", "beta1", "beta2", "eps", "weight_decay"):
            assert t[k] is None and t[f"{k}_source"] == "unknown", k
        for k in NEEDS_EPS:
            assert t[k] is None, k
        qs = ("min", "p01", "p50", "p99", "max")
        assert all(t["sqrt_vhat_q"][q] is None and t["eff_step_q"][q] is None for q in qs)
        assert set(t["unknown_inputs"]["update_rms"]) == {"lr", "eps", "beta1", "beta2"}
        assert t["unknown_inputs"]["sqrt_vhat_q"] == ["beta2"]
        # what needs no hyperparameter is still there
        assert t["v_mean"] > 0 and t["m_abs_mean"] > 0 and t["nonfinite"] == 0
    assert any("unknown (not in the checkpoint)" in w and "--assume-eps" in w for w in ck["warnings"])


def test_assumed_values_are_used_marked_user_and_equal_the_stored_ones(tmp_path):
    """Assuming the values the live optimizer really had gives the statistics of a torch file of the
    same optimizer, where they are read from the file."""
    dcp_dir = _hf_dcp(tmp_path / "ckpt")
    ref = _torch_file(tmp_path / "ref.pt")
    (ck,) = _inspect(str(dcp_dir), "--assume-lr", str(LR), "--assume-beta2", str(BETA2), "--assume-eps", str(EPS))[
        "checkpoints"
    ]
    (want,) = _inspect(str(ref))["checkpoints"]
    by_name = {t["name"]: t for t in want["tensors"]}
    assert len(ck["tensors"]) == len(by_name) == 4
    for t in ck["tensors"]:
        w = by_name[t["name"]]
        assert (t["lr_source"], t["beta2_source"], t["eps_source"]) == ("user",) * 3
        assert w["eps_source"] == "file" and (t["lr"], t["beta2"], t["eps"]) == (LR, BETA2, EPS)
        assert t["beta1_source"] == "unknown" and t["update_rms"] is None  # β1 has no flag: still unknown
        assert t["unknown_inputs"]["update_rms"] == ["beta1"]
        for k in ("frac_sqrt_vhat_below_eps", "frac_sqrt_vhat_below_10eps", "eps_effective"):
            assert t[k] == w[k], k
        for q, v in w["sqrt_vhat_q"].items():
            assert math.isclose(t["sqrt_vhat_q"][q], v, rel_tol=1e-12), q
        for q, v in w["eff_step_q"].items():
            assert math.isclose(t["eff_step_q"][q], v, rel_tol=1e-12), q
    assert any("eps=1e-08 assumed (--assume-eps) for 4 tensor(s)" in x for x in ck["warnings"])
    # the text output says which values were assumed
    res = runner.invoke(app, ["inspect", str(dcp_dir), "--assume-eps", "1e-8"])
    assert res.exit_code == 0 and "eps=1e-08 assumed (--assume-eps)" in res.stdout


def test_a_stored_value_is_never_replaced(tmp_path):
    f = _torch_file(tmp_path / "ck.pt")
    (ck,) = _inspect(str(f), "--assume-eps", "1e-3", "--assume-lr", "5")["checkpoints"]
    for t in ck["tensors"]:
        assert (t["eps"], t["eps_source"], t["lr"], t["lr_source"]) == (EPS, "file", LR, "file")
        assert t["unknown_inputs"] == {}
    assert any(
        "--assume-eps 0.001 not used for any tensor(s): the checkpoint stores eps (1e-08)" in w for w in ck["warnings"]
    )


def test_a_torch_group_without_eps_is_unknown_not_a_silent_default(tmp_path):
    f = _torch_file(tmp_path / "ck.pt", drop=("eps",))
    s = summarize_checkpoint(f)
    t = s.tensors[0].to_dict()
    assert math.isnan(t["eps"]) and t["eps_source"] == "unknown" and t["lr_source"] == "file"
    assert math.isnan(t["frac_sqrt_vhat_below_eps"]) and not math.isnan(t["sqrt_vhat_q"]["p50"])
    assert t["unknown_inputs"]["frac_sqrt_vhat_below_eps"] == ["eps"]
    s2 = summarize_checkpoint(f, assume=Assumptions(eps=EPS))
    ref = summarize_checkpoint(_torch_file(tmp_path / "ref.pt"))
    assert s2.tensors[0].eps == EPS and s2.tensors[0].hyper_source["eps"] == "user"
    assert s2.tensors[0].update_rms == ref.tensors[0].update_rms


def test_replay_takes_the_same_assumptions(tmp_path):
    from adamdiag.errors import InputError
    from adamdiag.replay.checkpoint import load_replay_checkpoint

    f = _torch_file(tmp_path / "ck.pt", drop=("eps",))
    with pytest.raises(InputError, match=r"param group 0 lacks eps \(give --assume-eps\)"):
        load_replay_checkpoint(f)
    ck = load_replay_checkpoint(f, assume=Assumptions(eps=1e-6))
    assert ck.param_groups[0]["eps"] == 1e-6 and ck.param_groups[0]["lr"] == LR
    assert ck.notes == ["eps=1e-06 assumed (--assume-eps): the checkpoint does not store it"]
    # the CLI: one line, exit 2, naming the flag (before any entry is needed)
    res = runner.invoke(app, ["replay", str(f)])
    assert res.exit_code == 2 and "--assume-eps" in res.output and "Traceback" not in res.output


def test_keras_weights_h5_schedule_lr_and_defaults(tmp_path):
    """Keras' .weights.h5 stores no β/eps (Keras' defaults, flagged "default") and this run's lr is a
    schedule (unknown): --assume-lr makes the update statistics computable, --assume-eps replaces
    the default."""
    f = KERAS / "schedule.weights.h5"
    (ck,) = _inspect(str(f))["checkpoints"]
    t = ck["tensors"][0]
    assert (t["lr"], t["lr_source"], t["eps_source"], t["beta2_source"]) == (None, "unknown", "default", "default")
    assert t["update_rms"] is None and t["unknown_inputs"]["update_rms"] == ["lr"]
    assert t["frac_sqrt_vhat_below_eps"] is not None and t["update_ratio_rms"] is not None
    # the text table marks unknown values "?" (not "nan": that is what non-finite data gives)
    res = runner.invoke(app, ["inspect", str(f)])
    row = next(ln.split() for ln in res.stdout.splitlines() if ln.startswith("trainable_variable_0"))
    assert row[4] == "?" and row[5] == "0.999" and row[13:16] == ["?", "?", "?"], row
    (ck2,) = _inspect(str(f), "--assume-lr", "0.003", "--assume-eps", "1e-6")["checkpoints"]
    t2 = ck2["tensors"][0]
    assert (t2["lr"], t2["lr_source"], t2["eps"], t2["eps_source"]) == (0.003, "user", 1e-6, "user")
    assert t2["beta2_source"] == "default" and t2["unknown_inputs"] == {}
    assert math.isclose(t2["update_rms"], 0.003 * t2["update_ratio_rms"], rel_tol=1e-12)


def test_decay_ratios_need_beta2(tmp_path):
    a, b = _hf_dcp(tmp_path / "step3", 3), _hf_dcp(tmp_path / "step5", 5)
    (pair,) = _inspect(str(a), str(b))["pairs"]
    r = pair["tensors"][0]
    assert r["beta2_source"] == "unknown" and r["r_interval"] is None and r["frac_pure_decay"] is None
    assert r["unknown_inputs"]["r_interval"] == ["beta2"] and r["mean_v_to"] > 0
    (pair,) = _inspect(str(a), str(b), "--assume-beta2", str(BETA2))["pairs"]
    r = pair["tensors"][0]
    assert r["beta2_source"] == "user" and r["beta2"] == BETA2 and r["frac_pure_decay"] is not None


def test_scan_and_check_take_the_flags(tmp_path):
    from tests.events_util import write_torch

    run = tmp_path / "run"
    write_torch(run, 30)
    _hf_dcp(run / "ckpt")
    res = runner.invoke(app, ["scan", str(run), "--format", "json", "--assume-eps", "1e-8"])
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["runs"]
    assert any("eps=1e-08 assumed (--assume-eps)" in w for w in r["warnings"])
    assert any("unknown (not in the checkpoint)" in w and "--assume-lr" in w for w in r["warnings"])
    res = runner.invoke(app, ["check", str(run), "--assume-beta2", "1.5"])
    assert res.exit_code == 2 and "--assume-beta2 must be in [0, 1), got 1.5" in res.output


def test_unknown_eps_with_v_exactly_zero(tmp_path):
    """A parameter whose gradient was always exactly 0 (v = 0) and a group without eps: the
    statistics are null, never a division by zero (scan of such a run failed with an internal error)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    for _ in range(3):
        model(torch.randn(8, 4)).pow(2).mean().backward()
        model[2].bias.grad.zero_()
        opt.step()
        opt.zero_grad()
    osd = opt.state_dict()
    osd["param_groups"][0].pop("eps")
    torch.save({"model": model.state_dict(), "optimizer": osd}, tmp_path / "ck.pt")
    s = summarize_checkpoint(tmp_path / "ck.pt")
    t = next(t for t in s.tensors if t.name == "2.bias")
    assert t.v_max == 0.0 and t.frac_v_zero == 1.0
    assert math.isnan(t.eff_step_q["max"]) and t.unknown_inputs["eff_step_q"] == ["eps"]
