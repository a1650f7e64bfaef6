"""Validation of the live monitor on a subset of the validation matrix (issue 15, acceptance item 5).

Each run of the subset (the designs of ``bench/accuracy.py``'s ``matrix()``, seed group 0) is trained
*once* with :class:`adamdiag.monitor.AdamMonitor` attached (every=10, its tags in an event file of their
own in the run directory, its ``adamdiag-live.json`` beside them), then scanned twice with
:func:`adamdiag.pipeline.scan.scan_paths`:

* **with** the monitor's output (the run directory as written: scan reads the ``adamdiag/*`` tags as its
  most exact source, ``sources`` says ``monitor``, and the live file's findings join as ``live``);
* **without** it (a hard-linked copy of the run without the monitor's event file and live file: the run
  as it would have been written without the monitor — the monitor does not perturb training, tested
  bit for bit in tests/monitor/test_monitor_stats.py).

Checks, per run: the same verdict with and without the tags; on the runs the log-only scan calls
``v_collapse``, the monitor's first AD101 on all parameters (any severity: a collapse in progress is a
warning, the hindsight evidence of a stale or shrunken v an info) no later than that scan's
``warning_step`` + every; on runs whose truth is healthy, no monitor false alarm (an error-severity
finding, or a monitor verdict other than ``healthy``). Beside the check: the same count for the AD101
warning alone, per scan rule (deep_collapse / stale_v / shrunken_v), and over every run with a scan
warning step whatever its verdict (bad_batch and lr_too_high have warning steps of their own). Reports
the lead time of the monitor's first AD101 warning before the true blowup (runlab's live-state truth) on
the blown-up runs. A run that restarts from a checkpoint gets a new monitor (runlab builds a new
optimizer), which resumes from the live file the one before wrote: its findings are the run's.

    .venv/bin/python bench/monitor_validation.py            # ~14 runs, a few minutes on one core
    .venv/bin/python bench/monitor_validation.py --only mlp_tiny_vc_lr0.03_eps1e-08_s0

Writes bench/results/monitor_validation.json (the runs themselves go to a temporary directory unless
``--keep DIR``; ``--keep DIR --rescan`` scans kept runs again without training, e.g. after a rule change —
the monitor's own live findings are then those of its training). Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

SCHEMA = "adamdiag.bench.monitor_validation/1"
EVERY = 10
MONITOR_SUFFIX = ".adamdiag-monitor"  # the monitor's own event file: dropped for the scan without tags

# The subset: v-collapse designs and healthy ones over the three families, a few seeds and the shallow
# (β2 0.99/0.995) collapses; healthy runs with and without a collapse under way. Names as accuracy.py
# spells them for seed group 0.
SUBSET = (
    "mlp_tiny_vc_lr0.03_eps1e-08_s0",
    "mlp_tiny_vc_lr0.03_eps1e-08_s2_nockpt",
    "mlp_small_vc_lr0.01_eps1e-08_s1",
    "cnn_tiny_vc_lr0.01_eps1e-08_s0",
    "tfm_tiny_vc_lr0.003_eps1e-08_s0",
    "mlp_tiny_sh99_lr0.003_eps1e-08_s0",
    "mlp_tiny_sh995_lr0.01_eps1e-08_s0",
    "mlp_tiny_stable_lr0.03_eps0.01_s0",
    "mlp_tiny_stable_lr0.01_eps0.001_s0",
    "cnn_tiny_minibatch_lr0.001_eps1e-08_s0_bs16_hist20",
    "tfm_tiny_minibatch_lr0.001_eps1e-08_s0_bs16_log10",
    "mlp_tiny_sh99minibatch_lr0.01_eps1e-08_s0_bs16",
    "mlp_small_early_lr0.001_eps1e-08_s0",
    "cnn_tiny_early_lr0.001_eps1e-08_s0",
)


def cases(names: tuple[str, ...]) -> list[Any]:
    """The accuracy matrix's cases with these names, in this order, from any of its seed groups 0-80 (a
    missing name is an error: the subset must stay a subset of the matrix)."""
    import accuracy  # type: ignore[import-not-found]  # bench/accuracy.py, on sys.path above

    by_name = {c.name: c for c in accuracy.full_matrix(tuple(range(0, 90, 10)))}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise SystemExit(f"monitor_validation: not in the validation matrix: {', '.join(missing)}")
    return [by_name[n] for n in names]


def train_with_monitor(case: Any, run_dir: Path) -> dict[str, Any]:
    """Train ``case`` with runlab (its own loop, untouched) and an AdamMonitor on its optimizer: runlab
    builds the optimizer through ``runlab.build_optimizer``, which is wrapped for the run to attach the
    monitor (a SummaryWriter of its own in the run directory, ``run_dir`` for the live file). The loss
    the run logs (``train/loss`` at step t: the loss of update t) is fed to the monitor as the user's
    ``log_loss`` would: runlab's SummaryWriter is, for the run, a subclass that also hands it over."""
    import accuracy  # type: ignore[import-not-found]  # bench/accuracy.py, on sys.path above
    import torch.utils.tensorboard as tb

    from adamdiag.monitor import AdamMonitor

    runlab = accuracy._harness()
    monitors: list[tuple[Any, Any]] = []
    build = runlab.build_optimizer
    SummaryWriter = tb.SummaryWriter

    class LossTap(SummaryWriter):  # type: ignore[misc, valid-type]
        def add_scalar(self, tag: str, value: Any, global_step: Any = None, *args: Any, **kw: Any) -> None:
            super().add_scalar(tag, value, global_step, *args, **kw)
            if tag == "train/loss" and monitors and global_step is not None:
                monitors[-1][0].log_loss(int(global_step), float(value))

    def build_monitored(cfg: Any, model: Any) -> Any:
        opt = build(cfg, model)
        if monitors:  # a restart rebuilds the optimizer: the old monitor is done
            mon, w = monitors[-1]
            mon.close()
            w.close()
        w = SummaryWriter(log_dir=str(run_dir), filename_suffix=MONITOR_SUFFIX)
        monitors.append((AdamMonitor(opt, model=model, writer=w, every=EVERY, run_dir=run_dir), w))
        return opt

    t0 = time.perf_counter()
    runlab.build_optimizer = build_monitored
    tb.SummaryWriter = LossTap  # type: ignore[misc]  # runlab imports it inside train(): its writer is a LossTap
    try:
        truth = runlab.train(runlab.RunConfig(name=case.name, **case.cfg), run_dir)
    finally:
        runlab.build_optimizer = build
        tb.SummaryWriter = SummaryWriter  # type: ignore[misc]
    mon, w = monitors[-1]
    mon.close()
    w.close()
    findings = [
        {
            "id": f.id,
            "severity": f.severity,
            "step": f.step,
            "tensor": f.tensor,
            "message": f.message,
            "rule": f.evidence.get("rule") if f.evidence else None,
        }
        for f in mon.findings
    ]
    return {
        "truth": truth["summary"],
        "monitor_verdict": mon.verdict,
        "monitor_warning_step": mon.warning_step,
        "monitor_blowup_step": mon.blowup_step,
        "monitors": len(monitors),
        "findings": findings,
        "seconds": time.perf_counter() - t0,
    }


