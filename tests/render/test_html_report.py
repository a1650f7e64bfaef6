"""`adamdiag report` → one self-contained HTML page, `show` re-renders a saved report without
recomputing, Report.from_dict ignores unknown keys and restores non-finite values, every renderer
works on an empty report and on one with non-finite values, and (marked `browser`) a real headless
chromium renders the page. Runs are written by torch's SummaryWriter."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from adamdiag.analysis.downsample import minmax_downsample
from adamdiag.cli import app
from adamdiag.render import render
from adamdiag.results.report import Finding, Report, RunReport

runner = CliRunner()
SAMPLES = Path(__file__).resolve().parents[2] / "sample_logs"
FORMATS = ("text", "json", "markdown", "junit", "github", "html")


def write(logdir: Path, loss: list[float], grad: list[float] | None = None) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(logdir))
    for s, v in enumerate(loss):
        w.add_scalar("train/loss", v, s)
        if grad is not None:
            w.add_scalar("train/grad_norm", grad[s], s)
    w.close()
    return logdir


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, Path]:
    """(runs root, the report saved as JSON with its series)."""
    root = tmp_path_factory.mktemp("html")
    n = 2400  # more points than a series keeps (2000): the downsampling is exercised
    blow = [1.0 / (1 + s) if s < 2200 else 1.0 / 2201 * 1000 for s in range(n)]
    write(root / "blowup", blow, [0.1] * n)
    nanrun = [1.0 / (1 + s) for s in range(300)]
    nanrun[200:] = [float("nan")] * 100
    write(root / "nan", nanrun)
    out = root / "report.json"
    res = runner.invoke(app, ["report", str(root), "-o", str(out)])
    assert res.exit_code == 0, res.output
    return root, out


class Page(HTMLParser):
    """What the checks need from a page: section ids, headings, tags, and every URL it names."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.h3: list[str] = []
        self._in_h3 = False
        self.css = ""
        self._in_style = False
        self.figures: list[str] = []  # class of every <figure> that holds an inline <svg>
        self._figure: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id", ""))
        if tag == "figure":
            self._figure = a.get("class", "")
        if tag == "svg" and self._figure is not None:
            self.figures.append(self._figure)
            self._figure = None
        self._in_h3 = tag == "h3"
        self._in_style = tag == "style"
        for k in ("src", "href", "xlink:href", "action", "data", "poster"):
            if a.get(k):
                self.urls.append(a[k])
        for v in a.values():  # url(...) in style/clip-path attributes
            self.urls += [u.strip("'\"") for u in _css_urls(v or "")]

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = None
        self._in_h3 = self._in_h3 and tag != "h3"
        self._in_style = self._in_style and tag != "style"

    def handle_data(self, data):
        if self._in_h3:
            self.h3.append(data)
        if self._in_style:
            self.css += data


def _css_urls(text: str) -> list[str]:
    import re

    return re.findall(r"url\(([^)]*)\)", text)


# h3 heading of each optional figure -> the class of its <figure>: a heading comes with its inline SVG
FIGURES = {"Second moment": "signals", "g²/v̂ per tensor": "r-tensors", "Replay overlay": "replay"}


def check_page(text: str, runs: int) -> Page:
    p = Page()
    p.feed(text)
    assert p.sections == ["summary"] + [f"run-{i}" for i in range(runs)]
    assert p.h3.count("Findings") == runs and p.h3.count("Recommendation") == runs
    for head, cls in FIGURES.items():
        assert p.h3.count(head) == p.figures.count(cls), (head, p.figures)
    assert "script" not in p.tags and "link" not in p.tags and "iframe" not in p.tags
    urls = p.urls + _css_urls(p.css)
    assert all(u.startswith(("#", "data:")) for u in urls), [u for u in urls if not u.startswith(("#", "data:"))]
    return p


@pytest.mark.slow
def test_report_html_is_self_contained(saved, tmp_path):
    root, _ = saved
    page = tmp_path / "report.html"
    res = runner.invoke(app, ["report", str(root / "blowup"), str(root / "nan"), "-o", str(page)])
    assert res.exit_code == 0, res.output
    text = page.read_text()
    p = check_page(text, 2)
    assert p.tags.count("svg") == 3  # curves per run + the r = g²/v̂ figure of the run with a gradient norm
    assert "blowup step 2200" in text  # the marker's legend
    assert len(text) < 3_000_000
    again = runner.invoke(app, ["report", str(root / "blowup"), str(root / "nan"), "-o", str(tmp_path / "again.html")])
    assert again.exit_code == 0 and (tmp_path / "again.html").read_text() == text  # byte for byte


