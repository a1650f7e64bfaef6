"""Checkpoint reader on plain torch.save files: layouts, names, statistics, safety; the inspect CLI."""

from __future__ import annotations

import fractions
import json
import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from adamdiag.analysis.moments import tensor_stats
from adamdiag.cli import app
from adamdiag.errors import InputError, UntrustedCheckpointError
from adamdiag.io.checkpoints import TensorMoments, find_checkpoints, map_names, open_checkpoint
from adamdiag.pipeline.summary import summarize_checkpoint

# 2 shared CPU cores: intra-op threads only oversubscribe them (15x slower under load).


class Net(nn.Module):
    def __init__(self, tied: bool = False, bn: bool = False):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.fc1 = nn.Linear(8, 16)
        self.norm = nn.BatchNorm1d(16) if bn else nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 16)
        self.out = nn.Linear(16, 10)
        self.head = nn.Linear(8, 10, bias=False)
        if tied:
            self.head.weight = self.emb.weight  # tied: one parameter, two state_dict keys

    def forward(self, idx):
        h = self.emb(idx)
        return self.out(torch.relu(self.fc2(self.norm(self.fc1(h))))) + self.head(h)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 5, seed: int = 0, dead: tuple[str, ...] = ()):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, 10, (32,), generator=g)
        loss = nn.functional.cross_entropy(model(idx), torch.randint(0, 10, (32,), generator=g))
        opt.zero_grad()
        loss.backward()
        for n, p in model.named_parameters():
            if n in dead:
                p.grad = torch.zeros_like(p)  # collapsing tensor: v only decays
        opt.step()


def _two_groups(model: nn.Module, *, named: bool, decay_1d: tuple[str, ...] = ()):
    """The usual hand-built groups: weight decay on matrices, none on biases/norms (param order
    therefore differs from the model's)."""
    dec = [(n, p) for n, p in model.named_parameters() if p.ndim >= 2 or n in decay_1d]
    nodec = [(n, p) for n, p in model.named_parameters() if not (p.ndim >= 2 or n in decay_1d)]
    if named:
        return [{"params": dec, "weight_decay": 0.1}, {"params": nodec, "weight_decay": 0.0}]
    return [
        {"params": [p for _, p in dec], "weight_decay": 0.1},
        {"params": [p for _, p in nodec], "weight_decay": 0.0},
    ]


