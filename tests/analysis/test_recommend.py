"""The recommendation's sizing on real checkpoints: the recommended eps dominates (√v̂ ≤ eps/3) at least
half of the collapsed tensor's live elements and the next smaller candidate does not; elements whose v is
exactly 0 (never received a gradient) never size it; lr_too_high recommends a decade, from the start
checkpoint's lr. Counted against the raw tensors in the file (float64), not against adamdiag's quantiles."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_verdict_rules import make

from adamdiag.analysis.recommend import live_frac_below, live_median, recommend
from adamdiag.analysis.thresholds import EPS_DOMINATION_MARGIN, LR_REDUCTION_STRONG, REPORT_EPS_CANDIDATES
from adamdiag.analysis.verdicts import Decision
from adamdiag.pipeline.summary import summarize_checkpoint

ROOT = Path(__file__).resolve().parents[2]
VC_CKPT = ROOT / "sample_logs" / "vcollapse" / "checkpoints" / "step_000600.pt"


def _sqrt_vhat(path: Path) -> dict[int, torch.Tensor]:
    """√v̂ per element of every parameter of a torch Adam checkpoint, float64, from the file itself."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    opt = sd["optimizer"] if "optimizer" in sd else sd
    beta2 = opt["param_groups"][0]["betas"][1]
    out = {}
    for i, st in opt["state"].items():
        v = st["exp_avg_sq"].double()
        out[int(i)] = (v / (1 - beta2 ** float(st["step"]))).sqrt().flatten()
    return out


def _live_fraction_at_most(x: torch.Tensor, bound: float) -> float:
    live = x[x > 0]
    return float((live <= bound).double().mean()) if live.numel() else math.nan


def _recommend_from(path: Path, names: list[str]) -> tuple[dict, object]:
    summary = summarize_checkpoint(path, trust=False, convention=None)
    ev = make(start=summary, checkpoints=[summary], eps=1e-8, lr=summary.tensors[0].lr)
    rec = recommend(ev, Decision("v_collapse", "quiet stretch", "high"), str(path.parents[1]), names)
    assert rec is not None
    return rec, summary


def test_recommended_eps_dominates_half_the_collapsed_elements_and_the_smaller_candidate_does_not():
    rec, summary = _recommend_from(VC_CKPT, [])
    t = min((t for t in summary.tensors if t.frac_v_zero < 1), key=live_median)  # what scan sizes it from
    exact = _sqrt_vhat(VC_CKPT)[int(t.index)]
    eps = rec["eps"]
    assert _live_fraction_at_most(exact, eps / EPS_DOMINATION_MARGIN) >= 0.5
    smaller = [c["eps"] for c in rec["candidates"] if c["eps"] < eps and c["eps"] > 1e-8]
    if smaller:  # the smallest that does it: the next one down does not
        assert _live_fraction_at_most(exact, max(smaller) / EPS_DOMINATION_MARGIN) < 0.5
    assert "dominated" in rec["message"] and f"→ {eps:g}" in rec["message"]
    # the interpolated quantile view agrees with the exact count on the side that decided
    assert live_frac_below(t, eps / EPS_DOMINATION_MARGIN) >= 0.5


def test_a_tensor_that_never_received_a_gradient_does_not_size_eps(tmp_path: Path):
    sd = torch.load(VC_CKPT, map_location="cpu", weights_only=True)
    opt = sd["optimizer"] if "optimizer" in sd else sd
    dead = max(opt["state"], key=lambda i: opt["state"][i]["exp_avg_sq"].numel())
    opt["state"][dead]["exp_avg_sq"].zero_()
    opt["state"][dead]["exp_avg"].zero_()
    path = tmp_path / "run" / "checkpoints" / "step_000600.pt"
    path.parent.mkdir(parents=True)
    torch.save(sd, path)
    rec, summary = _recommend_from(path, [])
    by_index = {int(t.index): t for t in summary.tensors}
    assert by_index[dead].frac_v_zero == 1.0
    assert f"`{by_index[dead].label}`" not in rec["message"]  # sized from a live tensor
    assert rec["eps"] > 1e-8 and rec["eps"] in {c["eps"] for c in rec["candidates"]}


def test_without_a_checkpoint_the_recommendation_is_the_middle_of_the_usual_range():
    ev = make()
    rec = recommend(ev, Decision("v_collapse", "quiet stretch", "high"), "run", [])
    assert rec is not None and rec["eps"] == 1e-2 and rec["eps"] in REPORT_EPS_CANDIDATES
    assert "no checkpoint before the blowup" in rec["message"]


