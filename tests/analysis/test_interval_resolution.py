"""The implied g²/v̂ of the decay-ratio view cancels (v_b ≈ β2^Δ·v_a): its resolution is stated in
terms of the operands (analysis.moments.interval_g2) and a value under it is printed "< X" (text),
flagged ``r_interval_below_resolution`` (JSON). Issue 13 item 6.

Real runs of ``torch.optim.Adam``: after some training the gradients are set to exactly zero for Δ
steps (pure decay: the true ḡ² is 0), or kept small but real (ḡ² ≈ 1e-3·v̂: a collapse in progress)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from adamdiag.analysis.moments import beta_rounding, interval_g2
from adamdiag.cli import app

runner = CliRunner()


def _pair(tmp: Path, *, dtype: torch.dtype, grad_scale: float, delta: int = 100) -> tuple[Path, Path]:
    """Checkpoints at step 50 and 50+Δ of a real Adam; between them the gradient is scaled by
    ``grad_scale`` (0: none at all)."""
    torch.manual_seed(0)
    model = nn.Linear(64, 64).to(dtype)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))

    def step(scale: float) -> None:
        model(torch.randn(32, 64, dtype=dtype)).pow(2).mean().backward()
        for p in model.parameters():
            p.grad.mul_(scale)
        opt.step()
        opt.zero_grad()

    for _ in range(50):
        step(1.0)
    a = tmp / "a.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, a)
    for _ in range(delta):
        step(grad_scale)
    b = tmp / "b.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, b)
    return a, b


def _rows(a: Path, b: Path) -> list[dict]:
    res = runner.invoke(app, ["inspect", str(a), str(b), "--format", "json"])
    assert res.exit_code == 0, res.output
    (pair,) = json.loads(res.stdout)["pairs"]
    return pair["tensors"]


def test_pure_decay_in_float32_is_below_resolution_and_the_bound_holds(tmp_path):
    a, b = _pair(tmp_path, dtype=torch.float32, grad_scale=0.0)
    rows = _rows(a, b)
    for r in rows:
        # the truth is 0; float32 arithmetic leaves rounding (the test needs some to mean something)
        assert r["mean_g2_implied"] != 0.0
        assert r["r_interval_below_resolution"] is True
        assert abs(r["r_interval"] - 0.0) <= r["r_interval_resolution"], r  # the stated tolerance holds
        assert r["r_interval_resolution"] < 1e-3  # ... and is not vacuous (a collapse is r < 0.1)
    res = runner.invoke(app, ["inspect", str(a), str(b)])
    assert res.exit_code == 0 and f"< {rows[0]['r_interval_resolution']:.2g}" in res.stdout


def test_a_real_small_gradient_is_resolved(tmp_path):
    a, b = _pair(tmp_path, dtype=torch.float32, grad_scale=0.03)  # g² ≈ 1e-3 of the earlier g²
    for r in _rows(a, b):
        assert r["r_interval_below_resolution"] is False
        assert r["r_interval"] > 10 * r["r_interval_resolution"], r
    res = runner.invoke(app, ["inspect", str(a), str(b)])
    assert res.exit_code == 0 and "< " not in res.stdout.split("implied g²/v̂", 1)[1]


def test_float64_state_resolves_far_smaller_values(tmp_path):
    a, b = _pair(tmp_path, dtype=torch.float64, grad_scale=0.0)
    for r in _rows(a, b):
        assert r["r_interval_resolution"] < 1e-11
        assert abs(r["r_interval"]) <= r["r_interval_resolution"]


@pytest.mark.parametrize(
    "dtype,beta2,want", [("float32", 0.999, 1.2874603271484375e-08 / 0.999), ("float64", 0.999, 0.0)]
)
def test_beta_rounding(dtype, beta2, want):
    assert beta_rounding(beta2, dtype) == pytest.approx(want, rel=1e-6, abs=1e-20)


def test_interval_g2_operands():
    """δ(A−B) = (u + n·2⁻⁵³)(A+B) + Δ(e_β+u)·B, divided by (1−β2^Δ) and by v̂_a (here v̂_a = mean v_a)."""
    u, eb = 2.0**-24, beta_rounding(0.9, "float32")
    out = interval_g2(1.0, 0.9**2, 0.9, 2, 10**9, "float32", n=4)
    tol = (u + 4 * 2.0**-53) * (0.81 + 0.81) + 2 * (eb + u) * 0.81
    assert out["mean_g2_implied"] == pytest.approx(0.0, abs=1e-15)
    assert out["mean_g2_resolution"] == pytest.approx(tol / (1 - 0.81), rel=1e-12)
    assert out["r_interval_below_resolution"] is True
    assert interval_g2(1.0, 2.0, 0.9, 2, 10**9)["r_interval_below_resolution"] is False


def test_scan_says_below_resolution_as_inspect_does():
    """scan's AD105 uses the same implied g²/v̂ and resolution as inspect's pair view: on the shipped
    v-collapse run every pair is below it, so the message says "< X", never a number rounding made."""
    from pathlib import Path

    from adamdiag.pipeline.scan import scan_paths

    run = Path(__file__).resolve().parents[2] / "sample_logs" / "vcollapse"
    rep = scan_paths([run]).runs[0]
    (f,) = [f for f in rep.findings if f.id == "AD105"]
    last = f.evidence["tensors"][0]["intervals"][-1]
    assert last["r_interval_below_resolution"] is True
    assert f"(implied g²/v̂ < {last['r_interval_resolution']:.2g})" in f.message
