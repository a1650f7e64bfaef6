"""Live findings on real training runs: a v collapse is flagged before its blowup, with scan's rule."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from monitor_loops import mlp, regression_data, runlab, train, vcollapse_run

from adamdiag.analysis.evidence import Trajectory, collapse_stretch
from adamdiag.monitor import LIVE_FILE, LIVE_SCHEMA, AdamDiagAlarm, AdamMonitor


def test_collapse_flagged_before_blowup_with_scans_rule(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="adamdiag.monitor")
    # every=1 up to just past the warning: the warning point is scan's, on the same trajectory
    mon1, _, hist, _ = vcollapse_run(every=1, steps=300)
    glob1 = [f for f in mon1.findings if f.id == "AD101" and f.tensor is None and f.severity == "warning"]
    assert glob1 and glob1[0].severity == "warning"
    steps = np.array([h["step"] for h in hist])
    g2 = np.array([h["g2_mean"] for h in hist])
    vhat = np.array([h["vhat_mean"] for h in hist])
    r = np.array([h["r"] for h in hist])
    tr = Trajectory("global", steps, g2, vhat, r, exact=True, eps=1e-8, beta2=0.999)
    first, warn, _median = collapse_stretch(tr, None, 0.999)  # scan's median spans the whole stretch
    assert glob1[0].step == warn and f"from step {first} " in glob1[0].message
    # a collapse in progress is a warning, not a verdict: scan calls a run that has not blown up (yet)
    # healthy, with the same AD101 warning (the validation's "early" runs)
    assert mon1.verdict == "healthy" and mon1.warning_step == warn
    # every=10 through the blowup (step 662): flagged hundreds of steps before it, ≤ every-1 warning + 10
    mon, losses, _, lab = vcollapse_run(every=10)
    blowup = lab.detect_blowup(losses)
    assert blowup == 662  # the recipe of sample_logs/vcollapse
    glob = [f for f in mon.findings if f.id == "AD101" and f.tensor is None and f.severity == "warning"]
    assert glob and glob[0].step <= glob1[0].step + 10
    assert glob[0].step < blowup - 300
    assert mon.warning_step == glob[0].step
    # the loss was fed every step: scan's detector finds the blowup (AD001) at 662 and the collapse that
    # warned about it turns the verdict into v_collapse
    a001 = [f for f in mon.findings if f.id == "AD001"]
    assert a001 and a001[0].step == 662 and "blew up at step 662" in a001[0].message
    assert mon.verdict == "v_collapse" and mon.blowup_step == 662
    assert "from step" in glob[0].message and "eps does not bound the step" in glob[0].message
    # one log line per finding, on the adamdiag.monitor logger
    assert any("AD101" in rec.getMessage() for rec in caplog.records if rec.name == "adamdiag.monitor")


def test_collapse_bounded_by_eps_stays_healthy() -> None:
    """sample_logs/stable_eps1e-3 (the vcollapse recipe with eps 1e-3): v collapses, but eps bounds the
    step — scan calls it healthy with an AD101 info; so does the monitor (tensor warnings aside)."""
    mon, *_ = vcollapse_run(every=10, steps=300, recipe="stable_eps1e-3")
    glob = [f for f in mon.findings if f.id == "AD101" and f.tensor is None and "rule" not in f.evidence]
    assert glob and glob[0].severity == "info" and "eps bounds the step" in glob[0].message
    assert mon.verdict == "healthy" and mon.warning_step is None
    assert not [f for f in mon.findings if f.severity == "error"]


def test_stale_v_blowup_reads_as_scan_reads_it(tmp_path) -> None:
    """A blowup after a quiet stretch that never got deep (the matrix's mlp_tiny_hot design: lr 0.3
    with warm-up, blowup at step 84): scan calls it v_collapse (rule stale_v) with a warning step in
    early training — evidence it can only call that in hindsight. The monitor (every=1, the same per-step
    data as scan's log) gives no live AD101 for it, and at the blowup (the fed loss) its verdict and
    warning step are scan's."""
    from torch.utils.tensorboard import SummaryWriter

    from adamdiag.pipeline.scan import scan_paths

    lab = runlab()
    cfg = lab.RunConfig(
        name="hot",
        family="mlp_multitask",
        size="tiny",
        steps=120,
        lr=0.3,
        lr_schedule="linear_warmup",
        warmup_steps=150,
        seed=0,
        log_every=1,
        ckpt_every=0,
    )
    data = lab.build_data(cfg)
    model = lab.build_model(cfg)
    opt = lab.build_optimizer(cfg, model)
    mon = AdamMonitor(opt, model=model, every=1)  # no writer: scan reads the log only
    w = SummaryWriter(str(tmp_path))
    for t in range(1, cfg.steps + 1):
        for g in opt.param_groups:
            g["lr"] = lab.lr_at(cfg, t)
        opt.zero_grad(set_to_none=True)
        loss = lab.total_loss(cfg, model, lab.batch_for_step(cfg, t, data))
        loss.backward()
        gn = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None))
        lv = float(loss.detach())
        w.add_scalar("train/loss", lv, t)
        w.add_scalar("train/grad_norm", float(gn), t)
        opt.step()
        mon.log_loss(t, lv)
        if not np.isfinite(lv):
            break
    w.close()
    mon.close()
    rep = scan_paths([tmp_path]).runs[0]
    assert rep.verdict == "v_collapse" and rep.warning_step is not None and rep.blowup_step is not None
    assert rep.warning_step < rep.blowup_step - 20
    # no collapse in progress (not deep): no live AD101 — a stale v is evidence only once the loss blew up
    # (early training shows it on almost every run), and then the monitor reads it as scan does
    assert not [f for f in mon.findings if f.id == "AD101" and f.tensor is None]
    assert mon.blowup_step == rep.blowup_step
    assert mon.verdict == "v_collapse" and mon.warning_step == rep.warning_step