def without_monitor(run_dir: Path, dest: Path) -> Path:
    """A copy of the run (hard links, so no data is copied) without the monitor's event file and live file."""
    from adamdiag.monitor import LIVE_FILE

    def link(src: str, dst: str) -> None:
        os.link(src, dst)

    shutil.copytree(
        run_dir,
        dest,
        copy_function=link,
        ignore=lambda _d, names: [n for n in names if n.endswith(MONITOR_SUFFIX) or n in (LIVE_FILE, TRAINED)],
    )
    return dest


def scan_one(run_dir: Path) -> dict[str, Any]:
    """scan's verdict (and the rule that decided it), warning/blowup steps, sources and findings."""
    import adamdiag.analysis.diagnose as diagnose
    from adamdiag.pipeline.scan import scan_paths

    decided: list[Any] = []
    from adamdiag.analysis.verdicts import decide  # what diagnose calls (imported there by name)

    def tap(ev: Any) -> Any:  # the rule name is not in the report; read it off the same call
        decided.append(decide(ev))
        return decided[-1]

    setattr(diagnose, "decide", tap)  # noqa: B010 - diagnose's own name for it, restored below
    try:
        rep = scan_paths([run_dir]).runs[0]
    finally:
        setattr(diagnose, "decide", decide)  # noqa: B010
    return {
        "verdict": rep.verdict,
        "rule": decided[-1].rule if decided else None,
        "warning_step": rep.warning_step,
        "blowup_step": rep.blowup_step,
        "sources": list(rep.sources),
        "findings": [{"id": f.id, "severity": f.severity, "step": f.step, "tensor": f.tensor} for f in rep.findings],
    }


