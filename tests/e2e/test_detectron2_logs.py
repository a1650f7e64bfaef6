"""Detectron2's logs, written by its own trainer and writers (tests/fixtures/detectron2, made by
tools/runlab/make_detectron2_fixtures.py from detectron2's source, commit 02b5c4e2): its metrics.json is read as the
event files beside it, each loss there is the median of its last 20 iterations (checked against every raw loss the
model returned), and scan says what such a log cannot show (AD606) — a one-iteration spike of 2e5 in ``badbatch``
is invisible — while a divergence is found from metrics.json alone as from the events."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from adamdiag.errors import InputError
from adamdiag.io.detectron2_log import is_metrics_json, read_metrics_json
from adamdiag.io.events import discover, read_run
from adamdiag.pipeline.scan import scan_paths

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "detectron2"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
RUNS = ("badbatch", "diverge")


def only_metrics_json(tmp_path: Path, name: str) -> Path:
    """The run's output dir as it is when the event files are gone: metrics.json alone."""
    d = tmp_path / name
    d.mkdir()
    shutil.copy(FIXTURES / name / "metrics.json", d)
    return d


def series(events, tag: str) -> tuple[list[int], np.ndarray]:  # noqa: ANN001
    s = events.scalars[events.scalars["tag"] == tag].sort_values("step")
    return s["step"].tolist(), s["value"].to_numpy()


@pytest.mark.parametrize("name", RUNS)
def test_metrics_json_reads_as_the_event_files_beside_it(tmp_path: Path, name: str) -> None:
    js = read_run(only_metrics_json(tmp_path, name))
    tb = read_run(FIXTURES / name)  # the events win where both are
    assert tb.files[0].startswith(str(FIXTURES / name / "events.out.tfevents"))
    tags = sorted(set(tb.scalars["tag"]))
    assert (
        tags
        == sorted(set(js.scalars["tag"]))
        == sorted(["data_time", "loss_a", "loss_b", "lr", "rank_data_time", "total_loss"])
    )
    for tag in tags:
        a, b = series(js, tag), series(tb, tag)
        assert a[0] == b[0] == list(range(19, 300, 20)), tag
        np.testing.assert_allclose(a[1], b[1], rtol=1e-6)  # float32 in the event file


@pytest.mark.parametrize("name", RUNS)
def test_each_loss_is_the_median_of_its_last_20_iterations(tmp_path: Path, name: str) -> None:
    raw = EXPECTED[name]["raw"]
    js = read_run(only_metrics_json(tmp_path, name))
    for tag in ("total_loss", "loss_a", "loss_b"):
        per_iter = np.array([sum(r.values()) if tag == "total_loss" else r[tag] for r in raw])
        steps, logged = series(js, tag)
        want = [np.median(per_iter[s - 19 : s + 1]) for s in steps]
        np.testing.assert_allclose(logged, want, rtol=1e-12)


def test_a_bad_batch_is_invisible_and_scan_says_why(tmp_path: Path) -> None:
    raw = np.array([sum(r.values()) for r in EXPECTED["badbatch"]["raw"]])
    assert raw[150] > 1e4 * np.median(raw[130:150])  # the raw spike, one iteration
    for run in (FIXTURES / "badbatch", only_metrics_json(tmp_path, "badbatch")):
        (rep,) = scan_paths([run]).runs
        assert rep.verdict == "healthy" and rep.blowup_step is None
        (ad606,) = [f for f in rep.findings if f.id == "AD606"]
        assert ad606.evidence == {"tags": ["total_loss", "loss_a", "loss_b"], "window": 20}
        assert "one bad batch — never shows" in ad606.message


def test_a_divergence_is_found_from_metrics_json_as_from_the_events(tmp_path: Path) -> None:
    onset = EXPECTED["diverge"]["raw_onset"]
    (tb,) = scan_paths([FIXTURES / "diverge"]).runs
    (js,) = scan_paths([only_metrics_json(tmp_path, "diverge")]).runs
    assert (tb.verdict, tb.blowup_step) == (js.verdict, js.blowup_step)
    assert onset <= js.blowup_step <= onset + 20  # the first write after the median crossed
    assert any(f.id == "AD606" for f in js.findings) and any(f.id == "AD001" for f in js.findings)


def test_discovery(tmp_path: Path) -> None:
    """An output dir with events and metrics.json is one run (from its events); metrics.json alone is a run; a
    metrics.json that is no JSONWriter file (DVCLive's indented summary, an evaluation's one object) is none."""
    assert discover([FIXTURES]).runs == [FIXTURES / "badbatch", FIXTURES / "diverge"]
    only = only_metrics_json(tmp_path, "diverge")
    assert discover([tmp_path]).runs == [only]
    for i, text in enumerate(['{\n  "step": 10,\n  "loss": 0.5\n}\n', '{"bbox/AP": 40.1}\n', "not json\n", ""]):
        d = tmp_path / "other" / str(i)
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(text)
        assert not is_metrics_json(d / "metrics.json")
    with pytest.raises(InputError, match="Detectron2 or Sacred metrics.json, torchtune logs"):
        discover([tmp_path / "other"])


def test_a_cut_last_line_and_special_files(tmp_path: Path) -> None:
    d = only_metrics_json(tmp_path, "diverge")
    f = d / "metrics.json"
    text = f.read_text()
    f.write_text(text[: len(text) - 40])  # the last write cut short (the run still writing it)
    data = read_metrics_json(f)
    assert len({int(s) for s in data.s_step[0]}) == 14
    cut_at = len(text.encode()) - len(text.splitlines()[-1]) - 1
    assert data.warnings == [f"{f}: truncated record at byte {cut_at} (the run is still writing it?)"]
    f.write_text("{not json\n" + text)
    assert read_metrics_json(f).warnings == [f"{f}: 1 line(s) that are no JSON object with an iteration skipped"]
    fifo = tmp_path / "fifo" / "metrics.json"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    assert not is_metrics_json(fifo)  # never opened: a FIFO would block
