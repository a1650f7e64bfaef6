"""Out-of-family probe (session 11): does ``adamdiag scan`` give confidently wrong verdicts on model families
and training styles the verdict rules never saw?

The rules were built and scored on the validation matrix (``bench/accuracy.py``: an MLP multi-task net, a
small CNN and a tiny transformer, one training loop, one logging style). This script trains small CPU runs
of *other* families with ``tools/ood/oodlab.py`` — logistic regression, a GRU language model, a conv
autoencoder, a BatchNorm ResNet, matrix factorisation, an MLP regression with cosine / warm-restart
schedules and gradient accumulation — each logged the way its user would (own tags and cadence, the
pre-clip norm ``clip_grad_norm_`` returns, weight or gradient histograms, checkpoint file names), then:

1. labels every blown-up run by experiment with the project's counterfactual rules (oodlab.label_run:
   from the last checkpoint before the blowup, eps 1e-3 / eps 1e-2 / lr/3 / lr/10; ``v_collapse``,
   ``lr_too_high`` or ``ambiguous``); an injected bad batch that registered is ``bad_batch``
   (runlab.label_injection); a run without a blowup is ``healthy``;
2. runs ``adamdiag scan RUN --format json`` (the CLI, as a user would) on every run, and once more
   in-process only to record which verdict rule fired (``Decision.rule``);
3. prints a table — run, intent, label, verdict (confidence, alternative), first recommended fix and
   whether that fix avoided the blowup (the labeller's outcome for that variant), right/wrong — and a
   summary: right verdicts on labelled runs, false alarms on healthy runs, confidently wrong cases.

    python bench/out_of_family.py                    # train + label + scan (cached under bench/out/out_of_family/)
    python bench/out_of_family.py --jobs 2 --results # also write bench/results/out_of_family.json
    python bench/out_of_family.py --list             # the designs
    python bench/out_of_family.py --regen            # retrain and relabel every run

A run is reused when its ``lab_spec.json`` equals the design and its label is stored. Deterministic
(seeded data, init and batches; single-threaded deterministic torch). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools" / "ood"))

import oodlab  # noqa: E402
from oodlab import Spec  # noqa: E402

OUT = ROOT / "bench" / "out" / "out_of_family"
RESULTS = ROOT / "bench" / "results" / "out_of_family.json"
LABEL_FILE = "lab_label.json"
B99 = (0.9, 0.99)


# What a design rules out whatever the counterfactual label says (the label only asks "would eps or lr have
# fixed it"): a verdict naming such a cause is wrong by construction, reported beside the scored table.
BY_CONSTRUCTION: dict[str, tuple[str, str]] = {
    # run: (verdict that is wrong by construction, why)
    "logreg_sep_l2_switch": (
        "v_collapse",
        "the 40x jump is at the step the L2 term switches on; the loss at a step is measured before that "
        "step's update, and the update before it was a quiet one: the objective changed, not the optimizer",
    ),
    "mlp_hot_warmup": ("bad_batch", "no batch is corrupted: the data are clean, the lr warm-up to 2.0 diverges"),
}


def designs(seeds: tuple[int, ...] = (0,)) -> list[Spec]:
    """The probe's runs: family × design intent (``note`` says what each is meant to show), once per init
    seed; seed 0 keeps the bare name, others get ``_s<seed>`` (the data of each family stay the same)."""
    s: list[Spec] = []

    def add(name: str, family: str, intent: str, note: str, **kw: Any) -> None:
        s.append(Spec(name=name, family=family, intent=intent, note=note, **kw))

    # logistic regression (convex). Separable: margins grow forever, gradients vanish, v decays (deep).
    add(
        "logreg_sep_healthy",
        "logreg",
        "healthy",
        "separable, full batch: deep quiet phase, never blows up",
        steps=3000,
        lr=0.05,
        data={"flip": 0.0},
    )
    add(
        "logreg_sep_l2_switch",
        "logreg",
        "v_collapse",
        "separable; an L2 term (1e-3) switched on at 2000 after the quiet phase (a loss-definition change)",
        steps=3000,
        lr=0.05,
        data={"flip": 0.0},
        event_at=2000,
        event_scale=1e-3,
    )
    add(
        "logreg_badbatch",
        "logreg",
        "bad_batch",
        "mini-batch 32, 5% label noise; features x1e3 at step 600",
        steps=1000,
        lr=0.01,
        batch=32,
        data={"flip": 0.05},
        event_at=600,
        event_scale=1e3,
    )
    # matrix factorisation (embeddings), logs only 'Loss/train' every 10 steps + checkpoints every 100
    add(
        "matfac_healthy",
        "matfac",
        "healthy",
        "full batch, lr 1e-2: fits to its noise floor",
        steps=2000,
        lr=0.01,
        log_every=10,
        ckpt_every=100,
    )
    add(
        "matfac_hot_lr3",
        "matfac",
        "lr_too_high",
        "full batch, lr 3 (300x the healthy run)",
        steps=1200,
        lr=3.0,
        log_every=10,
        ckpt_every=100,
    )
    add(
        "matfac_hot_lr1_warmup",
        "matfac",
        "lr_too_high",
        "full batch, lr 1 after 200 warm-up steps",
        steps=1200,
        lr=1.0,
        schedule="warmup",
        warmup=200,
        log_every=10,
        ckpt_every=100,
    )
    add(
        "matfac_sgdr_b999",
        "matfac",
        "v_collapse",
        "full batch, lr 3e-2, SGDR period 1500: lr restarts at 1501",
        steps=2500,
        lr=0.03,
        schedule="sgdr",
        period=1500,
        log_every=10,
        ckpt_every=100,
    )
    add(
        "matfac_badbatch",
        "matfac",
        "bad_batch",
        "mini-batch 64; one batch with targets on a 0-100 scale",
        steps=1000,
        lr=0.01,
        batch=64,
        event_at=500,
        event_scale=100.0,
        log_every=1,
        ckpt_every=100,
    )
    add(
        "matfac_sgdr_b99",
        "matfac",
        "v_collapse",
        "full batch, beta2 0.99, lr 0.1, SGDR period 800: lr restarts at 801",
        steps=1600,
        lr=0.1,
        betas=B99,
        schedule="sgdr",
        period=800,
        log_every=10,
        ckpt_every=100,
    )
    # MLP regression: warm restarts (SGDR) full batch; cosine + gradient accumulation mini-batch
    add(
        "mlp_sgdr_b99",
        "mlp_reg",
        "v_collapse",
        "full batch 256, beta2 0.99, SGDR period 1000: lr restarts at 1001",
        steps=2000,
        lr=0.01,
        betas=B99,
        schedule="sgdr",
        period=1000,
        data={"n": 256},
        log_every=10,
        ckpt_every=250,
    )
    add(
        "mlp_sgdr_b999",
        "mlp_reg",
        "v_collapse",
        "full batch 256, beta2 0.999, SGDR period 2000: restart at 2001",
        steps=4000,
        lr=0.01,
        schedule="sgdr",
        period=2000,
        data={"n": 256},
        log_every=10,
        ckpt_every=250,
    )
    add(
        "mlp_cos_accum_healthy",
        "mlp_reg",
        "healthy",
        "batch 32 x accum 4, cosine, warm-up 100, lr 3e-3, logs every 10",
        steps=1500,
        lr=3e-3,
        schedule="cosine",
        warmup=100,
        batch=32,
        accum=4,
        log_every=10,
        ckpt_every=250,
    )
    add(
        "mlp_cos_accum_hot",
        "mlp_reg",
        "lr_too_high",
        "batch 32 x accum 4, cosine, warm-up 100, peak lr 1.0",
        steps=1000,
        lr=1.0,
        schedule="cosine",
        warmup=100,
        batch=32,
        accum=4,
        log_every=10,
        ckpt_every=250,
    )
    add(
        "mlp_hot_nowarmup",
        "mlp_reg",
        "lr_too_high",
        "batch 64, constant lr 0.3, no warm-up, every step",
        steps=800,
        lr=0.3,
        batch=64,
        ckpt_every=100,
    )
    add(
        "mlp_fullbatch_const",
        "mlp_reg",
        "v_collapse",
        "full batch 256, constant lr 3e-3, beta2 0.999: fits to ~1e-6, then goes unstable by itself",
        steps=2500,
        lr=3e-3,
        data={"n": 256},
        log_every=10,
        ckpt_every=250,
    )
    add(
        "mlp_hot_warmup",
        "mlp_reg",
        "lr_too_high",
        "batch 64, lr 2.0 after 100 warm-up steps, every step",
        steps=600,
        lr=2.0,
        schedule="warmup",
        warmup=100,
        batch=64,
        ckpt_every=100,
    )
    add(
        "mlp_sgdr_minibatch",
        "mlp_reg",
        "lr_too_high",
        "batch 32, SGDR lr 0.05 period 500 (restarts at 501, 1001), every step",
        steps=1500,
        lr=0.05,
        schedule="sgdr",
        period=500,
        batch=32,
        ckpt_every=100,
    )
    add(
        "mlp_adamw_b95_healthy",
        "mlp_reg",
        "healthy",
        "full batch 256, AdamW betas (0.9, 0.95) (an LLM recipe), lr 3e-3, every step",
        steps=2000,
        lr=3e-3,
        betas=(0.9, 0.95),
        optimizer="adamw",
        data={"n": 256},
        ckpt_every=250,
    )
    # conv autoencoder: gradient histograms every 50 steps, no grad-norm scalar
    add(
        "conv_ae_healthy",
        "conv_ae",
        "healthy",
        "mini-batch 16, lr 3e-3, noisy loss",
        steps=600,
        lr=3e-3,
        batch=16,
        hist_every=50,
        ckpt_every=200,
        data={"ch": 4},
    )
    add(
        "conv_ae_badbatch",
        "conv_ae",
        "bad_batch",
        "mini-batch 16; one batch not normalised (x255) at 400",
        steps=600,
        lr=3e-3,
        batch=16,
        hist_every=50,
        ckpt_every=200,
        data={"ch": 4},
        event_at=400,
        event_scale=255.0,
    )
    add(
        "conv_ae_lr1",
        "conv_ae",
        "lr_too_high",
        "mini-batch 16, lr 1.0: trains badly (loss 10x the healthy run's) but never blows up",
        steps=300,
        lr=1.0,
        batch=16,
        hist_every=50,
        ckpt_every=100,
        data={"ch": 4},
    )
    # ResNet with BatchNorm: weight histograms, 'train/loss' every step, no grad norm
    add(
        "resnet_bn_noisy",
        "resnet_bn",
        "healthy",
        "batch 8 (noisy loss), lr 1e-3",
        steps=300,
        lr=1e-3,
        batch=8,
        hist_every=100,
        ckpt_every=100,
        data={"ch": 8, "n": 512},
    )
    add(
        "resnet_bn_badbatch",
        "resnet_bn",
        "bad_batch",
        "batch 16; one batch x255 (BatchNorm absorbs it?)",
        steps=300,
        lr=1e-3,
        batch=16,
        ckpt_every=100,
        data={"ch": 8, "n": 512},
        event_at=150,
        event_scale=255.0,
    )
    # GRU LM: 'Loss/train' every 10, pre-clip grad norm, AdamW
    add(
        "gru_lm_healthy_clip",
        "gru_lm",
        "healthy",
        "AdamW lr 3e-3, clip 1.0, logs every 10",
        steps=500,
        lr=3e-3,
        optimizer="adamw",
        weight_decay=0.01,
        clip=1.0,
        batch=16,
        log_every=10,
        ckpt_every=100,
        data={"vocab": 32, "hidden": 32, "seq": 16},
    )
    add(
        "gru_lm_hot_warmup",
        "gru_lm",
        "lr_too_high",
        "AdamW lr 3 after 100 warm-up steps, no clipping",
        steps=400,
        lr=3.0,
        optimizer="adamw",
        schedule="warmup",
        warmup=100,
        batch=16,
        log_every=10,
        ckpt_every=100,
        data={"vocab": 32, "hidden": 32, "seq": 16},
    )
    add(
        "gru_lm_hot_warmup_log1",
        "gru_lm",
        "lr_too_high",
        "the same run as gru_lm_hot_warmup, loss logged every step",
        steps=400,
        lr=3.0,
        optimizer="adamw",
        schedule="warmup",
        warmup=100,
        batch=16,
        log_every=1,
        ckpt_every=100,
        data={"vocab": 32, "hidden": 32, "seq": 16},
    )
    add(
        "gru_lm_slow_diverge",
        "gru_lm",
        "lr_too_high",
        "AdamW, warm-up over 300 steps to lr 3: the loss climbs 1.7 -> 21 over ~200 steps (slow divergence)",
        steps=400,
        lr=3.0,
        optimizer="adamw",
        schedule="warmup",
        warmup=300,
        batch=16,
        log_every=10,
        ckpt_every=100,
        data={"vocab": 32, "hidden": 32, "seq": 16},
    )
    # bag-of-words classifier (EmbeddingBag on Zipf tokens: sparse row gradients), added in session 15 as a
    # held-out family: designed, generated and scored after the rules it is scored on; its user logs
    # Train/Loss, Train/LR and Train/GradNorm (the norm before clipping) every 5 steps, ckpt/iter_NNNNNNN.pt
    add(
        "bow_healthy",
        "bow_clf",
        "healthy",
        "a document stream, mini-batch 64, 5% label noise, lr 3e-3",
        steps=2000,
        lr=3e-3,
        batch=64,
        log_every=5,
        ckpt_every=200,
    )
    add(
        "bow_corpus_healthy",
        "bow_clf",
        "healthy",
        "a fixed corpus of 2048 documents, mini-batch 32, 5% label noise, lr 3e-3",
        steps=3000,
        lr=3e-3,
        batch=32,
        log_every=5,
        ckpt_every=200,
        data={"flip": 0.05, "corpus": 2048},
    )
    add(
        "bow_corpus_quiet",
        "bow_clf",
        "healthy",
        "512 separable documents, full batch, lr 1e-2: the loss falls to ~1e-4 and gradients vanish",
        steps=4000,
        lr=1e-2,
        log_every=5,
        ckpt_every=200,
        data={"flip": 0.0, "corpus": 512},
    )
    add(
        "bow_corpus_sgdr_b99",
        "bow_clf",
        "v_collapse",
        "512 separable documents, full batch, beta2 0.99, SGDR lr 3e-2 period 1500: a restart at 1501 after "
        "the loss fell to ~1e-8",
        steps=3000,
        lr=3e-2,
        betas=(0.9, 0.99),
        schedule="sgdr",
        period=1500,
        log_every=5,
        ckpt_every=100,
        data={"flip": 0.0, "corpus": 512},
    )
    add(
        "bow_corpus_sgdr_lr1",
        "bow_clf",
        "lr_too_high",
        "as bow_corpus_sgdr_b99 with lr 1.0: the loss reaches exactly 0.0 in float32",
        steps=3000,
        lr=1.0,
        betas=(0.9, 0.99),
        schedule="sgdr",
        period=1500,
        log_every=5,
        ckpt_every=100,
        data={"flip": 0.0, "corpus": 512},
    )
    add(
        "bow_hot",
        "bow_clf",
        "lr_too_high",
        "a document stream, mini-batch 64, warm-up over 200 steps to lr 1.0",
        steps=1500,
        lr=1.0,
        schedule="warmup",
        warmup=200,
        batch=64,
        log_every=5,
        ckpt_every=100,
    )
    add(
        "bow_hot_log1",
        "bow_clf",
        "lr_too_high",
        "the same run as bow_hot, loss logged every step",
        steps=1500,
        lr=1.0,
        schedule="warmup",
        warmup=200,
        batch=64,
        log_every=1,
        ckpt_every=100,
    )
    add(
        "bow_badbatch",
        "bow_clf",
        "bad_batch",
        "a document stream, mini-batch 64, lr 3e-3; at 800 one batch's token weights not normalised (x1e3)",
        steps=1500,
        lr=3e-3,
        batch=64,
        log_every=1,
        ckpt_every=200,
        event_at=800,
        event_scale=1e3,
    )
    add(
        "bow_new_vocab",
        "bow_clf",
        "v_collapse",
        "a separable document stream of the 100 most frequent tokens, mini-batch 256, lr 1e-2; from 3000 on all "
        "400 tokens (a new domain: rows that never had a gradient)",
        steps=4000,
        lr=1e-2,
        batch=256,
        log_every=5,
        ckpt_every=200,
        event_at=3000,
        data={"flip": 0.0, "keep": 100},
    )
    return [dataclasses.replace(sp, name=sp.name if k == 0 else f"{sp.name}_s{k}", seed=k) for k in seeds for sp in s]


# ----------------------------------------------------------------------------------------------------------
# generation (train + label), cached per run


def _cached(spec: Spec, d: Path) -> bool:
    try:
        same = json.loads((d / oodlab.SPEC_FILE).read_text()) == spec.to_json()
        return same and (d / oodlab.TRUTH_FILE).is_file() and (d / LABEL_FILE).is_file()
    except (OSError, ValueError):
        return False


def _generate(spec_json: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """Worker: train the run, then label it (written to lab_label.json); returns the timings."""
    spec = Spec.from_json(spec_json)
    d = Path(run_dir)
    if d.exists():
        shutil.rmtree(d)
    t0 = time.perf_counter()
    truth = oodlab.train_run(spec, d)
    t1 = time.perf_counter()
    label = oodlab.label_run(d)
    (d / LABEL_FILE).write_text(json.dumps(label, indent=1) + "\n")
    return {"name": spec.name, "train_s": t1 - t0, "label_s": time.perf_counter() - t1, "blowup": truth["blowup_step"]}


def generate(specs: list[Spec], out: Path, jobs: int, regen: bool) -> dict[str, dict[str, Any]]:
    todo = [s for s in specs if regen or not _cached(s, out / s.name)]
    timing: dict[str, dict[str, Any]] = {}
    if not todo:
        return timing
    print(f"training + labelling {len(todo)} run(s) with {jobs} process(es) ...", file=sys.stderr)
    with ProcessPoolExecutor(max_workers=jobs) as ex:
        futs = [ex.submit(_generate, s.to_json(), str(out / s.name)) for s in todo]
        for f in futs:
            r = f.result()
            timing[r["name"]] = r
            print(
                f"  {r['name']}: train {r['train_s']:.1f}s, label {r['label_s']:.1f}s (blowup {r['blowup']})",
                file=sys.stderr,
            )
    return timing


# ----------------------------------------------------------------------------------------------------------
# scanning and scoring


def _adamdiag() -> list[str]:
    exe = Path(sys.executable).with_name("adamdiag")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "adamdiag"]


def scan_cli(run_dir: Path) -> dict[str, Any]:
    """``adamdiag scan RUN --format json``: the run's report (or the error the CLI printed)."""
    p = subprocess.run([*_adamdiag(), "scan", str(run_dir), "--format", "json"], capture_output=True, text=True)
    if p.returncode not in (0, 1):
        return {"verdict": "error", "error": f"exit {p.returncode}: {p.stderr.strip()[-400:]}"}
    return json.loads(p.stdout)["runs"][0]