def test_show_rerenders_without_recomputing(saved, tmp_path):
    root, out = saved
    data = json.loads(out.read_text())
    by = {Path(r["run"]).name: r for r in data["runs"]}
    loss = by["blowup"]["series"]["loss"]
    assert loss["points"] == 2400 and len(loss["step"]) <= 2000
    late = [v for st, v in zip(loss["step"], loss["value"]) if st >= 2200]
    assert late and max(late) == pytest.approx(1000 / 2201)  # the blowup level survived the downsampling
    assert "nonfinite" in by["nan"]["series"]["loss"]
    shutil.rmtree(root / "blowup")  # nothing is read again: the runs may be gone
    shutil.rmtree(root / "nan")
    first = runner.invoke(app, ["show", str(out), "-f", "html"]).stdout
    p = check_page(first, 2)
    # curves of both runs, and r = g²/v̂ of the run that logged its gradient norm; all inline
    assert p.tags.count("svg") == 3 and "blowup step 2200" in first and "collapse threshold" in first
    assert p.h3.count("Second moment") == 1
    assert len(first) < 3_000_000
    assert "# adamdiag report" in runner.invoke(app, ["show", str(out), "-f", "markdown"]).stdout
    assert "2 runs:" in runner.invoke(app, ["show", str(out)]).stdout
    res = runner.invoke(app, ["show", str(tmp_path / "missing.json")])
    assert res.exit_code == 2 and res.stderr.startswith("adamdiag: error: cannot read")


def test_from_dict_ignores_unknown_keys_and_restores_nonfinite():
    rep = Report(
        runs=[
            RunReport(
                run="r",
                verdict="nonfinite",
                findings=[Finding("AD401", "error", "NaN", step=3, evidence={"peak": float("inf"), "x": 1.0})],
                recommendation={"eps": float("nan"), "message": "m"},
            )
        ],
        tool_version="0.1.0",
    )
    d = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    d["from_the_future"] = 1
    d["runs"][0]["new_field"] = {"a": 1}
    d["runs"][0]["findings"][0]["new_key"] = "x"
    back = Report.from_dict(d)
    f = back.runs[0].findings[0]
    assert f.evidence["peak"] == math.inf and "peak_nonfinite" not in f.evidence and f.evidence["x"] == 1.0
    assert math.isnan(back.runs[0].recommendation["eps"])
    assert back.to_dict() == rep.to_dict()


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_renderer_on_empty_and_nonfinite_reports(fmt):
    empty = render(Report(), fmt)
    assert isinstance(empty, str) and empty
    nan = float("nan")
    rep = Report(
        runs=[
            RunReport(
                run="r",
                verdict="nonfinite",
                loss_tag="loss",
                findings=[Finding("AD401", "error", "NaN from step 2", step=2, evidence={"v": nan})],
                verification={
                    "checkpoint": "ck.pt",
                    "start_step": 1,
                    "horizon_steps": 3,
                    "confirms": None,
                    "fidelity": {"reproduced": False, "max_rel_dev": nan, "message": "diverged"},
                    "variants": [
                        {"name": "original", "eps": 1e-8, "beta2": 0.999, "lr": 0.01 / 3, "outcome": "blowup"},
                        {"name": "eps=0.001", "eps": 1e-3, "lr": nan, "outcome": "at_risk", "final_loss": math.inf},
                    ],
                },
                series={
                    "loss": {
                        "tag": "loss",
                        "points": 4,
                        "step": [0, 1, 2, 3],
                        "value": [1.0, 0.5, None, None],
                        "nonfinite": {"2": "nan", "3": "inf"},
                    },
                    "r_tensors": {
                        "threshold": 0.1,
                        "selected_by": "findings",
                        "candidates": 3,
                        "curves": [
                            {
                                "tensor": "w",
                                "source": "monitor",
                                "step": [1, 2, 3],
                                "value": [0.5, None, 0.0],
                                "nonfinite": {"2": "inf"},
                            },
                            {
                                "tensor": "b",
                                "source": "checkpoints",
                                "step": [2],
                                "value": [None],
                                "from_step": [1],
                                "nonfinite": {"2": "nan"},
                            },
                        ],
                    },
                    "replay": {
                        "start_step": 1,
                        "horizon_steps": 3,
                        "variants": [
                            {
                                "name": "original",
                                "outcome": "blowup",
                                "blowup_step": 3,
                                "step": [2, 3, 4],
                                "value": [0.4, None, None],
                                "nonfinite": {"3": "inf", "4": "nan"},
                            },
                            {"name": "eps=0.001", "outcome": "at_risk", "step": [2, 3, 4], "value": [0.4, 0.3, 0.2]},
                        ],
                    },
                },
            )
        ]
    )
    out = render(rep, fmt)
    assert "NaN from step 2" in out
    if fmt == "json":

        def refuse(c):
            raise ValueError(c)

        json.loads(out, parse_constant=refuse)  # no NaN/Infinity literals
    if fmt == "html":
        p = check_page(out, 1)
        assert p.figures == ["curves", "replay", "r-tensors"]  # no finite r of all parameters: no signals
        assert "eps=0.001: at_risk" in out and "original: blowup at 3" in out and "w (monitor)" in out
        assert "<td>0.00333</td>" in out and "<td>inf</td>" in out  # lr to 3 digits; a restored inf by name
    if fmt == "json":
        back = Report.from_dict(json.loads(out))
        assert back.runs[0].series == rep.runs[0].series  # the new series keys round-trip as they are


