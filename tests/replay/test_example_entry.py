"""examples/replay_entry.py works as documented: train it, then `adamdiag replay --entry` on its checkpoint."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from typer.testing import CliRunner

from adamdiag.cli import app

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "replay_entry.py"


def test_example_entry_replays_its_own_run_bit_for_bit(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("replay_entry_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.train(tmp_path)

    ckpt = tmp_path / "checkpoints" / "step_000090.pt"
    args = ["replay", str(ckpt), "--entry", f"{EXAMPLE}:adamdiag_replay", "--eps", "1e-3", "--steps", "252"]
    res = CliRunner().invoke(app, [*args, "--device", "cpu", "--format", "json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["fidelity"]["reproduced"] is True and d["fidelity"]["max_rel_dev"] == 0.0
    original, eps = d["variants"]
    assert original["outcome"] == "blowup" and original["blowup_step"] == 341  # when the quiet features return
    assert eps["eps"] == 1e-3 and eps["outcome"] != "blowup"  # replayed to step 342: past the blowup