def fired_rule(run_dir: Path) -> str | None:
    """Which verdict rule decided (in-process scan, recording ``verdicts.decide``'s Decision)."""
    import adamdiag.analysis.diagnose as diag
    from adamdiag.pipeline.scan import scan_paths

    seen: list[str] = []
    orig = vars(diag)["decide"]  # the module's own reference, which diagnose() calls

    def spy(ev: Any) -> Any:
        d = orig(ev)
        seen.append(d.rule)
        return d

    vars(diag)["decide"] = spy
    try:
        scan_paths([run_dir])
    except Exception as e:  # noqa: BLE001  (a crash is a result to report)
        return f"error: {type(e).__name__}: {e}"
    finally:
        vars(diag)["decide"] = orig
    return seen[-1] if seen else None


def logged_blowup_ratio(spec: Spec, losses: list[float | None], blowup: int | None) -> float | None:
    """What the log shows: max logged loss in the 100 steps from the true blowup over the median logged loss
    in the 100 steps before it (the blowup rule's 10x, at the logging cadence)."""
    if blowup is None:
        return None
    logged = {t: losses[t - 1] for t in range(spec.log_every, len(losses) + 1, spec.log_every)}
    before = [v for t, v in logged.items() if blowup - 100 <= t < blowup and v is not None]
    after = [v for t, v in logged.items() if blowup <= t < blowup + 100]
    if any(v is None or not math.isfinite(v) for v in after) or (len(losses) < blowup + 100 and losses[-1] is None):
        return math.inf
    finite_after = [float(v) for v in after if v is not None]
    if not before or not finite_after:
        return None
    before.sort()
    base = before[len(before) // 2]
    return max(finite_after) / base if base > 0 else math.inf


def weak_test(spec: Spec, truth: dict[str, Any]) -> str | None:
    """Why a blown-up run is a weak test of the log-only scan: the log does not show a 10x blowup at its
    cadence, or has fewer than 5 logged points before it (the scan's minimum baseline)."""
    b = truth["blowup_step"]
    if b is None or truth["cause"] == "bad_batch":
        return None
    why = []
    ratio = logged_blowup_ratio(spec, truth["losses"], b)
    if ratio is not None and ratio < 10:
        why.append(f"the log shows {ratio:.1f}x")
    before = (b - 1) // spec.log_every
    if before < 5:
        why.append(f"{before} logged point(s) before the blowup")
    return "; ".join(why) or None


def recommended_fix(rep: dict[str, Any], label: dict[str, Any], spec: Spec) -> dict[str, Any]:
    """The report's first recommended fix mapped onto the trained variant (bench/accuracy.py's rule)."""
    out: dict[str, Any] = {"rec": None, "rec_variant": None, "rec_exact": None, "rec_outcome": None}
    rec = rep.get("recommendation") or {}
    if rec.get("eps") is not None:
        e = float(rec["eps"])
        out["rec"] = f"eps {e:g}"
        name = "eps1e-3" if math.log10(e) <= -2.5 else "eps1e-2"
        out["rec_exact"] = math.isclose(e, 1e-3 if name == "eps1e-3" else 1e-2, rel_tol=1e-6)
    elif rec.get("lr") is not None:
        out["rec"] = f"lr {float(rec['lr']):.3g}"
        if label.get("start_step") is None:
            return out
        ratio = float(rec["lr"]) / oodlab.lr_at(spec, max(1, int(label["start_step"])))
        name = "lr/3" if abs(math.log10(ratio * 3)) <= abs(math.log10(ratio * 10)) else "lr/10"
        out["rec_exact"] = math.isclose(ratio, 1 / 3 if name == "lr/3" else 1 / 10, rel_tol=0.05)
    else:
        return out
    v = (label.get("variants") or {}).get(name)
    out.update(rec_variant=name, rec_outcome=v["outcome"] if v else None)
    return out


def evaluate(spec: Spec, d: Path) -> dict[str, Any]:
    truth = json.loads((d / oodlab.TRUTH_FILE).read_text())
    label = json.loads((d / LABEL_FILE).read_text())
    if truth["cause"] == "bad_batch":
        want = "bad_batch"
    elif truth["blowup_step"] is None:
        want = "healthy"
    else:
        want = label.get("label") or "unlabelled"
    t0 = time.perf_counter()
    rep = scan_cli(d)
    scan_s = time.perf_counter() - t0
    rule = fired_rule(d)
    verdict = rep.get("verdict")
    scored = want in ("healthy", "bad_batch", "v_collapse", "lr_too_high")
    right = (verdict == want) if scored else None
    row = {
        "run": spec.name,
        "family": spec.family,
        "intent": spec.intent,
        "note": spec.note,
        "truth": want,
        "true_blowup_step": truth["blowup_step"],
        "logged_blowup_ratio": logged_blowup_ratio(spec, truth["losses"], truth["blowup_step"]),
        "label_start_step": label.get("start_step"),
        "reproduces_live_blowup": label.get("reproduces_live_blowup"),
        "variants": {k: v["outcome"] for k, v in (label.get("variants") or {}).items()},
        "verdict": verdict,
        "confidence": rep.get("confidence"),
        "alternative": rep.get("alternative"),
        "rule": rule,
        "blowup_step": rep.get("blowup_step"),
        "warning_step": rep.get("warning_step"),
        "recommendation": {k: v for k, v in (rep.get("recommendation") or {}).items() if k in ("action", "eps", "lr")},
        "findings": [f"{f['id']}@{f.get('step')}" for f in rep.get("findings", [])],
        "loss_tag": rep.get("loss_tag"),
        "grad_norm_tag": rep.get("grad_norm_tag"),
        "sources": rep.get("sources"),
        "right": right,
        "confidently_wrong": bool(right is False and rep.get("confidence") == "high"),
        "scan_s": scan_s,
        "train_s": truth.get("seconds"),
        "label_s": label.get("seconds"),
    }
    row.update(recommended_fix(rep, label, spec))
    row["weak_test"] = weak_test(spec, truth)
    wrong_cause = BY_CONSTRUCTION.get(re.sub(r"_s\d+$", "", spec.name))  # the design, whatever its seed
    row["wrong_by_construction"] = wrong_cause[1] if wrong_cause and verdict == wrong_cause[0] else None
    if "error" in rep:
        row["error"] = rep["error"]
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    lab = [r for r in rows if r["truth"] in ("v_collapse", "lr_too_high", "bad_batch")]
    healthy = [r for r in rows if r["truth"] == "healthy"]
    blow = [r for r in rows if r["truth"] in ("v_collapse", "lr_too_high")]
    fix = [r for r in blow if r["rec_outcome"] is not None or r["verdict"] == r["truth"]]
    return {
        "runs": len(rows),
        "labelled": len(lab),
        "right_labelled": sum(bool(r["right"]) for r in lab),
        "healthy": len(healthy),
        "false_alarms": sum(r["verdict"] != "healthy" for r in healthy),
        "ambiguous_or_unlabelled": [r["run"] for r in rows if r["right"] is None],
        "confidently_wrong": [r["run"] for r in rows if r["confidently_wrong"]],
        "wrong_by_construction": [r["run"] for r in rows if r["wrong_by_construction"]],
        "weak_tests": {r["run"]: r["weak_test"] for r in rows if r["weak_test"]},
        "wrong": [r["run"] for r in rows if r["right"] is False],
        "first_fix_avoided": sum(r["rec_outcome"] == "avoided" for r in fix),
        "first_fix_scored": len(fix),
    }


def format_table(rows: list[dict[str, Any]], summ: dict[str, Any]) -> str:
    def ok(r: dict[str, Any]) -> str:
        if r["right"] is None:
            return "- (wrong by construction)" if r["wrong_by_construction"] else "-"
        return "right" if r["right"] else ("WRONG!" if r["confidently_wrong"] else "wrong")

    head = (
        f"{'run':24} {'intent':11} {'label':11} {'verdict (conf, alt)':34} {'rule':17} {'first fix -> outcome':26} ok"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        v = f"{r['verdict']} ({r['confidence']}{', alt ' + r['alternative'] if r['alternative'] else ''})"
        fx = f"{r['rec']}{'' if r['rec_exact'] is not False else '~'} -> {r['rec_outcome']}" if r["rec"] else "-"
        lines.append(f"{r['run']:24} {r['intent']:11} {r['truth']:11} {v:34} {str(r['rule']):17} {fx:26} {ok(r)}")
    s = summ
    lines += [
        "",
        f"right verdicts on labelled runs: {s['right_labelled']}/{s['labelled']}   (v_collapse, lr_too_high, bad_batch)",
        f"false alarms on healthy runs:    {s['false_alarms']}/{s['healthy']}",
        f"first fix avoided the blowup:    {s['first_fix_avoided']}/{s['first_fix_scored']}   "
        "(v_collapse/lr_too_high runs; '~': the recommended value was not trained, the nearest variant's outcome)",
        f"confidently wrong (high):        {', '.join(s['confidently_wrong']) or 'none'}",
        f"wrong:                           {', '.join(s['wrong']) or 'none'}",
        f"not scored (ambiguous label):    {', '.join(s['ambiguous_or_unlabelled']) or 'none'}",
        f"  of them wrong by construction: {', '.join(s['wrong_by_construction']) or 'none'}",
        "weak tests (blowup not plainly in the log): "
        + ("; ".join(f"{k} ({v})" for k, v in s["weak_tests"].items()) or "none"),
    ]
    return "\n".join(lines)


def _git(*args: str) -> str:
    p = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)
    return p.stdout.strip() if p.returncode == 0 else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--out", type=Path, default=OUT, help="where the runs are written (default bench/out/out_of_family)"
    )
    ap.add_argument("--jobs", type=int, default=2, help="training processes (default 2)")
    ap.add_argument("--regen", action="store_true", help="retrain and relabel every run")
    ap.add_argument("--only", nargs="+", metavar="RUN", help="only these designs")
    ap.add_argument(
        "--seeds", nargs="+", type=int, default=[0], help="init seeds (default 0; others: names get _s<seed>)"
    )
    ap.add_argument("--list", action="store_true", help="list the designs and exit")
    ap.add_argument("--results", action="store_true", help=f"write {RESULTS.relative_to(ROOT)}")
    args = ap.parse_args(argv)
    specs = designs(tuple(args.seeds))
    if args.only:
        unknown = set(args.only) - {s.name for s in specs}
        if unknown:
            print(f"error: unknown design(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        specs = [s for s in specs if s.name in args.only]
    if args.list:
        for sp in specs:
            print(f"{sp.name:24} {sp.family:10} {sp.intent:12} {sp.note}")
        return 0
    t0 = time.perf_counter()
    timing = generate(specs, args.out, max(1, args.jobs), args.regen)
    gen_s = time.perf_counter() - t0
    rows = [evaluate(sp, args.out / sp.name) for sp in specs]
    summ = summarize(rows)
    summ["wall_s"] = time.perf_counter() - t0
    summ["generation_wall_s"] = gen_s
    summ["adamdiag_commit"] = _git("rev-parse", "HEAD")
    # other engineers edit adamdiag/ in the same tree: say whether the scanned code was the commit's
    summ["adamdiag_uncommitted"] = _git("status", "--porcelain", "--", "adamdiag").splitlines()
    summ["cpu_s_train_label"] = sum((r["train_s"] or 0) + (r["label_s"] or 0) for r in rows)
    print(format_table(rows, summ))
    print(
        f"\nwall {summ['wall_s']:.0f}s (generation {gen_s:.0f}s for {len(timing)} run(s)); "
        f"train+label CPU summed over runs {summ['cpu_s_train_label']:.0f}s; load {os.getloadavg()[0]:.1f}"
    )
    if args.results:
        res = (
            RESULTS
            if args.seeds == [0]
            else RESULTS.with_name(f"out_of_family_seeds{'_'.join(map(str, args.seeds))}.json")
        )
        res.parent.mkdir(parents=True, exist_ok=True)
        res.write_text(
            json.dumps(oodlab.cf.json_nulls({"summary": summ, "runs": rows}), indent=1, allow_nan=False) + "\n"
        )
        print(f"wrote {res.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