def test_downsample_keeps_extremes():
    s = np.arange(100_000)
    v = np.ones(100_000)
    v[54_321] = 1e6
    v[777] = -5
    v[90_000] = np.nan
    ds, dv = minmax_downsample(s, v, 2000)
    assert len(ds) <= 2000 and np.all(np.diff(ds) > 0)
    assert 54_321 in ds and 777 in ds and 90_000 in ds and np.isnan(dv[list(ds).index(90_000)])


@pytest.mark.browser
@pytest.mark.slow
def test_chromium_screenshot(saved, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    root, out = saved
    page = tmp_path / "r.html"
    page.write_text(runner.invoke(app, ["show", str(out), "-f", "html"]).stdout)
    shot = tmp_path / "shot.png"
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        "--window-size=1200,1600",
        page.as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=120)
    assert shot.is_file()
    import matplotlib.image

    img = matplotlib.image.imread(shot)
    dark = (img[..., :3].mean(axis=2) < 0.5).mean()
    assert img.shape[0] >= 1000 and 0.005 < dark < 0.5  # text and curves drawn, not a blank page


def test_checkpoint_views_of_a_collapsing_run():
    """The √v̂ band and decay-ratio view from two real checkpoints of the shipped v-collapse run."""
    from adamdiag.pipeline.series import checkpoint_views
    from adamdiag.pipeline.summary import summarize_checkpoint

    ck = Path(__file__).resolve().parents[2] / "sample_logs" / "vcollapse" / "checkpoints"
    views = checkpoint_views([summarize_checkpoint(ck / f"step_000{s}.pt") for s in (500, 600)], 0.999)
    band = views["sqrt_vhat"]
    assert band["step"] == [500, 600] and band["eps"] == 1e-8
    assert all(lo <= mid <= hi for lo, mid, hi in zip(band["p01"], band["p50"], band["p99"]))
    (pair,) = views["decay"]
    assert (pair["from_step"], pair["to_step"]) == (500, 600)
    assert pair["decay_ratio_p50"] == pytest.approx(1.0, abs=1e-3) and pair["pure_decay"] == 1.0  # v only decayed
    html = render(Report(runs=[RunReport(run="r", verdict="v_collapse", series=views)]), "html")
    check_page(html, 1)
    assert "Checkpoint decay ratios" in html and "eps = 1e-08" in html


def report_json(tmp_path: Path, *args: object) -> dict:
    """`adamdiag report ARGS -o x.json`, read back."""
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["report", *map(str, args), "-o", str(out)])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text())


