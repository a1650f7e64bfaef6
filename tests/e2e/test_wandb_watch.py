"""``wandb.watch(model, log="gradients")``: the per-parameter gradient histograms wandb logs are read as gradient
histograms (the per-tensor g² the v reconstruction needs), from run files wandb itself wrote
(tests/fixtures/wandb/watch, made by ``tools/runlab/make_wandb_fixtures.py --only watch``, wandb 0.31.0):

- ``plain/``: sample_logs/vcollapse trained again with wandb.watch(log_freq=100) and ``wandb.log(row, step=t)``;
- ``lightning/``: Lightning's WandbLogger.watch(log_freq=10) beside a TensorBoardLogger (a second watched model in
  that process: wandb names its tensors ``graph_1<name>``);
- ``hf/``: HF Trainer with ``WANDB_WATCH=gradients`` (log_freq 100, 300 steps).

expected.json holds, per histogram wandb's hook logged, the gradient it saw: [numel, min, max, mean g²]."""

from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path

import pytest

from adamdiag.io import wandb_log as W
from adamdiag.io.events import discover, read_run
from adamdiag.pipeline.scan import scan_paths

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "wandb"
SAMPLE_LOGS = Path(__file__).resolve().parents[2] / "sample_logs"
TRUTH = json.loads((FIXTURES / "expected.json").read_text())["watch"]
# wandb.watch's 64 equal buckets over [min, max], each value at its bucket's centre: the mean g² it gives (measured
# on these runs: within 3.1% of the exact one)
BUCKET_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each part's run folder, unpacked (gzip only stores the files wandb wrote)."""
    out = tmp_path_factory.mktemp("watch")
    got = {}
    for part in ("plain", "lightning", "hf"):
        dst = out / part
        shutil.copytree(FIXTURES / "watch" / part, dst, symlinks=True)
        for gz in dst.rglob("*.wandb.gz"):
            with gzip.open(gz, "rb") as f_in, open(gz.with_suffix(""), "wb") as f_out:
                shutil.copyfileobj(f_in, f_out)
            gz.unlink()
        got[part] = next((dst / "wandb").glob("*run-*"))
    return got


@pytest.mark.parametrize(("part", "tensors", "logged"), [("plain", 12, 8), ("lightning", 4, 10)])
def test_histograms_are_the_gradients_wandb_saw(watched: dict[str, Path], part: str, tensors: int, logged: int) -> None:
    """Every histogram is the gradient of the backward wandb's hook logged: its element count, min and max exactly
    (float32), its mean g² within the bucket estimate's tolerance; it lands in the row open when backward ran — in
    the plain loop (``wandb.log(step=t)`` after backward t) the row of step t - 1, under Lightning the row of that
    batch's own (0-based) global step: in both, backward count - 1."""
    ev = read_run(watched[part])
    h = ev.histograms
    assert len(h) == tensors * logged and h["approx"].all()
    assert sorted(TRUTH[part], key=int) == [str(s + 1) for s in sorted(h["step"].unique())]
    worst = 0.0
    for row in h.itertuples():
        name = row.tag.removeprefix("gradients/").removeprefix("graph_1")
        numel, lo, hi, g2 = TRUTH[part][str(int(row.step) + 1)][name]
        assert row.num == numel and math.isclose(row.min, lo, rel_tol=1e-6) and math.isclose(row.max, hi, rel_tol=1e-6)
        worst = max(worst, abs(row.sum_squares / row.num / g2 - 1))
    assert 0 < worst < BUCKET_TOLERANCE, worst  # an estimate (never exact on all), and a close one


def test_hf_trainer_watch_lands_on_the_trainer_step(watched: dict[str, Path]) -> None:
    """HF Trainer with WANDB_WATCH=gradients: every max(100, logging_steps) backward, on train/global_step — the
    optimizer step whose backward it was."""
    ev = read_run(watched["hf"])
    h = ev.histograms
    assert sorted(h["step"].unique()) == [100, 200, 300] and len(h) == 12
    for row in h.itertuples():
        numel, lo, hi, g2 = TRUTH["hf"][str(int(row.step))][row.tag.removeprefix("gradients/")]
        assert row.num == numel and math.isclose(row.min, lo, rel_tol=1e-6) and math.isclose(row.max, hi, rel_tol=1e-6)
        assert abs(row.sum_squares / row.num / g2 - 1) < BUCKET_TOLERANCE


def test_both_decoders_read_the_same_histograms(watched: dict[str, Path]) -> None:
    for run in watched.values():
        (f,) = run.glob("*.wandb")
        assert W.read_wandb(f).h_rows == W.read_wandb(f, fast=False).h_rows != []