def _logged_run(tmp_path, mon_kw: dict, steps: int, scale, loss_at) -> tuple[AdamMonitor, object]:
    """Real Adam steps (β2 0.99) on one 1000-element parameter with gradients of a given scale per step;
    the gradient norm and the loss are logged every step and one checkpoint is taken at step 100 (what
    scan reads: the checkpoint tells it β2), the loss is fed to the monitor. Returns (monitor, scan's
    report of the run)."""
    from torch.utils.tensorboard import SummaryWriter

    from adamdiag.pipeline.scan import scan_paths

    gen = torch.Generator().manual_seed(3)
    p = torch.nn.Parameter(torch.zeros(1000))
    opt = torch.optim.Adam([p], lr=1e-3, betas=(0.9, 0.99))
    mon = AdamMonitor(opt, names=["w"], **mon_kw)
    w = SummaryWriter(str(tmp_path))
    for step in range(1, steps + 1):
        p.grad = torch.randn(1000, generator=gen) * scale(step)
        loss = loss_at(step) * (1 + 0.01 * float(torch.randn((), generator=gen)))
        w.add_scalar("train/loss", loss, step)
        w.add_scalar("train/grad_norm", float(p.grad.norm()), step)
        opt.step()
        mon.log_loss(step, loss)
        if step == 100:
            (tmp_path / "checkpoints").mkdir()
            ck = {"model": {"w": p.detach()}, "optimizer": opt.state_dict(), "step": step}
            torch.save(ck, tmp_path / "checkpoints" / "step_000100.pt")
    w.close()
    mon.close()
    return mon, scan_paths([tmp_path]).runs[0]


def test_shrunken_v_blowup_reads_as_scan_reads_it(tmp_path) -> None:
    """Gradients that shrink slowly (g² × 0.992 per step, slower than β2 = 0.99 forgets: r ≈ 0.2, never a
    quiet stretch) until v̂ is 100x below its peak (~step 780), then the loss blows up (step 1000): scan
    calls it v_collapse by its shrunken_v rule, warning at the first step v̂ was ≤ 1% of its peak. The
    monitor (every=5, its points a subset of scan's per-step ones) gives no live finding for it (a shrunken
    v̂ alone is no warning) and, at the blowup, scan's verdict and scan's warning step to the next point."""
    every = 5
    mon, rep = _logged_run(
        tmp_path, {"every": every}, 1010, lambda s: 0.992 ** (s / 2), lambda s: 1e3 if s >= 1000 else 1.0
    )
    assert rep.verdict == "v_collapse" and rep.blowup_step == 1000 and rep.warning_step is not None
    # scan's shrunken_v finding (no quiet stretch: a fall of v̂)
    assert [f.evidence.get("sqrt_vhat_fall") is not None for f in rep.findings if f.id == "AD101"] == [True]
    assert 700 < rep.warning_step < 900
    assert not [f for f in mon.findings if f.id == "AD101" and f.tensor is None]  # hindsight evidence only
    assert mon.verdict == "v_collapse" and mon.blowup_step == 1000
    assert mon.warning_step is not None and rep.warning_step <= mon.warning_step < rep.warning_step + every


