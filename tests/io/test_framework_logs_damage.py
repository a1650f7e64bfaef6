"""Damaged or odd framework log files (HF trainer_state.json, Lightning metrics.csv): one line and exit 2 where
nothing can be read, a diagnosis with a warning where something can — never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.io.events import read_run

CASES: dict[str, tuple[str, bytes, int, str]] = {
    # name: (file, content, exit code of scan, text the output must hold)
    "state_not_a_dict": ("trainer_state.json", b"[1, 2, 3]", 2, "no log_history list"),
    "state_history_not_a_list": ("trainer_state.json", json.dumps({"log_history": "x"}).encode(), 2, "no log_history"),
    "state_empty": ("trainer_state.json", b"", 2, "not valid JSON"),
    "state_binary": ("trainer_state.json", b"\x00\xff\xfe garbage", 2, "not valid JSON"),
    "state_odd_entries": (
        "trainer_state.json",
        json.dumps(
            {
                "global_step": 5,
                "log_history": [None, 3, {"step": "5", "loss": 1}, {"step": 3, "loss": "nan"}, {"step": 4, "loss": [1]}]
                + [{"step": s, "loss": 1.0 / s} for s in range(5, 30)],
            }
        ).encode(),
        0,
        "train/loss",
    ),
    "state_nan_and_inf": (
        "trainer_state.json",
        b'{"global_step": 3, "log_history": [{"step": 1, "loss": NaN}, {"step": 2, "loss": Infinity}]}',
        0,
        "train/loss",
    ),
    "state_int_beyond_float": (
        "trainer_state.json",
        b'{"log_history": [{"step": 1, "loss": 1' + b"0" * 400 + b"}]}",
        0,
        "",
    ),
    "csv_with_bom": ("metrics.csv", "\ufeffstep,loss\n1,2\n2,3\n3,4\n".encode(), 0, "'loss'"),
    "csv_header_only": ("metrics.csv", b"step,loss\n", 2, "no logged value after its header"),
    "csv_ragged_rows": (
        "metrics.csv",
        b"epoch,step,loss\n0,1,2\n0,2\n0,3,4,5\n" + b"0,4,1\n" * 3,
        0,
        "wrong number of cells",
    ),
    "csv_bad_cells": ("metrics.csv", b'step,"loss, train"\nabc,1\n1,"2.5"\n2,"x"\n3,inf\n', 0, ""),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_damaged_framework_logs(tmp_path: Path, name: str) -> None:
    file, content, code, text = CASES[name]
    (tmp_path / file).write_bytes(content)
    res = CliRunner().invoke(app, ["scan", str(tmp_path)])
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output and "internal error" not in res.output
    assert text in res.output
    if code == 2:
        assert len([ln for ln in res.output.splitlines() if ln.startswith("adamdiag: error")]) == 1


def test_a_bom_is_no_part_of_the_step_column(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_bytes("\ufeffstep,loss\n1,2\n2,3\n".encode())
    assert read_run(tmp_path).scalars["step"].tolist() == [1, 2]


def test_a_csv_row_csv_cannot_parse_is_passed_over(tmp_path: Path) -> None:
    """A damaged region of 200 kB with no delimiter is one field over csv's limit (csv.Error, was an internal
    error, found by fuzzing): that row is counted and left out, the rows after it are read."""
    rows = b"step,loss\n1,2\n2,3\n" + b"x" * 200_000 + b"\n3,4\n4,5\n"
    (tmp_path / "metrics.csv").write_bytes(rows)
    assert read_run(tmp_path).scalars["step"].tolist() == [1, 2, 3, 4]
    res = CliRunner().invoke(app, ["scan", str(tmp_path)])
    assert res.exit_code == 0 and "internal error" not in res.output, res.output


def test_dvclive_tsv_with_a_stray_carriage_return(tmp_path: Path) -> None:
    """A flipped bit that makes a carriage return inside a DVCLive row (csv: "new-line character seen in unquoted
    field", was an internal error, found by fuzzing): read, the row judged as any other."""
    import shutil

    src = Path(__file__).parent.parent / "fixtures" / "dvclive" / "hf"
    shutil.copytree(src, tmp_path / "hf")
    f = tmp_path / "hf" / "dvclive" / "plots" / "metrics" / "loss.tsv"
    lines = f.read_bytes().split(b"\n")
    lines[5] = lines[5][:2] + b"\r" + lines[5][2:]
    f.write_bytes(b"\n".join(lines))
    res = CliRunner().invoke(app, ["scan", str(tmp_path / "hf")])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and "internal error" not in res.output