def test_lr_too_high_recommends_a_decade_from_the_start_checkpoints_lr():
    from adamdiag.pipeline.scan import scan_paths

    rep = scan_paths([ROOT / "sample_logs" / "lr_too_high"]).runs[0]
    assert rep.verdict == "lr_too_high"
    rec = rep.recommendation
    start_lr = rec["current_lr"]
    assert start_lr == pytest.approx(0.05)  # the warm-up's lr at the start checkpoint (step 50), not the last one
    assert rec["lr"] == pytest.approx(start_lr / LR_REDUCTION_STRONG)
    assert "--lr 0.0167" in rec["verify"] and "--lr 0.005" in rec["verify"]  # lr/3 replayed too


def test_the_replay_plan_carries_the_checkpoint_before_the_start_with_its_own_verify_line():
    """--verify falls back to it when nothing avoids the blowup from the start (pipeline/verify.py)."""
    from adamdiag.pipeline.scan import scan_paths

    rep = scan_paths([ROOT / "sample_logs" / "vcollapse"]).runs[0]
    plan = rep.recommendation["replay"]
    e = plan["earlier"]
    assert plan["start_step"] == 600 and e["start_step"] == 500 and e["checkpoint"].endswith("step_000500.pt")
    assert e["eps"] == plan["eps"] and e["lr"] == pytest.approx([x * e["original"]["lr"] / 1e-2 for x in plan["lr"]])
    assert e["verify"].startswith("adamdiag replay ") and "step_000500.pt" in e["verify"]
    assert e["verify"].split("step_000500.pt")[1] == rep.recommendation["verify"].split("step_000600.pt")[1]


def test_a_warm_restart_between_the_start_and_the_blowup_quotes_the_cut_at_the_blowup():
    """The checkpoint before the blowup sits at the end of a cosine cycle (lr 5e-7); the restart blew up at
    lr 0.05. "lr 5e-8" alone is no number a user would set: the advice also quotes the cut where it blew up,
    and says the cut is of the whole schedule (the factor is in the report as lr_scale)."""
    from types import SimpleNamespace

    start = SimpleNamespace(step=4000, path="/runs/r/ckpt_4000.pt", tensors=[])
    ev = make(start=start, lr=5e-7, lr_at_event=0.05, lr_peak_after=0.05)
    rec = recommend(ev, Decision("lr_too_high", "diverged", "high"), "/runs/r", [])
    assert rec is not None
    assert rec["lr"] == pytest.approx(5e-8) and rec["lr_scale"] == pytest.approx(1 / LR_REDUCTION_STRONG)
    assert "rose 100,000x" in rec["message"] and "0.05 → 0.005 there" in rec["message"]
    assert "--lr 5e-08" in rec["verify"]
    # a warm-up 1.5x above the checkpoint is no restart: the message stays as it was
    calm = recommend(
        make(start=start, lr=0.05, lr_at_event=0.077), Decision("lr_too_high", "diverged", "high"), "/r", []
    )
    assert calm is not None and "rose" not in calm["message"]


def test_eps_advice_starts_from_the_collapsed_tensors_own_optimizer():
    """A GAN file: D (most elements) uses eps 1e-6, G 1e-8. G collapsed: the advice is from G's eps, and names
    G's optimizer — the run-level eps (the one most elements use) is D's."""
    from types import SimpleNamespace

    def tensor(name: str, key: str, eps: float, numel: int, med: float) -> SimpleNamespace:
        q = {"min": med / 10, "p01": med / 5, "p50": med, "p99": med * 5, "max": med * 10}
        return SimpleNamespace(
            name=name, group=0, index=0, numel=numel, eps=eps, eps_effective=eps, sqrt_vhat_q=q, frac_v_zero=0.0,
            frac_sqrt_vhat_below_10eps=0.0, optimizer={"index": 0 if key == "optimizerG" else 1, "key": key},
        )  # fmt: skip

    g = tensor("netG.0.weight", "optimizerG", 1e-8, 1000, 1e-6)
    d = tensor("netD.0.weight", "optimizerD", 1e-6, 5000, 1e-2)
    start = SimpleNamespace(step=400, path="/runs/gan/ckpt_400.pth", tensors=[g, d])
    ev = make(start=start, checkpoints=[start], eps=1e-6, lr=2e-4)
    rec = recommend(ev, Decision("v_collapse", "collapse", "high"), "/runs/gan", ["netG.0.weight"])
    assert rec is not None and rec["current_eps"] == 1e-8
    assert rec["message"].startswith("in optimizer `optimizerG`: eps 1e-08 → ")