def test_r_per_tensor_from_the_monitor_tags(tmp_path):
    """A run watched by AdamMonitor: each tensor's r is the monitor's own `adamdiag/<tensor>/r` tag,
    value for value (the most exact source); a healthy run shows the tensors with the lowest r."""
    from realruns import train_tiny

    from adamdiag.analysis.frames import series
    from adamdiag.io.events import read_run
    from adamdiag.pipeline.scan import scan_paths
    from adamdiag.pipeline.series import attach_series

    run = train_tiny(tmp_path / "mon", steps=200, monitor_every=1, ckpt_every=None, log_grad_norm=False)
    (r,) = report_json(tmp_path, run)["runs"]
    block = r["series"]["r_tensors"]
    assert block["selected_by"] == "lowest_r" and block["candidates"] == 4  # two Linear layers: 4 tensors
    names = {c["tensor"] for c in block["curves"]}
    assert names == {"0.weight", "0.bias", "2.weight", "2.bias"}
    scalars = read_run(run).scalars
    for c in block["curves"]:
        assert c["source"] == "monitor" and c["exact"] is True
        logged = series(scalars, f"adamdiag/{c['tensor']}/r")
        assert c["step"] == [int(s) for s in logged.index] and c["points"] == len(logged) == 200
        # the first step has no previous v̂: the monitor logs NaN, kept as null + its kind
        assert c["value"][0] is None and c["nonfinite"] == {"1": "nan"}
        assert c["value"][1:] == pytest.approx(logged.to_list()[1:], rel=1e-6)
    # downsampled like every curve: at most max_points, the extremes kept
    small = attach_series(scan_paths([run]), max_points=60).runs[0].series["r_tensors"]["curves"]
    for c in small:
        full = series(scalars, f"adamdiag/{c['tensor']}/r")
        assert len(c["step"]) <= 60 and c["points"] == 200
        kept = [v for v in c["value"] if v is not None]
        assert max(kept) == pytest.approx(full.max()) and min(kept) == pytest.approx(full.min())


def test_r_per_tensor_from_checkpoint_pairs(tmp_path):
    """No monitor, no histograms: the implied g²/v̂ of each checkpoint interval, per tensor, equal to
    the value computed here straight from the torch optimizer states."""
    import torch
    from realruns import train_tiny

    run = train_tiny(tmp_path / "ck", steps=300, ckpt_every=100)
    (r,) = report_json(tmp_path, run)["runs"]
    block = r["series"]["r_tensors"]
    assert block["candidates"] == 4 and len(block["curves"]) == 4
    states = {s: torch.load(run / "checkpoints" / f"step_{s:06d}.pt")["optimizer"] for s in (100, 200, 300)}
    model_names = ["0.weight", "0.bias", "2.weight", "2.bias"]
    for c in block["curves"]:
        assert c["source"] == "checkpoints" and c["step"] == [200, 300] and c["from_step"] == [100, 200]
        i = model_names.index(c["tensor"])
        for a, b, got in zip(c["from_step"], c["step"], c["value"]):
            va = states[a]["state"][i]["exp_avg_sq"].double().mean().item()
            vb = states[b]["state"][i]["exp_avg_sq"].double().mean().item()
            decay = 0.999 ** (b - a)
            gbar = (vb - decay * va) / (1 - decay)  # the mean g² the interval must have brought
            assert got == pytest.approx(max(gbar, 0.0) / (va / (1 - 0.999**a)), rel=1e-5)


def test_r_per_tensor_names_the_collapsed_tensors(tmp_path):
    """The shipped v-collapse run (gradient histograms + checkpoints): the curves are the tensors the
    findings name, capped at 6 -- the worst of each finding first -- and they show the collapse (r far
    below the threshold before the blowup); the page draws them."""
    (r,) = report_json(tmp_path, SAMPLES / "vcollapse")["runs"]
    block = r["series"]["r_tensors"]
    by_id = {f["id"]: f for f in r["findings"] if f["tensor"]}
    assert block["selected_by"] == "findings" and len(block["curves"]) == 6 < block["candidates"]
    names = [c["tensor"] for c in block["curves"]]
    assert names[:2] == [by_id["AD101"]["tensor"], by_id["AD105"]["tensor"]]  # reg_c.bias, trunk.2.weight
    listed = [t["tensor"] for t in by_id["AD101"]["evidence"]["tensors"]]
    assert set(names) <= set(listed) | {by_id["AD105"]["tensor"]}
    for c in block["curves"]:
        assert c["source"] == "histograms"
        before = [v for s, v in zip(c["step"], c["value"]) if r["warning_step"] <= s < r["blowup_step"] and v]
        assert before and float(np.median(before)) < block["threshold"], c["tensor"]
    saved = tmp_path / "r.json"
    page = runner.invoke(app, ["show", str(saved), "-f", "html"]).stdout
    p = check_page(page, 1)
    assert p.figures.count("r-tensors") == 1 and "6 of 12 tensors, named by the findings" in page
    assert "reg_c.bias (histograms)" in page