def first_step(
    findings: list[dict[str, Any]], fid: str, severities: tuple[str, ...] = ("warning", "error")
) -> int | None:
    steps = [f["step"] for f in findings if f["id"] == fid and f["severity"] in severities and f["step"] is not None]
    return min(steps) if steps else None


TRAINED = "monitor_validation_train.json"  # beside a kept run: what training and its live monitor gave


def validate(case: Any, root: Path, rescan: bool = False) -> dict[str, Any]:
    """Train ``case`` with the monitor (or, with ``rescan``, read what a kept run's training gave) and scan
    it with and without the monitor's output."""
    run_dir = root / case.name
    if rescan:
        try:
            res = json.loads((run_dir / TRAINED).read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"monitor_validation: --rescan: no kept training of {case.name} in {root} ({e})") from None
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        res = train_with_monitor(case, run_dir)
        (run_dir / TRAINED).write_text(json.dumps(res, default=float))
    t0 = time.perf_counter()
    with_tags = scan_one(run_dir)
    bare_root = root / "_without"
    if (bare_root / case.name).exists():
        shutil.rmtree(bare_root / case.name)
    bare = without_monitor(run_dir, bare_root / case.name)
    without_tags = scan_one(bare)
    scan_s = time.perf_counter() - t0
    truth = res["truth"]
    mf = res["findings"]
    ad101 = first_step(mf, "AD101")  # the first AD101 warning, any tensor or all parameters
    glob = [f for f in mf if f["id"] == "AD101" and f["tensor"] in (None, "all parameters")]
    # the first AD101 warning on all parameters (a collapse in progress) ...
    ad101_global = min((f["step"] for f in glob if f["severity"] == "warning"), default=None)
    # ... and the first AD101 of any severity (also the info of a stale / shrunken v, and of a
    # collapse that eps bounds); a live AD101's step is the step at which the monitor emitted it
    ad101_any = min((f["step"] for f in glob), default=None)
    warn = without_tags["warning_step"]
    tb = truth["blowup_step"]
    healthy = truth["cause"] == "healthy"
    errors = [f for f in mf if f["severity"] == "error"]
    out = {
        "name": case.name,
        "family": case.cfg["family"],
        "seed": case.cfg["seed"],
        "intended": case.intended,
        "note": case.note,
        "true_cause": truth["cause"],
        "true_blowup_step": tb,
        "train_seconds": round(res["seconds"], 2),
        "scan_seconds": round(scan_s, 2),
        "scan_with_tags": with_tags,
        "scan_without_tags": without_tags,
        "monitor_verdict": res["monitor_verdict"],
        "monitor_warning_step": res["monitor_warning_step"],
        "monitor_blowup_step": res["monitor_blowup_step"],
        "monitors": res["monitors"],  # 2 when the run restarted from a checkpoint (the second resumed)
        # the live verdict at the end of the run against scan's afterwards (the loss was fed)
        "monitor_agrees_with_scan": res["monitor_verdict"] == without_tags["verdict"],
        "monitor_findings": mf,
        "monitor_first_ad101": ad101,
        "monitor_first_global_ad101": ad101_global,
        "monitor_first_global_ad101_any": ad101_any,
        "scan_rule": without_tags["rule"],
        "same_verdict": with_tags["verdict"] == without_tags["verdict"],
        "monitor_tags_used": "monitor" in with_tags["sources"],
        # the monitor's first AD101 on all parameters no later than scan's after-the-fact warning step +
        # one logging interval: checked on the runs scan calls v_collapse (the acceptance item); the
        # other warning steps (bad_batch: the jump, lr_too_high: ...) are counted beside it
        "ad101_in_time": None if warn is None else (ad101_any is not None and ad101_any <= warn + EVERY),
        "ad101_warning_in_time": None if warn is None else (ad101_global is not None and ad101_global <= warn + EVERY),
        "monitor_false_alarm": (bool(errors) or res["monitor_verdict"] != "healthy") if healthy else None,
        "lead_time": (tb - ad101_global) if tb is not None and ad101_global is not None else None,
        "lead_time_first_tensor": (tb - ad101) if tb is not None and ad101 is not None else None,
        "scan_lead_time": (tb - warn) if tb is not None and warn is not None else None,
    }
    return out


def _dist(xs: list[int]) -> dict[str, Any]:
    return {"n": len(xs), "min": min(xs), "median": statistics.median(xs), "max": max(xs)} if xs else {"n": 0}


def _in_time(rows: list[dict[str, Any]], key: str) -> dict[str, int]:
    checked = [r for r in rows if r[key] is not None]
    return {"in_time": sum(bool(r[key]) for r in checked), "checked": len(checked)}