def test_healthy_noisy_run_has_no_alarm() -> None:
    """Mini-batch regression with label noise: r stays O(1), no error finding, no AD101, verdict healthy."""
    x, y = regression_data(seed=2, n=512)
    y = y + 0.3 * torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
    model = mlp(seed=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    mon = AdamMonitor(opt, model=model, every=5)
    train(model, opt, 800, data=(x, y), batch=32)
    assert mon.verdict == "healthy"
    assert not [f for f in mon.findings if f.severity == "error" or f.id == "AD101"]
    assert 0.2 < mon.last["global"]["r"] < 5


def test_regrowth_is_an_error_only_just_before_a_blowup() -> None:
    """AD102 as scan reports it: r far above 1 in the REGROWTH_WINDOW steps before the blowup. Two
    re-growths of the gradients after v collapsed (AD101 at 110; steps 200 and 380); the loss, fed,
    blows up at 385:
    only the second one is AD102 (an error), and only once the blowup is seen — the first, with no
    blowup after it, is no alarm (a small tensor's r under mini-batch noise jumps like that too)."""
    gen = torch.Generator().manual_seed(11)
    p = torch.nn.Parameter(torch.zeros(1000))
    opt = torch.optim.Adam([p], lr=1e-3, betas=(0.9, 0.95))  # a short memory: v collapses by step 110
    mon = AdamMonitor(opt, names=["w"], every=10)
    for step in range(1, 421):
        scale = 1e-2 if step <= 20 else 1.0 if step in (200, 380) else 1e-6
        p.grad = torch.randn(1000, generator=gen) * scale
        opt.step()
        noise = 0.01 * float(torch.randn((), generator=gen))
        mon.log_loss(step, (1e3 if step >= 385 else 1.0) * (1 + noise))
        if step == 384:
            assert [f for f in mon.findings if f.id == "AD101" and f.step is not None and f.step < 200]
            assert not [f for f in mon.findings if f.id == "AD102" or f.severity == "error"]
    ad001 = [f for f in mon.findings if f.id == "AD001"]
    assert ad001 and ad001[0].step == 385, mon.findings
    ad102 = [f for f in mon.findings if f.id == "AD102"]
    assert ad102 and {f.step for f in ad102} == {380} and all(f.severity == "error" for f in ad102)
    assert {f.tensor for f in ad102} == {None, "w"}  # all parameters and the tensor, as scan lists them
    mon.close()


def test_nonfinite_raise_on_callback_and_live_file(tmp_path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    seen = []
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    writer = SummaryWriter(str(tmp_path))
    mon = AdamMonitor(opt, model=model, writer=writer, every=2, on_finding=seen.append, raise_on="error")
    train(model, opt, 6)
    live = json.loads((tmp_path / LIVE_FILE).read_text()) if (tmp_path / LIVE_FILE).exists() else None
    model[0].weight.register_hook(lambda g: g * float("nan"))  # a NaN gradient from step 7 on
    with pytest.raises(AdamDiagAlarm) as exc:
        train(model, opt, 2)
    assert exc.value.finding.id == "AD401" and "0.weight" in exc.value.finding.message
    assert [f.id for f in seen] == ["AD401"]
    doc = json.loads((tmp_path / LIVE_FILE).read_text())
    assert doc["schema"] == LIVE_SCHEMA
    run = doc["runs"][0]
    assert run["verdict"] == "nonfinite" and run["step"] == 8 and run["findings"][0]["id"] == "AD401"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # written via tmp + os.replace
    assert live is None or live["runs"][0]["verdict"] == "healthy"
    # NaN/Infinity never appear as JSON literals (report/1 rule)
    json.loads((tmp_path / LIVE_FILE).read_text(), parse_constant=lambda c: pytest.fail(f"JSON literal {c}"))
    mon.close()
    writer.close()


def test_log_loss_nonfinite() -> None:
    model = mlp()
    opt = torch.optim.Adam(model.parameters())
    mon = AdamMonitor(opt, model=model)
    mon.log_loss(5, 1.0)
    mon.log_loss(6, float("inf"))
    mon.log_loss(7, float("nan"))
    assert [(f.id, f.step) for f in mon.findings] == [("AD401", 6)]
    assert mon.verdict == "nonfinite" and mon.blowup_step == 6


def test_tags_topk_all_and_several_optimizers(tmp_path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from adamdiag.io.events import read_file

    m1, m2 = mlp(seed=0), mlp(seed=1)
    o1 = torch.optim.Adam(m1.parameters())
    o2 = torch.optim.AdamW(m2.parameters())
    names = {**{f"a.{n}": p for n, p in m1.named_parameters()}, **{f"b.{n}": p for n, p in m2.named_parameters()}}
    w = SummaryWriter(str(tmp_path))
    mon = AdamMonitor([o1, o2], writer=w, names=names, every=2, top_k=1, all_every=3)
    data = regression_data()
    for _ in range(6):
        for m, o in ((m1, o1), (m2, o2)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(data[0]), data[1]).backward()
            o.step()
    mon.close()
    w.close()
    assert {"0/global", "1/global", "0/a.0.weight", "1/b.2.bias"} <= set(mon.last)
    tags: dict[str, list[int]] = {}
    for f in tmp_path.glob("events.out.tfevents.*"):
        fd = read_file(f)
        for ti, st in zip(np.concatenate(fd.s_tag), np.concatenate(fd.s_step)):
            tags.setdefault(fd.tags[ti], []).append(int(st))
    sig = ("g2_mean", "vhat_mean", "r", "sqrt_vhat_p01", "sqrt_vhat_p50", "sqrt_vhat_p99")
    sig += ("frac_below_eps", "frac_below_10eps", "update_rms")
    for i in (0, 1):
        for s in sig:
            # the global tags also before the logging grid (step 1 < every: v̂'s peak, for scan's depth)
            assert sorted(tags[f"adamdiag/{i}/global/{s}"]) == [1, 2, 4, 6]
    # top-1 tensor at steps 2 and 4, all four tensors of each optimizer at the 3rd logging step (6)
    per_tensor = {t for t in tags if t.startswith("adamdiag/0/a.") and t.endswith("/r")}
    assert len(per_tensor) == 4
    assert all(6 in tags[t] for t in per_tensor)
    assert sum(len(tags[t]) for t in per_tensor) == 2 + 4


def test_tensorboardx_writer(tmp_path) -> None:
    tbx = pytest.importorskip("tensorboardX")
    from adamdiag.io.events import read_file

    model = mlp()
    opt = torch.optim.Adam(model.parameters())
    w = tbx.SummaryWriter(str(tmp_path))
    mon = AdamMonitor(opt, model=model, writer=w, every=2)
    train(model, opt, 4)
    mon.log_loss(5, float("nan"))  # a finding: the text summary goes through the same writer
    mon.close()
    w.close()
    (f,) = tmp_path.glob("events.out.tfevents.*")
    fd = read_file(f)
    assert "adamdiag/global/sqrt_vhat_p50" in fd.tags and "adamdiag/0.weight/update_rms" in fd.tags


def test_blowup_without_a_collapse_reads_as_scan_reads_it(tmp_path) -> None:
    """Gradients of a steady scale (r ≈ 1: v tracks them, no quiet stretch, no fall of v̂) and a loss that
    blows up at step 300: scan's rules call it lr_too_high, and so does the monitor once the fed loss
    blows up — its verdict is scan's decision on its own evidence, never 'healthy' after a blowup."""
    mon, rep = _logged_run(tmp_path, {"every": 5}, 310, lambda s: 1.0, lambda s: 1e3 if s >= 300 else 1.0)
    assert rep.verdict == "lr_too_high" and rep.blowup_step == 300
    assert mon.blowup_step == 300 and mon.verdict == "lr_too_high"
    assert mon.warning_step is None  # no v-collapse evidence: nothing to have warned about
    assert not [f for f in mon.findings if f.id == "AD101"]


def test_a_blowup_in_the_last_steps_before_close_is_still_seen(tmp_path) -> None:
    """Training stops 4 steps after its loss began to blow up at 1001; the monitor's last loss check (every=10: steps 1, 11, ..., 1001) saw only a 3x rise:
    close() looks at the fed points since the last check, so the monitor still gives scan's AD001 and
    verdict for the blowup the log shows (the matrix's mlp_small_vc hist50 run ended like this)."""
    ramp = {1001: 3.0, 1002: 6.0, 1003: 20.0, 1004: 60.0, 1005: 200.0}  # 10x only after the check at 1001
    mon, rep = _logged_run(tmp_path, {"every": 10}, 1005, lambda s: 1.0, lambda s: ramp.get(s, 1.0))
    assert rep.blowup_step == 1001 and rep.verdict == "lr_too_high"
    assert mon.blowup_step == rep.blowup_step and mon.verdict == rep.verdict
    assert [f.step for f in mon.findings if f.id == "AD001"] == [1001]


@pytest.mark.parametrize(
    ("scale", "verdict"),
    [
        (lambda s: 100.0 if s == 300 else 1.0, "bad_batch"),  # one batch: back down at the next step
        # the gradients stay up and keep rising: scan reads the largest point near the event (301), which
        # is no jump over its previous one
        (lambda s: 1.0 if s < 300 else 100.0 if s == 300 else 300.0, "lr_too_high"),
    ],
)
def test_gradient_jump_at_the_blowup_reads_as_scan_reads_it(tmp_path, scale, verdict) -> None:
    """A 100x gradient jump at the step the loss blows up. Gone at the next step: scan (from the logged
    gradient norm) calls it bad_batch, and so does the monitor from its own per-step gradient-norm
    estimate (a strided sample, no logged norm needed), with scan's AD301 and warning step — after
    waiting one step to see whether the jump is gone (the fed loss shows the blowup at the jump's own
    step). Staying up: neither calls it a bad batch."""
    mon, rep = _logged_run(tmp_path, {"every": 10}, 310, scale, lambda s: 1e3 if s >= 300 else 1.0)
    assert rep.verdict == verdict and rep.blowup_step == 300
    assert mon.verdict == rep.verdict and mon.blowup_step == 300
    mine = [f for f in mon.findings if f.id == "AD301"]
    scans = [f for f in rep.findings if f.id == "AD301"]
    assert len(mine) == len(scans) == (verdict == "bad_batch")
    if verdict == "bad_batch":
        assert rep.warning_step == mon.warning_step == mine[0].step == scans[0].step == 300
        assert mine[0].severity == scans[0].severity == "error" and "back down" in mine[0].message
        # the estimate is within sampling noise of the exact norm scan read (~√1000·100)
        assert mine[0].evidence["grad_norm"] == pytest.approx(scans[0].evidence["grad_norm"], rel=0.3)
    else:
        assert mon.warning_step is None


def test_spike_cycles_blowup_reads_as_scan_reads_it(tmp_path) -> None:
    """Real Adam steps (β2 0.999) on one 1000-element parameter: large gradients for 100 steps, then bursts of them
    (20 steps every 150) over small ones, the loss spiking and recovering at each burst and blowing up at 1300,
    the lr constant and logged. No quiet stretch lasts 0.2 of v's memory (200 steps), v̂ never falls 100x: scan
    calls it v_collapse by its spike_cycles rule, warning at the first recovered spike of the window. The
    monitor, with the optimizer's own lr at its observed steps, decides the same (before: lr_too_high)."""
    from torch.utils.tensorboard import SummaryWriter

    from adamdiag.pipeline.scan import scan_paths

    gen = torch.Generator().manual_seed(3)
    p = torch.nn.Parameter(torch.zeros(1000))
    opt = torch.optim.Adam([p], lr=1e-3)
    mon = AdamMonitor(opt, names=["w"], every=5)
    w = SummaryWriter(str(tmp_path))

    def burst(s: int) -> bool:
        return s <= 100 or (s > 200 and (s - 200) % 150 < 20)

    for s in range(1, 1331):
        p.grad = torch.randn(1000, generator=gen) * (1.0 if burst(s) else 0.02)
        level = 100.0 if s >= 1300 else (5.0 if s > 200 and (s - 200) % 150 in (1, 2) else 1.0)
        loss = level * (1 + 0.01 * float(torch.randn((), generator=gen)))
        w.add_scalar("train/loss", loss, s)
        w.add_scalar("train/grad_norm", float(p.grad.norm()), s)
        w.add_scalar("train/lr", 1e-3, s)
        opt.step()
        mon.log_loss(s, loss)
    w.close()
    mon.close()
    rep = scan_paths([tmp_path]).runs[0]
    assert (rep.verdict, rep.confidence, rep.alternative, rep.blowup_step) == (
        "v_collapse",
        "medium",
        "lr_too_high",
        1300,
    )
    (ad101,) = [f for f in rep.findings if f.id == "AD101"]
    assert len(ad101.evidence["spikes"]) >= 2 and ad101.evidence["lr_rose"] is False
    assert rep.warning_step == ad101.evidence["spikes"][0]
    assert mon.verdict == "v_collapse" and mon.blowup_step == 1300 and mon.warning_step == rep.warning_step
