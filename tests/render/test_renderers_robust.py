"""The inspect and tags renderers (text, json, csv) on empty input and on real artifacts full of
NaN/Inf: an Adam checkpoint saved after NaN data reached the optimizer (every moment NaN), and an
event file whose scalars are NaN/±inf next to a run that logged no scalar at all. JSON output
never holds a NaN/Infinity literal. (The report renderers: test_html_report.py; replay's:
tests/replay/test_replay_output.py.)"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adamdiag.cli import app

runner = CliRunner()


def strict_json(text: str) -> dict:
    def refuse(literal: str) -> None:
        raise AssertionError(f"non-JSON literal {literal}")

    return json.loads(text, parse_constant=refuse)


def test_inspect_renderers_on_empty_input():
    from adamdiag.render.inspect import render_csv, render_text
    from adamdiag.results.inspect import to_json_obj

    assert render_text([], []).strip() == ""
    (header,) = list(csv.reader(io.StringIO(render_csv([], []))))
    assert header[:3] == ["path", "checkpoint_step", "tensor"]
    assert strict_json(json.dumps(to_json_obj([], []), allow_nan=False))["checkpoints"] == []


@pytest.fixture(scope="module")
def nan_run(tmp_path_factory) -> Path:
    """NaN in the inputs from step 150: the checkpoint at 200 holds NaN in every Adam moment."""
    from realruns import train_tiny

    return train_tiny(tmp_path_factory.mktemp("robust") / "nan", steps=200, nan_at=150, ckpt_every=100)


def inspect(run: Path, fmt: str) -> str:
    cks = [str(run / "checkpoints" / f"step_000{s}.pt") for s in (100, 200)]
    res = runner.invoke(app, ["inspect", *cks, "--format", fmt])
    assert res.exit_code == 0, res.output
    return res.stdout


def test_inspect_renderers_on_a_nan_checkpoint(nan_run):
    text = inspect(nan_run, "text")
    after = text[text.index("step_000200.pt") :]
    row = next(x for x in after.splitlines() if x.startswith("0.weight"))
    assert row.split()[-1] == "256" and " nan " in row  # all 256 elements non-finite; the statistics say nan

    data = strict_json(inspect(nan_run, "json"))
    ck = {c["step"]: c for c in data["checkpoints"]}
    w = next(t for t in ck[200]["tensors"] if t["name"] == "0.weight")
    assert w["v_mean"] is None and w["v_mean_nonfinite"] == "nan" and w["nonfinite"] == 256
    assert math.isfinite(next(t for t in ck[100]["tensors"] if t["name"] == "0.weight")["v_mean"])
    assert len(data["pairs"]) >= 1  # the decay-ratio view of 100 -> 200 is there, with NaN flagged

    rows = list(csv.DictReader(io.StringIO(inspect(nan_run, "csv"))))
    late = [r for r in rows if r["checkpoint_step"] == "200"]
    assert len(rows) == 8 and len(late) == 4
    assert all(r["v_mean"] == "" and r["nonfinite"] == r["numel"] for r in late)  # empty cell, never "nan"


def test_tags_renderers_on_empty_input_and_nonfinite_scalars(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from adamdiag.render.tags import render_tags_csv, render_tags_text
    from adamdiag.results.tags import tags_result

    assert render_tags_text([]) == "" and render_tags_csv([]) == "run,tag,kind,count,step_min,step_max,segments\n"
    assert strict_json(json.dumps(tags_result([]), allow_nan=False)) == {"schema": "adamdiag.tags/1", "runs": []}

    w = SummaryWriter(str(tmp_path / "logs" / "bad"))
    for s, v in enumerate([1.0, math.nan, math.inf, -math.inf, 0.5]):
        w.add_scalar("train/loss", v, s)
    w.close()
    w = SummaryWriter(str(tmp_path / "logs" / "textonly"))  # a run with no scalar or histogram at all
    w.add_text("notes", "hello", 0)
    w.close()
    logs = str(tmp_path / "logs")

    text = runner.invoke(app, ["tags", logs])
    assert text.exit_code == 0, text.output
    bad = text.stdout[text.stdout.index("/bad") :]
    assert "train/loss" in bad and " 5  0..4" in bad  # the non-finite points are counted, like the others
    assert "no scalar or histogram tags" in text.stdout[text.stdout.index("/textonly") :]

    data = strict_json(runner.invoke(app, ["tags", logs, "--format", "json"]).stdout)
    by = {Path(r["run"]).name: r for r in data["runs"]}
    assert by["bad"]["tags"][0]["count"] == 5 and by["textonly"]["tags"] == []

    rows = list(csv.DictReader(io.StringIO(runner.invoke(app, ["tags", logs, "--format", "csv"]).stdout)))
    assert [(Path(r["run"]).name, r["tag"], r["count"]) for r in rows] == [("bad", "train/loss", "5")]


def damage_records(path: Path, records: list[int]) -> None:
    """Flip one byte inside the payload of the given records of a real event file (TFRecord framing:
    u64 length, u32 length CRC, payload, u32 payload CRC), so each fails its payload CRC."""
    import struct

    b = bytearray(path.read_bytes())
    pos, offsets = 0, []
    while pos < len(b):
        (n,) = struct.unpack("<Q", b[pos : pos + 8])
        offsets.append(pos + 12 + n // 2)
        pos += 12 + n + 4
    for k in records:
        b[offsets[k]] ^= 0xFF
    path.write_bytes(bytes(b))


def test_scan_text_lists_every_input_problem_once(tmp_path):
    """AD902 "N input problem(s)" in the text output: every problem on its own line (not the first
    three), the same damage repeated in one file once with "× N alike", paths relative to the run;
    in Markdown one line of the table cell each."""
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    w = SummaryWriter(str(run))
    for s in range(300):
        w.add_scalar("train/loss", 1.0 / (1 + s), s)
    w.close()
    (events,) = run.glob("events.out.tfevents.*")
    damage_records(events, [50, 120, 200])
    (run / "events.out.tfevents.2.host").write_bytes(b"garbage" * 50)  # not an event file at all

    res = runner.invoke(app, ["scan", str(run)])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    k = next(i for i, x in enumerate(lines) if "AD902 warning" in x)
    assert lines[k].endswith("AD902 warning: 5 input problem(s):")
    assert lines[k + 1].startswith(f"    - {events.name}: CRC mismatch in record at byte ")
    assert lines[k + 1].endswith("; record skipped (× 3 alike)")
    assert lines[k + 2 : k + 4] == [
        "    - events.out.tfevents.2.host: corrupt record header at byte 0; no valid record after it (350 bytes "
        "unreadable)",
        "    - events.out.tfevents.2.host: no readable records; not a TensorBoard event file?",
    ]
    assert k + 4 == len(lines) or not lines[k + 4].startswith("    - ")
    md = runner.invoke(app, ["scan", str(run), "--format", "markdown"]).stdout
    (row,) = [x for x in md.splitlines() if x.startswith("| AD902 |")]
    assert row.count("<br>") == 3 and "(× 3 alike)<br>events.out.tfevents.2.host: corrupt record header" in row
    # the JSON keeps the finding as it was (message and evidence): only the text layout changed
    data = strict_json(runner.invoke(app, ["scan", str(run), "--format", "json"]).stdout)
    (f,) = [f for f in data["runs"][0]["findings"] if f["id"] == "AD902"]
    assert f["message"].startswith("5 input problem(s): ") and len(f["evidence"]["warnings"]) == 5


def test_inspect_text_of_name_keyed_state_keeps_names_whole(tmp_path):
    """torch.distributed's get_optimizer_state_dict keys the state by parameter name: the group/index column
    then shows the group only (the index is the name in the first column), so the names are not folded."""
    import torch
    from torch import nn
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.Linear(32, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(16, 8)).pow(2).mean().backward()
        opt.step()
    osd = get_optimizer_state_dict(model, opt)
    assert "2.weight" in osd["state"]  # name-keyed, as written by the real API
    path = tmp_path / "fqn.pt"
    torch.save({"model": get_model_state_dict(model), "optimizer": osd, "step": 3}, path)
    res = runner.invoke(app, ["inspect", str(path)], env={"COLUMNS": "120"})
    assert res.exit_code == 0, res.output
    rows = {line.split()[0]: line.split()[1] for line in res.stdout.splitlines()[3:] if line.strip()}
    assert set(rows) == {"0.weight", "0.bias", "2.weight", "2.bias", "3.weight", "3.bias"}
    assert set(rows.values()) == {"0"}