def _vc(r: dict[str, Any]) -> bool:
    """The runs the acceptance check is about: the log-only scan calls them v_collapse."""
    return bool(r["scan_without_tags"]["verdict"] == "v_collapse")


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    lead = [r["lead_time"] for r in rows if r["lead_time"] is not None]
    lead_t = [r["lead_time_first_tensor"] for r in rows if r["lead_time_first_tensor"] is not None]
    scan_lead = [r["scan_lead_time"] for r in rows if r["scan_lead_time"] is not None]
    blown = [r for r in rows if r["true_blowup_step"] is not None]
    healthy = [r for r in rows if r["true_cause"] == "healthy"]
    true_vc = [r for r in blown if r["true_cause"] == "v_collapse"]
    return {
        "runs": len(rows),
        "same_verdict": sum(r["same_verdict"] for r in rows),
        "monitor_agrees_with_scan": sum(r["monitor_agrees_with_scan"] for r in rows),
        "monitor_tags_used": sum(r["monitor_tags_used"] for r in rows),
        # the acceptance check: runs scan (log only) calls v_collapse
        "ad101_in_time": sum(bool(r["ad101_in_time"]) for r in rows if _vc(r) and r["ad101_in_time"] is not None),
        "ad101_checked": sum(r["ad101_in_time"] is not None for r in rows if _vc(r)),
        # beside it: the AD101 warning alone, per scan rule, and every run with a scan warning step
        "ad101_in_time_by_rule": {
            rule: {
                "any": _in_time([r for r in rows if _vc(r) and r.get("scan_rule") == rule], "ad101_in_time"),
                "warning": _in_time(
                    [r for r in rows if _vc(r) and r.get("scan_rule") == rule], "ad101_warning_in_time"
                ),
            }
            for rule in sorted({str(r.get("scan_rule")) for r in rows if _vc(r)})
        },
        "ad101_warning_in_time": _in_time([r for r in rows if _vc(r)], "ad101_warning_in_time"),
        "ad101_in_time_all_verdicts": _in_time(rows, "ad101_in_time"),
        "healthy_with_ad101_info": sum(
            any(
                f["id"] == "AD101" and f["severity"] == "info" and f["tensor"] in (None, "all parameters")
                for f in r["monitor_findings"]
            )
            for r in healthy
        ),
        "healthy_with_ad101_warning": sum(r["monitor_first_global_ad101"] is not None for r in healthy),
        "blown_up": len(blown),
        "blown_up_warned": sum(r["monitor_first_global_ad101"] is not None for r in blown),
        "healthy": len(healthy),
        "healthy_false_alarms": sum(bool(r["monitor_false_alarm"]) for r in healthy),
        "lead_time": _dist(lead),
        "lead_time_first_tensor": _dist(lead_t),
        "scan_lead_time": _dist(scan_lead),
        # the same on the runs that truly blew up from a v collapse (runlab's truth): the AD101 warning on
        # all parameters, the first AD101 of any severity, and scan's warning step from the logs
        "v_collapse_lead_time": {
            "monitor_warning": _dist([r["lead_time"] for r in true_vc if r["lead_time"] is not None]),
            "monitor_any": _dist(
                [
                    r["true_blowup_step"] - r["monitor_first_global_ad101_any"]
                    for r in true_vc
                    if r["monitor_first_global_ad101_any"] is not None
                ]
            ),
            "scan": _dist([r["scan_lead_time"] for r in true_vc if r["scan_lead_time"] is not None]),
            "runs": len(true_vc),
        },
    }