def test_a_watched_run_names_the_collapsing_tensors(watched: dict[str, Path]) -> None:
    """The plain run diagnoses as sample_logs/vcollapse (same losses, logged to TensorBoard with exact
    histograms and checkpoints): the same verdict, blowup and warning step; its histograms add the per-tensor
    collapse (AD101 naming tensors) and say their g² is a bucket estimate."""
    (wb,) = scan_paths([watched["plain"]]).runs
    (tb,) = scan_paths([SAMPLE_LOGS / "vcollapse"]).runs
    assert (wb.verdict, wb.confidence, wb.blowup_step, wb.warning_step) == (
        tb.verdict,
        tb.confidence,
        tb.blowup_step,
        tb.warning_step,
    )
    assert wb.verdict == "v_collapse" and "histograms" in wb.sources
    per_tensor = [f for f in wb.findings if f.id == "AD101" and "tensors" in f.evidence]
    assert per_tensor and {t["tensor"] for t in per_tensor[0].evidence["tensors"]} <= set(TRUTH["plain"]["100"])
    bucketed = [f for f in wb.findings if f.id == "AD901" and "bucketed" in f.evidence]
    assert len(bucketed) == 1 and len(bucketed[0].evidence["bucketed"]) == 12


def test_lightning_watch_reads_on_the_trainer_step(watched: dict[str, Path]) -> None:
    """Lightning declares trainer/global_step as every metric's axis: the histograms sit on it too, beside the
    loss of the same batch; scan uses them (sources) and finds the TensorBoardLogger's blowup. The blowup is the
    targets moving by 50 (a data change no eps or lr fixes): the TensorBoard copy, loss only, is inconclusive; with
    the histograms a stale v in one tensor fits too (the rule stale_v) — never with confidence."""
    found = discover([watched["lightning"].parent.parent]).runs
    assert len(found) == 2
    ev = read_run(watched["lightning"])
    loss_steps = set(ev.scalars[ev.scalars["tag"] == "train_loss"]["step"])
    assert set(ev.histograms["step"]) <= loss_steps
    (wb,) = scan_paths([watched["lightning"]]).runs
    (tb,) = scan_paths([next((watched["lightning"].parent.parent / "tb").glob("version_*"))]).runs
    assert "histograms" in wb.sources and "histograms" not in tb.sources
    assert wb.blowup_step == tb.blowup_step == 64 and tb.verdict == "inconclusive"
    assert wb.confidence == "low" and wb.alternative is not None
    # no gradient norm logged: the four tensors' histograms together are the all-parameter trajectory
    assert any(f.id == "AD101" and f.evidence.get("tensor") == "global" for f in wb.findings)


@pytest.mark.parametrize("version", ["0.16.6", "0.19.11"])
def test_older_wandb_versions_read_the_same(tmp_path: Path, version: str) -> None:
    """wandb 0.16.6 keeps a histogram as one JSON item, 0.19.11 (like 0.31) as one item per leaf: both read as the
    gradients the hook saw (``make_wandb_fixtures.py --older-watch`` in a venv with that wandb)."""
    src = FIXTURES / "older_watch" / version
    truth = json.loads((src / "truth.json").read_text())
    (gz,) = src.rglob("*.wandb.gz")
    f = tmp_path / gz.name.removesuffix(".gz")
    with gzip.open(gz, "rb") as f_in, open(f, "wb") as f_out:
        shutil.copyfileobj(f_in, f_out)
    data = W.read_wandb(f)
    assert data.h_rows == W.read_wandb(f, fast=False).h_rows and len(data.h_rows) == 4 * len(truth) == 24
    for tag, step, _, lo, hi, num, _, sum_squares, approx in data.h_rows:
        numel, t_lo, t_hi, g2 = truth[str(step + 1)][tag.removeprefix("gradients/")]
        assert approx and num == numel and math.isclose(lo, t_lo, rel_tol=1e-6) and math.isclose(hi, t_hi, rel_tol=1e-6)
        assert abs(sum_squares / num / g2 - 1) < BUCKET_TOLERANCE


@pytest.mark.parametrize(
    "doc",
    [
        {"_type": "histogram", "values": [1, 2], "bins": [0.0, 1.0]},  # one edge short
        {"_type": "histogram", "values": [], "bins": [0.0]},
        {"_type": "histogram", "values": ["a"], "bins": [0.0, 1.0]},
        {"_type": "histogram", "values": [1], "bins": [0.0, math.inf]},
        {"_type": "histogram", "values": [0, 0], "bins": [0.0, 1.0, 2.0]},  # no values counted
        {"_type": "histogram", "values": [1], "packedBins": {"min": 0.0}},
        {"_type": "histogram"},
        {"_type": "histogram", "values": [1, 2], "bins": [1e308, -1e308, 1e308]},  # edges out of order
        {"_type": "histogram", "values": [-1, 2], "bins": [0.0, 1.0, 2.0]},  # a negative count
        {"_type": "histogram", "values": [1, 2], "bins": [0.0, math.nan, 2.0]},
        {"_type": "histogram", "values": [1], "packedBins": {"min": 0.0, "size": 1.0, "count": 10**12}},  # damaged
        {"_type": "histogram", "values": [1], "packedBins": {"min": 0.0, "size": 1.0, "count": math.inf}},
    ],
)
def test_an_unreadable_histogram_is_none(doc: dict) -> None:
    assert W.histogram_moments(doc) is None
