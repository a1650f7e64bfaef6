"""An entry is checked before it is called (issue 16): exactly one positional parameter, called with
sys.argv set to [entry] (a script's argparse sees no adamdiag options), a non-dict return refused — each
a one-line error, exit 2."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from adamdiag.cli import app

CKPT = Path(__file__).resolve().parents[2] / "sample_logs" / "vcollapse" / "checkpoints" / "step_000600.pt"


def _replay(entry: str):
    return CliRunner().invoke(app, ["replay", str(CKPT), "--eps", "1e-3", "--entry", entry, "--device", "cpu"])


def _lines(res) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if not ln.startswith("adamdiag: importing entry")]


def test_an_entry_with_the_wrong_signature_is_never_called(tmp_path):
    marker = tmp_path / "called"
    (tmp_path / "train.py").write_text(f"def main(cfg, out):\n    open({str(marker)!r}, 'w')\n")
    res = _replay(f"{tmp_path / 'train.py'}:main")
    assert res.exit_code == 2 and not marker.exists()
    (line,) = _lines(res)
    assert "must take exactly one argument" in line


def test_an_entry_sees_its_own_argv_not_adamdiags(tmp_path):
    (tmp_path / "cli_entry.py").write_text(
        "import argparse, sys\n"
        "def entry(checkpoint):\n"
        "    p = argparse.ArgumentParser(); p.add_argument('--lr', type=float, default=1.0)\n"
        "    p.parse_args()  # would choke on replay's --eps/--entry if it saw adamdiag's argv\n"
        "    return 42\n"
    )
    res = _replay(f"{tmp_path / 'cli_entry.py'}:entry")
    assert res.exit_code == 2
    (line,) = _lines(res)
    assert "must return a dict" in line  # it ran, parsed nothing of ours, and its non-dict was refused
