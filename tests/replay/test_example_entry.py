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


def test_a_per_element_collapse_hidden_in_the_tensor_means_is_found_and_verified(tmp_path: Path) -> None:
    # 32 of the weight's 40 inputs go quiet: its mean v, kept up by the 8 active ones, falls ~5x, while the
    # median element's √v̂ falls 10^4x between the two checkpoints. Read from the means alone the run was
    # lr_too_high, "eps will not help" (review F2a); per element it is a v collapse, and --verify shows eps
    # avoiding the blowup — and lr/3 too, which is why lr_too_high stays the named alternative.
    spec = importlib.util.spec_from_file_location("replay_entry_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.train(tmp_path)
    args = ["scan", str(tmp_path), "--verify", "--entry", f"{EXAMPLE}:adamdiag_replay", "--trust-entry"]
    res = CliRunner().invoke(app, [*args, "--device", "cpu", "--format", "json"])
    assert res.exit_code in (0, 1), res.output
    r = json.loads(res.stdout)["runs"][0]
    assert (r["verdict"], r["alternative"]) == ("v_collapse", "lr_too_high")
    (f,) = [f for f in r["findings"] if f["id"] == "AD101"]
    assert f["evidence"]["source"] == "checkpoint elements" and f["evidence"]["tensors"] == ["weight"]
    assert f["evidence"]["fraction_fallen"] >= 0.5 and f["step"] == 300
    outcome = {v["name"]: v["outcome"] for v in r["verification"]["variants"]}
    assert outcome["original"] == "blowup"
    assert any(n.startswith("eps=") and o == "avoided" for n, o in outcome.items()), outcome
    assert "eps will not help" not in r["recommendation"]["message"]


def test_verify_drops_the_eps_claim_the_replay_refutes() -> None:
    # An lr recommendation that says "eps will not help" (the log showed no v collapse), after a replay in
    # which an eps change avoided the blowup too: the claim goes, what followed it stays.
    from adamdiag.pipeline.scan import scan_paths
    from adamdiag.pipeline.verify import _drop_refuted_eps_claim

    rep = scan_paths([Path(__file__).resolve().parents[2] / "sample_logs" / "lr_too_high"]).runs[0]
    msg = rep.recommendation["message"]
    assert "eps will not help" in msg and "keeps rising after the blowup" in msg
    _drop_refuted_eps_claim(rep, "eps=0.001")
    new = rep.recommendation["message"]
    assert "eps will not help" not in new and "the replay shows eps=0.001 avoids it too" in new
    assert "keeps rising after the blowup" in new  # the schedule's note survives