def failures(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        if not r["same_verdict"]:
            out.append(
                f"{r['name']}: verdict {r['scan_with_tags']['verdict']} with tags, {r['scan_without_tags']['verdict']} without"
            )
        if r["ad101_in_time"] is False and _vc(r):
            out.append(
                f"{r['name']}: monitor's first AD101 (all parameters) {r['monitor_first_global_ad101_any']} later "
                f"than scan's warning {r['scan_without_tags']['warning_step']} + {EVERY} "
                f"(scan rule {r['scan_rule']})"
            )
        if r["monitor_false_alarm"]:
            out.append(f"{r['name']}: monitor false alarm on a healthy run ({r['monitor_verdict']})")
    return out


def _fmt(x: Any) -> str:
    return "–" if x is None else str(x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", help="run only these cases (names from the subset or the matrix)")
    ap.add_argument("--keep", type=Path, help="train into this directory and keep the runs")
    ap.add_argument(
        "--rescan",
        action="store_true",
        help="with --keep: do not train, scan the runs kept there again (after a rule change; the monitor's "
        "live findings are those its training gave)",
    )
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "monitor_validation.json")
    a = ap.parse_args(argv)
    if a.rescan and not a.keep:
        ap.error("--rescan needs --keep DIR (the runs to scan again)")
    import torch

    t0 = time.perf_counter()
    chosen = cases(tuple(a.only) if a.only else SUBSET)
    tmp = None if a.keep else tempfile.TemporaryDirectory(prefix="adamdiag-monval-")
    root = a.keep if a.keep else Path(tmp.name)  # type: ignore[union-attr]
    rows = []
    try:
        for case in chosen:
            r = validate(case, root, a.rescan)
            rows.append(r)
            print(
                f"{r['name']:<52} truth {r['true_cause']:<10} blowup {_fmt(r['true_blowup_step']):>5}  "
                f"scan {r['scan_with_tags']['verdict']}/{r['scan_without_tags']['verdict']} warn "
                f"{_fmt(r['scan_without_tags']['warning_step']):>5}  monitor {r['monitor_verdict']:<23} "
                f"AD101 {_fmt(r['monitor_first_global_ad101_any']):>5}/{_fmt(r['monitor_first_global_ad101']):>5} "
                f"(tensor {_fmt(r['monitor_first_ad101']):>5}) "
                f"lead {_fmt(r['lead_time']):>5}",
                flush=True,
            )
    finally:
        if tmp is not None:
            tmp.cleanup()
    summary = summarize(rows)
    bad = failures(rows)
    doc = {
        "schema": SCHEMA,
        "command": "python bench/monitor_validation.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "every": EVERY,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_average": list(os.getloadavg()),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "summary": summary,
        "failures": bad,
        "runs": rows,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    import accuracy  # type: ignore[import-not-found]  # bench/accuracy.py: its NaN → None for strict JSON

    a.out.write_text(json.dumps(accuracy._json_safe(doc), indent=1, allow_nan=False) + "\n")
    lt, st = summary["lead_time"], summary["scan_lead_time"]
    print(
        f"same verdict with/without tags: {summary['same_verdict']}/{summary['runs']}; monitor's verdict = "
        f"scan's: {summary['monitor_agrees_with_scan']}/{summary['runs']}; AD101 in time (scan v_collapse): "
        f"{summary['ad101_in_time']}/{summary['ad101_checked']} (the warning alone "
        f"{summary['ad101_warning_in_time']['in_time']}/{summary['ad101_warning_in_time']['checked']}; every "
        f"scan warning step {summary['ad101_in_time_all_verdicts']['in_time']}/"
        f"{summary['ad101_in_time_all_verdicts']['checked']}); healthy false alarms: "
        f"{summary['healthy_false_alarms']}/{summary['healthy']}"
    )
    for rule, c in summary["ad101_in_time_by_rule"].items():
        print(
            f"  scan rule {rule}: AD101 in time {c['any']['in_time']}/{c['any']['checked']}, "
            f"the warning alone {c['warning']['in_time']}/{c['warning']['checked']}"
        )
    print(
        f"healthy runs with an AD101 on all parameters: info {summary['healthy_with_ad101_info']}, "
        f"warning {summary['healthy_with_ad101_warning']} (of {summary['healthy']}; neither is a false alarm)"
    )
    if lt["n"]:
        print(
            f"monitor lead time (true blowup − its AD101 warning on all parameters), {lt['n']} runs: "
            f"min {lt['min']} median {lt['median']} max {lt['max']}"
        )
    ltt = summary["lead_time_first_tensor"]
    if ltt["n"]:
        print(f"  (− its first AD101 on any tensor: min {ltt['min']} median {ltt['median']} max {ltt['max']})")
    if st["n"]:
        print(
            f"scan lead time (true blowup − warning_step), {st['n']} runs: min {st['min']} median {st['median']} max {st['max']}"
        )
    vl = summary["v_collapse_lead_time"]
    for what, key in (
        ("monitor AD101 warning", "monitor_warning"),
        ("monitor first AD101", "monitor_any"),
        ("scan", "scan"),
    ):
        x = vl[key]
        if x["n"]:
            print(
                f"  runs that blew up from a v collapse (truth), {what}: {x['n']}/{vl['runs']} runs, "
                f"min {x['min']} median {x['median']} max {x['max']}"
            )
    for b in bad:
        print(f"FAIL {b}")
    print(f"wrote {a.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
