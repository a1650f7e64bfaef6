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


def test_verify_drops_the_eps_claim_the_replay_refutes(tmp_path: Path) -> None:
    # The example (a per-element collapse hidden in the tensor means of its two checkpoints) is scanned
    # lr_too_high, "eps will not help"; --verify shows eps avoiding the blowup too. The recommendation must
    # not keep a claim the verification two lines above refutes.
    spec = importlib.util.spec_from_file_location("replay_entry_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.train(tmp_path)
    args = ["scan", str(tmp_path), "--verify", "--entry", f"{EXAMPLE}:adamdiag_replay", "--trust-entry"]
    res = CliRunner().invoke(app, [*args, "--device", "cpu", "--format", "json"])
    assert res.exit_code in (0, 1), res.output
    r = json.loads(res.stdout)["runs"][0]
    eps_avoided = [
        v for v in r["verification"]["variants"] if v["name"].startswith("eps=") and v["outcome"] == "avoided"
    ]
    assert eps_avoided, r["verification"]
    msg = r["recommendation"]["message"]
    assert "eps will not help" not in msg, msg
    if r["recommendation"]["action"] == "lower the learning rate":
        assert f"the replay shows {eps_avoided[0]['name']} avoids it too" in msg