def _live(model: nn.Module, opt: torch.optim.Optimizer, convention="torch") -> dict[str, object]:
    """Statistics of the live optimizer's state, keyed by parameter name (the truth at save time)."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for gi, grp in enumerate(opt.param_groups):
        for p in grp["params"]:
            if p not in opt.state:
                continue
            st = opt.state[p]
            t = TensorMoments(
                name=names[id(p)],
                index=0,
                group=gi,
                shape=tuple(p.shape),
                step=int(st["step"]),
                lr=grp["lr"],
                beta1=grp["betas"][0],
                beta2=grp["betas"][1],
                eps=grp["eps"],
                weight_decay=grp["weight_decay"],
                amsgrad=grp["amsgrad"],
                exp_avg=st["exp_avg"],
                exp_avg_sq=st["exp_avg_sq"],
                max_exp_avg_sq=st.get("max_exp_avg_sq"),
                param=p.detach(),
            )
            out[names[id(p)]] = tensor_stats(t, convention)
    return out


def _assert_same_stats(summary, live, *, named_only=False):
    seen = 0
    for t in summary.tensors:
        if t.name is None:
            assert named_only, f"unnamed tensor {t.label}"
            continue
        ref = live[t.name]
        assert t.shape == ref.shape
        for key in ("v_mean", "v_max", "m_abs_mean", "update_rms", "update_max", "frac_sqrt_vhat_below_eps"):
            assert getattr(t, key) == pytest.approx(getattr(ref, key), rel=1e-6, abs=1e-30), (t.name, key)
        assert t.sqrt_vhat_q == pytest.approx(ref.sqrt_vhat_q, rel=1e-6)
        assert t.weight_decay == ref.weight_decay and t.step == ref.step
        seen += 1
    return seen


# --- layouts -------------------------------------------------------------------------------------
def test_model_optimizer_step_dict(tmp_path):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, eps=1e-6)
    _train(model, opt, steps=7, dead=("fc2.weight",))
    f = tmp_path / "ckpt_step7.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 7}, f)
    ck = open_checkpoint(f)
    assert (ck.layout, ck.step, ck.optimizer, ck.convention, ck.name_mapping) == (
        "torch",
        7,
        "Adam",
        "torch",
        "model-order",
    )
    s = summarize_checkpoint(f)
    assert [t.name for t in s.tensors] == [n for n, _ in model.named_parameters()]
    assert [t.index for t in s.tensors] == list(range(len(s.tensors)))
    assert _assert_same_stats(s, _live(model, opt)) == len(list(model.parameters()))
    assert all(t.param_rms is not None for t in s.tensors)


def test_nested_key_path_adamw_amsgrad_and_int_step(tmp_path):
    torch.manual_seed(1)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, amsgrad=True, foreach=True)
    _train(model, opt)
    osd = opt.state_dict()
    for st in osd["state"].values():
        st["step"] = int(st["step"])  # older torch saved a plain int
    torch.save(
        {"trainer": {"meta": {"epoch": 3}, "states": [{"net": model.state_dict(), "optim": osd}]}, "iteration": 5},
        tmp_path / "x.pth",
    )
    ck = open_checkpoint(tmp_path / "x.pth")
    assert ck.optimizer == "AdamW" and ck.step == 5 and ck.name_mapping == "model-order"
    ts = list(ck.tensors())
    assert all(t.amsgrad and t.max_exp_avg_sq is not None and t.step == 5 for t in ts)
    _assert_same_stats(summarize_checkpoint(tmp_path / "x.pth"), _live(model, opt))


def test_bare_optimizer_file_with_and_without_model_beside(tmp_path):
    torch.manual_seed(2)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _train(model, opt)
    alone = tmp_path / "alone"
    alone.mkdir()
    torch.save(opt.state_dict(), alone / "optimizer_5.pt")
    ck = open_checkpoint(alone / "optimizer_5.pt")
    assert ck.name_mapping == "none" and ck.step == 5
    s = summarize_checkpoint(alone / "optimizer_5.pt")
    assert [t.label for t in s.tensors][:2] == ["group 0 / index 0", "group 0 / index 1"]
    paired = tmp_path / "paired"
    paired.mkdir()
    torch.save(opt.state_dict(), paired / "optimizer_5.pt")
    torch.save(model.state_dict(), paired / "model_5.pt")
    s = summarize_checkpoint(paired / "optimizer_5.pt")
    assert s.name_mapping == "model-order"
    assert _assert_same_stats(s, _live(model, opt)) == len(s.tensors)
    assert find_checkpoints(paired) == [paired / "optimizer_5.pt"]  # the model file is no optimizer checkpoint


@pytest.mark.parametrize("named", [True, False])
def test_two_groups_names_are_right(tmp_path, named):
    torch.manual_seed(3)
    model = Net()
    opt = torch.optim.AdamW(_two_groups(model, named=named), lr=1e-2)
    _train(model, opt)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "c.pt")
    s = summarize_checkpoint(tmp_path / "c.pt")
    assert s.name_mapping == ("param_names" if named else "model-order")
    # group 0 holds the matrices, group 1 the vectors: optimizer order is not model order.
    assert [t.name for t in s.tensors] == [n for n, p in model.named_parameters() if p.ndim >= 2] + [
        n for n, p in model.named_parameters() if p.ndim < 2
    ]
    assert {t.group for t in s.tensors if t.name.endswith("bias")} == {1}
    assert _assert_same_stats(s, _live(model, opt)) == len(s.tensors)


def test_ambiguous_groups_leave_names_out_rather_than_guess(tmp_path):
    """norm.weight in the decay group, norm.bias not: fc1.bias, norm.weight, norm.bias all have shape
    (16,) and could be interleaved several ways — those three must stay unnamed."""
    torch.manual_seed(4)
    model = Net()
    opt = torch.optim.AdamW(_two_groups(model, named=False, decay_1d=("norm.weight",)), lr=1e-2)
    _train(model, opt)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "c.pt")
    s = summarize_checkpoint(tmp_path / "c.pt")
    assert s.name_mapping == "partial"
    assert any("without a certain name" in w for w in s.warnings)
    unnamed = [t for t in s.tensors if t.name is None]
    assert len(unnamed) == 3 and all(t.shape == [16] for t in unnamed)
    assert unnamed[0].label.startswith("group ")
    assert _assert_same_stats(s, _live(model, opt), named_only=True) == len(s.tensors) - 3  # the rest: right


def test_tied_weights_and_batchnorm_buffers(tmp_path):
    torch.manual_seed(5)
    model = Net(tied=True, bn=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, opt)
    sd = model.state_dict()
    assert "head.weight" in sd and "norm.running_mean" in sd  # two names for one tensor; buffers
    torch.save({"model": sd, "optimizer": opt.state_dict()}, tmp_path / "c.pt")
    s = summarize_checkpoint(tmp_path / "c.pt")
    assert s.name_mapping == "model-order"
    assert [t.name for t in s.tensors] == [n for n, _ in model.named_parameters()]
    assert "head.weight" not in [t.name for t in s.tensors]
    _assert_same_stats(s, _live(model, opt))


def test_frozen_parameters_and_stateless_slots(tmp_path):
    torch.manual_seed(6)
    model = Net()
    model.fc1.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad] + [nn.Parameter(torch.zeros(3))])
    _train(model, opt)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "c.pt")
    s = summarize_checkpoint(tmp_path / "c.pt")
    # The extra parameter is not in the model: no name may be trusted from shapes alone... but it
    # never got a gradient (no state), so the others are still placed by shape and order.
    names = [t.name for t in s.tensors]
    assert "fc1.weight" not in names
    _assert_same_stats(s, _live(model, opt), named_only=True)


def test_bf16_and_fused_state(tmp_path):
    torch.manual_seed(7)
    model = Net().to(torch.bfloat16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g).to(torch.bfloat16)
        opt.step()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "c.pt")
    ck = open_checkpoint(tmp_path / "c.pt")
    t0 = next(ck.tensors())
    assert t0.exp_avg_sq.dtype == torch.bfloat16 and t0.step == 3
    _assert_same_stats(summarize_checkpoint(tmp_path / "c.pt"), _live(model, opt))


def test_legacy_non_zip_format(tmp_path):
    model = Net()
    opt = torch.optim.Adam(model.parameters())
    _train(model, opt, steps=2)
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict()},
        tmp_path / "old.pt",
        _use_new_zipfile_serialization=False,
    )
    s = summarize_checkpoint(tmp_path / "old.pt")
    assert s.step == 2 and s.name_mapping == "model-order"


def test_tf_convention_override(tmp_path):
    model = Net()
    opt = torch.optim.Adam(model.parameters(), eps=1e-3)
    _train(model, opt, steps=3)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "c.pt")
    s = summarize_checkpoint(tmp_path / "c.pt", convention="tf")
    assert s.convention == "tf"
    assert s.tensors[0].eps_effective == pytest.approx(1e-3 / math.sqrt(1 - 0.999**3))
    _assert_same_stats(s, _live(model, opt, "tf"))


# --- errors --------------------------------------------------------------------------------------
def _sgd_file(tmp_path):
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train(model, opt, steps=1)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "sgd.pt")
    return tmp_path / "sgd.pt"


def test_non_adam_states_are_named(tmp_path):
    with pytest.raises(InputError, match=r"not an Adam optimizer state: found SGD \(momentum_buffer\)"):
        open_checkpoint(_sgd_file(tmp_path))
    p = nn.Parameter(torch.randn(4, 3))
    opt = torch.optim.Adafactor([p])
    p.grad = torch.ones(4, 3)
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "af.pt")
    with pytest.raises(InputError, match=r"Adafactor \(row_var/col_var\)"):
        open_checkpoint(tmp_path / "af.pt")
    # HF-style Adafactor state written as a plain dict.
    torch.save(
        {
            "state": {0: {"step": 3, "exp_avg_sq_row": torch.ones(4), "exp_avg_sq_col": torch.ones(3)}},
            "param_groups": [{"params": [0], "lr": None}],
        },
        tmp_path / "hfaf.pt",
    )
    with pytest.raises(InputError, match=r"Adafactor \(exp_avg_sq_row/exp_avg_sq_col\)"):
        open_checkpoint(tmp_path / "hfaf.pt")
    # schedulefree's AdamWScheduleFree keeps Adam's v beside z, and no m: not an Adam state, named
    torch.save(
        {
            "state": {0: {"z": torch.ones(4, 3), "exp_avg_sq": torch.ones(4, 3)}},
            "param_groups": [{"params": [0], "lr": 1e-3, "betas": (0.9, 0.999), "k": 5, "weight_sum": 1.0}],
        },
        tmp_path / "sf.pt",
    )
    with pytest.raises(InputError, match=r"Schedule-Free AdamW/SGD \(z\)"):
        open_checkpoint(tmp_path / "sf.pt")
    torch.save(Net().state_dict(), tmp_path / "model_only.pt")
    with pytest.raises(InputError, match="no optimizer state"):
        open_checkpoint(tmp_path / "model_only.pt")
    with pytest.raises(InputError, match="no such file"):
        open_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(InputError, match="not a readable torch checkpoint"):
        open_checkpoint(tmp_path / "junk.pt")


def _pickle_needing_code(tmp_path):
    model = Net()
    opt = torch.optim.Adam(model.parameters())
    _train(model, opt, steps=2)
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "ratio": fractions.Fraction(1, 3)},
        tmp_path / "needs_code.pt",
    )
    return tmp_path / "needs_code.pt"


def test_untrusted_pickle_needs_opt_in(tmp_path, capfd):
    f = _pickle_needing_code(tmp_path)
    with pytest.raises(UntrustedCheckpointError, match="--trust-checkpoint") as ei:
        open_checkpoint(f)
    assert "fractions.Fraction" in str(ei.value)
    capfd.readouterr()
    ck = open_checkpoint(f, trust=True)
    assert ck.name_mapping == "model-order"
    assert "runs code from the file" in capfd.readouterr().err


# --- discovery -----------------------------------------------------------------------------------
def test_find_checkpoints_sorted_by_step_and_filtered(tmp_path):
    model = Net()
    opt = torch.optim.Adam(model.parameters())
    _train(model, opt, steps=1)
    for step in (10, 2, 100):
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / f"step_{step}.pt")
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    torch.save({"lr": 1.0}, tmp_path / "scheduler.pt")
    hf = tmp_path / "run" / "checkpoint-50"
    hf.mkdir(parents=True)
    torch.save(opt.state_dict(), hf / "optimizer.pt")
    torch.save({"x": 1}, hf / "rng_state.pth")
    (hf / "trainer_state.json").write_text(json.dumps({"global_step": 50}))
    found = find_checkpoints(tmp_path)
    assert [p.name for p in found] == ["step_2.pt", "step_10.pt", "checkpoint-50", "step_100.pt"]
    assert find_checkpoints(hf) == [hf]
    with pytest.raises(InputError):
        find_checkpoints(tmp_path / "nope")


def test_pages_released_tensors_still_readable(tmp_path):
    model = Net()
    opt = torch.optim.Adam(model.parameters())
    _train(model, opt, steps=3)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "c.pt")
    a = summarize_checkpoint(tmp_path / "c.pt")
    b = summarize_checkpoint(tmp_path / "c.pt")
    assert [t.to_dict() for t in a.tensors] == [t.to_dict() for t in b.tensors]


# --- name mapping (pure) -------------------------------------------------------------------------
def test_map_names_cases():
    c = [("a", (2, 3)), ("b", (3,)), ("c", (3,)), ("d", (4, 3)), ("e", (4,))]
    assert map_names([[(2, 3), (3,), (3,), (4, 3), (4,)]], c) == ([["a", "b", "c", "d", "e"]], "model-order")
    # two groups, interleaved in model order
    names, st = map_names([[(2, 3), (4, 3)], [(3,), (3,), (4,)]], c)
    assert st == "model-order" and names == [["a", "d"], ["b", "c", "e"]]
    # one (3,) in each group: either could be b or c
    names, st = map_names([[(2, 3), (3,), (4, 3)], [(3,), (4,)]], c)
    assert st == "partial" and names == [["a", None, "d"], [None, "e"]]
    # a buffer to skip makes equal shapes ambiguous
    names, st = map_names([[(2, 3), (3,), (4, 3), (4,)]], c)
    assert st == "partial" and names == [["a", None, "d", "e"]]
    assert map_names([[(9, 9)]], c)[1] == "unmatched"
    assert map_names([[(2, 3)] * 6], c)[1] == "unmatched"
    # unordered (safetensors): only shapes unique on both sides
    names, st = map_names([[(3,), (2, 3), (3,)]], c, ordered=False)
    assert st == "shape-unique" and names == [[None, "a", None]]
    # too many states to search: nothing is named
    assert map_names([[(3,)] * 2, [(3,)] * 2], [("x", (3,))] * 6, max_states=5)[1] == "ambiguous"


# --- CLI -----------------------------------------------------------------------------------------
@pytest.fixture()
def run_ckpts(tmp_path):
    torch.manual_seed(8)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, eps=1e-8)
    _train(model, opt, steps=20)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 20}, tmp_path / "step_20.pt")
    _train(model, opt, steps=30, seed=1, dead=("fc2.weight", "fc2.bias"))
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 50}, tmp_path / "step_50.pt")
    return tmp_path / "step_20.pt", tmp_path / "step_50.pt"


runner = CliRunner()


def test_cli_inspect_text_json_csv(run_ckpts):
    a, b = run_ckpts
    res = runner.invoke(app, ["inspect", str(b)])
    assert res.exit_code == 0, res.output
    assert "fc2.weight" in res.stdout and "names: model-order" in res.stdout
    res = runner.invoke(app, ["inspect", str(a), str(b), "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["schema"] == "adamdiag.inspect/1"
    assert [c["step"] for c in data["checkpoints"]] == [20, 50]
    t = data["checkpoints"][1]["tensors"][0]
    for key in (
        "name",
        "index",
        "shape",
        "numel",
        "group",
        "lr",
        "beta1",
        "beta2",
        "eps",
        "weight_decay",
        "v_mean",
        "v_max",
        "m_abs_mean",
        "sqrt_vhat_q",
        "frac_sqrt_vhat_below_eps",
        "update_rms",
        "update_max",
    ):
        assert key in t, key
    assert set(t["sqrt_vhat_q"]) == {"min", "p01", "p50", "p99", "max"}
    assert "NaN" not in res.stdout and "Infinity" not in res.stdout
    (pair,) = data["pairs"]
    by = {r["name"]: r for r in pair["tensors"]}
    # fc2 got no gradient for 30 steps: pure decay; the others kept learning.
    assert by["fc2.weight"]["frac_pure_decay"] == 1.0
    assert by["fc2.weight"]["ratio_q"]["p50"] == pytest.approx(1.0, abs=1e-4)
    assert by["fc1.weight"]["frac_pure_decay"] < 0.5
    res = runner.invoke(app, ["inspect", str(a), str(b), "-f", "csv"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("path,checkpoint_step,tensor,name,group,index")
    assert len(lines) == 1 + 2 * 10
    col = lines[0].split(",").index("frac_pure_decay")
    assert any(",fc2.weight," in ln and ln.split(",")[col] == "1.0" for ln in lines)
    res = runner.invoke(app, ["inspect", str(a), str(b)])
    assert "decay ratio" in res.stdout


def test_cli_text_sorted_by_risk(run_ckpts):
    _, b = run_ckpts
    s = summarize_checkpoint(b)
    worst = sorted(s.tensors, key=lambda t: t.risk_key)[0]
    res = runner.invoke(app, ["inspect", str(b)])
    rows = [
        ln.split()[0] for ln in res.stdout.splitlines() if ln.strip() and ln.split()[0] in {t.name for t in s.tensors}
    ]
    assert rows[0] == worst.name


def test_cli_errors_exit_2_one_line(tmp_path):
    res = runner.invoke(app, ["inspect", str(_sgd_file(tmp_path))])
    assert res.exit_code == 2
    assert "SGD (momentum_buffer)" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = runner.invoke(app, ["inspect", str(tmp_path / "missing.pt")])
    assert res.exit_code == 2 and "no such file" in res.stderr
    f = _pickle_needing_code(tmp_path)
    res = runner.invoke(app, ["inspect", str(f)])
    assert res.exit_code == 2 and "--trust-checkpoint" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = runner.invoke(app, ["inspect", str(f), "--trust-checkpoint", "-f", "json"])
    assert res.exit_code == 0
    assert "runs code from the file" in res.stderr
    assert json.loads(res.stdout)["checkpoints"][0]["name_mapping"] == "model-order"
