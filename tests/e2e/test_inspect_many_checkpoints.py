"""`inspect DIR` on a folder of many checkpoints summarises (review F15, item 5): one line per checkpoint
and the last one (and its decay-ratio pair) in full; `--all` prints every one; JSON and CSV keep
everything (adamdiag.inspect/1). One or two checkpoints print in full as before. The run is a tiny real
torch.optim.Adam loop saved with torch.save (tests/realruns.py), eps 1e-3 so that some √v̂ fall under it."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from realruns import train_tiny
from typer.testing import CliRunner

from adamdiag.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("many") / "run"
    train_tiny(out, steps=200, ckpt_every=40, eps=1e-3)
    return out / "checkpoints"


def inspect(*args: object) -> str:
    res = runner.invoke(app, ["inspect", *map(str, args)])
    assert res.exit_code == 0, res.output
    return res.stdout


def full_headers(text: str) -> list[str]:
    """The header line of each checkpoint printed in full ("PATH  step N  Adam (...)  names: ...")."""
    return [ln for ln in text.splitlines() if "  names: " in ln]


def test_a_folder_is_one_line_per_checkpoint_and_the_last_in_full(ckpts):
    text = inspect(ckpts)
    assert text.splitlines()[0].startswith(f"5 checkpoints under {ckpts}/: Adam (torch, torch convention)")
    for step in (40, 80, 120, 160, 200):
        assert re.search(rf"^step_{step:06d}\.pt +{step} +4 ", text, re.M), step  # 4 tensors
    assert [h.split()[0] for h in full_headers(text)] == [str(ckpts / "step_000200.pt")]
    assert text.count("decay ratio v_b/(β2^Δ·v_a)") == 1 and "step 160 → 200" in text
    assert len(text.splitlines()) < 40


def test_the_summary_line_says_what_the_json_holds(ckpts):
    data = json.loads(inspect(ckpts, "--format", "json"))
    assert data["schema"] == "adamdiag.inspect/1"
    assert len(data["checkpoints"]) == 5 and len(data["pairs"]) == 4  # JSON keeps everything
    text = inspect(ckpts)
    pair_into = {p["to_step"]: p for p in data["pairs"]}
    for c in data["checkpoints"]:
        ts = c["tensors"]
        n = sum(t["numel"] for t in ts)
        below = sum(t["frac_sqrt_vhat_below_eps"] * t["numel"] for t in ts) / n
        below10 = sum(t["frac_sqrt_vhat_below_10eps"] * t["numel"] for t in ts) / n
        (line,) = [ln for ln in text.splitlines() if ln.startswith(Path(c["path"]).name)]
        cells = line.split()
        assert cells[4] == f"{below:.1%}", (line, below)  # √v̂<eps over all elements, element-weighted
        assert cells[5] == f"{below10:.1%}", (line, below10)
        assert float(cells[3]) == pytest.approx(min(t["sqrt_vhat_q"]["p01"] for t in ts), rel=5e-3)
        assert float(cells[7]) == pytest.approx(max(t["update_rms"] for t in ts), rel=5e-3)
        p = pair_into.get(c["step"])
        if p is None:
            assert cells[9] == "-"
        else:
            rows = [(t["frac_pure_decay"], t["n_used"]) for t in p["tensors"] if math.isfinite(t["frac_pure_decay"])]
            pure = sum(f * k for f, k in rows) / sum(k for _, k in rows)
            assert cells[9] == f"{pure:.1%}"
    assert any(0 < float(ln.split()[5].rstrip("%")) < 100 for ln in text.splitlines()[3:8])  # not a trivial 0%


def test_all_prints_every_checkpoint_and_pair(ckpts):
    text = inspect(ckpts, "--all")
    assert len(full_headers(text)) == 5 and text.count("decay ratio v_b/(β2^Δ·v_a)") == 4
    assert "one line each" not in text


def test_two_checkpoints_print_in_full_as_before(ckpts):
    text = inspect(ckpts / "step_000160.pt", ckpts / "step_000200.pt")
    assert len(full_headers(text)) == 2 and text.count("decay ratio") == 1 and "one line each" not in text


def test_tensor_names_are_never_folded_in_the_full_block(tmp_path):
    # The 17-column tensor table is wider than the old fixed width when every number takes 8 characters
    # (an lr of 2.5e-08 at the end of a cosine cycle): rich shrank the one wrappable column, the name, and
    # printed "0.weigh" / "t" on two lines. Every short name is whole at the start of its row.
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=2.47e-8, betas=(0.9, 0.99))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(16, 8)).pow(2).mean().backward()
        opt.step()
    for st in opt.state.values():  # late in a run: a 4-digit step, small √v̂ (8-character numbers everywhere)
        st["step"].fill_(2000)
        st["exp_avg_sq"].mul_(1e-10)
        st["exp_avg"].mul_(1e-3)
    path = tmp_path / "ckpt_2000.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 2000}, path)
    data = json.loads(inspect(path, "--format", "json"))
    names = [t["label"] for t in data["checkpoints"][0]["tensors"]]
    assert "0.weight" in names
    text = inspect(path)
    rows = [ln.split()[0] for ln in text.splitlines() if re.match(r"^\S+ +\d+/\d+ ", ln)]
    assert sorted(rows) == sorted(names), text