def test_verify_overlay_in_series_and_page(tmp_path):
    """--verify on the lab's v-collapse run (blows up at 462, replay from the checkpoint at 450): with
    series asked for, each replayed variant's loss is kept and drawn over the logged loss, labelled
    with its outcome; without, the JSON has no series (the block stays opt-in)."""
    from realruns import ENTRY, train_sh99

    run = tmp_path / "sh99"
    train_sh99(run)
    verify = ["--verify", "--entry", ENTRY, "--device", "cpu"]
    res = runner.invoke(app, ["scan", str(run), *verify, "--with-series", "--format", "json"])
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["runs"]
    ver, rep = r["verification"], r["series"]["replay"]
    assert rep["start_step"] == ver["start_step"] == 450 and rep["horizon_steps"] == ver["horizon_steps"]
    assert [(v["name"], v["outcome"]) for v in rep["variants"]] == [(v["name"], v["outcome"]) for v in ver["variants"]]
    by = {v["name"]: v for v in rep["variants"]}
    orig, fix = by["original"], by["eps=0.001"]
    assert orig["step"][0] == fix["step"][0] == 451 and len(fix["step"]) <= 2000
    assert fix["points"] == ver["horizon_steps"] and fix["step"][-1] == 450 + fix["points"]
    logged = dict(zip(r["series"]["loss"]["step"], r["series"]["loss"]["value"]))
    assert orig["value"][0] == pytest.approx(logged[451], rel=1e-3)  # the replay reproduces the log
    assert max(v for v in orig["value"] if v is not None) > 10 * max(fix["value"])  # the original blows up
    out = tmp_path / "v.html"  # `report --verify` asks for series itself
    assert runner.invoke(app, ["report", str(run), *verify, "-o", str(out)]).exit_code == 0
    page = out.read_text()
    p = check_page(page, 1)
    assert p.figures.count("replay") == 1 and "Replay overlay" in p.h3
    assert f"original: blowup at {orig['blowup_step']}" in page and "eps=0.001: avoided" in page
    plain = runner.invoke(app, ["scan", str(run), *verify, "--format", "json"])
    (r2,) = json.loads(plain.stdout)["runs"]
    assert r2["verification"]["variants"] == ver["variants"] and "series" not in r2


def test_no_r_per_tensor_for_a_run_that_is_not_adam(tmp_path):
    """Gradient histograms and the gradient norm of a run trained with SGD (its checkpoint says so:
    AD903) give no g²/v̂ curves -- there is no v; the same logs beside no checkpoint do (the control)."""
    import torch
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "sgd"
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    w = SummaryWriter(str(run))
    for step in range(1, 61):
        x = torch.randn(16, 4)
        loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        w.add_scalar("train/loss", loss.item(), step)
        w.add_scalar("train/grad_norm", torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item(), step)
        for name, p in model.named_parameters():
            w.add_histogram(f"grad/{name}", p.grad, step)
    w.close()
    (r,) = report_json(tmp_path, run)["runs"]
    assert {c["tensor"] for c in r["series"]["r_tensors"]["curves"]} == {"weight", "bias"}  # control
    assert "r" in r["series"]
    (run / "checkpoints").mkdir()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 60}, run / "checkpoints" / "s.pt")
    (r,) = report_json(tmp_path, run)["runs"]
    assert any(f["id"] == "AD903" for f in r["findings"]) and not {"r", "r_tensors"} & set(r["series"])
    assert r["series"]["loss"]["points"] == 60


def test_series_read_the_checkpoints_where_checkpoints_points(tmp_path):
    """`report --checkpoints DIR`: the checkpoint views and per-tensor r come from DIR, as the
    diagnosis did, not from the (empty) run folder."""
    from realruns import train_tiny

    run = train_tiny(tmp_path / "run", steps=300, ckpt_every=100)
    elsewhere = tmp_path / "ckpts"
    (run / "checkpoints").rename(elsewhere)
    (r,) = report_json(tmp_path, run, "--checkpoints", elsewhere)["runs"]
    assert "checkpoints" in r["sources"]
    assert r["series"]["sqrt_vhat"]["step"] == [100, 200, 300] and len(r["series"]["decay"]) == 2
    assert {c["source"] for c in r["series"]["r_tensors"]["curves"]} == {"checkpoints"}
