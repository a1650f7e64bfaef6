"""`scan --verify` / `check --verify` on a real run from the lab (issue 12 item 4), and the printed
`verify:` line run as-is.

The run (tests/replay/test_replay_outcomes.py's design: full-batch multi-task MLP, β2 0.99, eps 1e-8)
blows up at step 462 from v collapse; from the checkpoint at 450, eps 1e-3 avoids the blowup within the
default horizon while lr/3 and lr/10 leave v collapsing (at risk): the replay confirms v_collapse.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
from realruns import ENTRY, train_sh99
from typer.testing import CliRunner

from adamdiag.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("verify") / "sh99"
    train_sh99(out)
    return out


def scan_json(*args: object) -> dict:
    res = runner.invoke(app, ["scan", *map(str, args), "--format", "json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["runs"]
    return r


def test_verify_confirms_v_collapse_and_names_the_postponement(run):
    r = scan_json(run, "--verify", "--entry", ENTRY)
    ver = r["verification"]
    assert r["verdict"] == "v_collapse" and ver["confirms"] is True and r["verdict_source"] == "replay"
    assert r["confidence"] == "high" and ver["best"] == "eps=0.001"
    by = {v["name"]: v for v in ver["variants"]}
    assert by["original"]["outcome"] == "blowup" and by["eps=0.001"]["outcome"] == "avoided"
    assert {by[n]["outcome"] for n in by if n.startswith("lr=")} <= {"at_risk", "blowup"}
    ad701 = [f for f in r["findings"] if f["id"] == "AD701"]
    assert ad701 and ("postpones" in ad701[0]["message"] or "blows up" in ad701[0]["message"])
    assert ver["start_step"] == 450 and ver["horizon_steps"] >= 100 and ver["fidelity"]["reproduced"]
    # no lr rise since the checkpoint and the sized eps avoided it in the replay: the sizing stands as it was
    rec = r["recommendation"]
    assert rec["eps"] == 1e-3 and "sized_eps" not in rec and by["eps=0.001"]["outcome"] == "avoided"


def test_without_an_entry_the_run_is_not_verified_info(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no adamdiag.toml here or above the run
    r = scan_json(run, "--verify")
    (f,) = [f for f in r["findings"] if f["id"] == "AD703"]
    assert f["severity"] == "info" and "no replay entry" in f["message"]
    assert r["verdict"] == "v_collapse" and r["verdict_source"] == "logs" and r["verification"]["confirms"] is None


def test_a_malicious_entry_config_in_the_scanned_tree_never_runs(run, tmp_path, monkeypatch):
    tree = tmp_path / "third_party"
    shutil.copytree(run, tree / "sh99")
    marker = tmp_path / "pwned"
    (tree / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\ndef adamdiag_replay(c):\n    return {{}}\n"
    )
    (tree / "adamdiag.toml").write_text('[replay]\nentry = "evil.py:adamdiag_replay"\n')
    monkeypatch.chdir(tmp_path)
    r = scan_json(tree / "sh99", "--verify")
    assert not marker.exists()
    (f,) = [f for f in r["findings"] if f["id"] == "AD703"]
    assert "--trust-entry" in f["message"] and r["verdict"] == "v_collapse"


def test_an_entry_that_raises_is_a_one_line_finding(run, tmp_path):
    bad = tmp_path / "boom.py"
    bad.write_text("def adamdiag_replay(c):\n    raise RuntimeError('dataset not found')\n")
    r = scan_json(run, "--verify", "--entry", f"{bad}:adamdiag_replay")
    (f,) = [f for f in r["findings"] if f["id"] == "AD703"]
    assert "dataset not found" in f["message"] and "\n" not in f["message"]
    assert r["verdict"] == "v_collapse" and r["verification"]["confirms"] is None


def _relog(run: Path, dst: Path, loss_tag: str) -> Path:
    """A copy of ``run`` whose loss is logged under ``loss_tag`` (rewritten with torch's SummaryWriter)."""
    from torch.utils.tensorboard import SummaryWriter

    from adamdiag.analysis.frames import series
    from adamdiag.io.events import read_run

    shutil.copytree(run / "checkpoints", dst / "checkpoints")
    shutil.copy(run / "config.json", dst / "config.json")
    scalars = read_run(run).scalars
    w = SummaryWriter(str(dst))
    for old, new in {"train/loss": loss_tag, "train/grad_norm": "train/grad_norm", "train/lr": "train/lr"}.items():
        s = series(scalars, old)
        for step, value in zip(s.index, s.to_numpy()):
            w.add_scalar(new, float(value), int(step))
    w.close()
    return dst


def test_printed_verify_line_runs_as_is_with_a_custom_loss_tag(run, tmp_path):
    """A run whose loss is logged as `objective/total`: scan needs --loss-tag, and the verify line it
    prints carries it, so it runs unchanged."""
    dst = _relog(run, tmp_path / "custom", "objective/total")
    r = scan_json(dst, "--loss-tag", "objective/total")
    line = r["recommendation"]["verify"]
    assert "--loss-tag objective/total" in line
    args = shlex.split(line)[2:] + ["--entry", ENTRY, "--device", "cpu"]
    res = runner.invoke(app, ["replay", *args])
    assert res.exit_code == 0, res.output


def test_replay_picks_the_loss_tag_as_scan_does(run, tmp_path):
    """One auto-pick for scan and replay: a run logging plain `loss` needs no --loss-tag anywhere."""
    dst = _relog(run, tmp_path / "plain", "loss")
    r = scan_json(dst)
    assert r["loss_tag"] == "loss" and "--loss-tag" not in r["recommendation"]["verify"]
    res = runner.invoke(
        app,
        [
            "replay",
            str(dst / "checkpoints" / "step_000450.pt"),
            "--eps",
            "1e-3",
            "--entry",
            ENTRY,
            "--device",
            "cpu",
            "--format",
            "json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["loss_tag"] == "loss"


def test_check_verify_gates_on_the_verified_verdict(run):
    res = runner.invoke(app, ["check", str(run), "--verify", "--entry", ENTRY, "--device", "cpu", "--format", "json"])
    assert res.exit_code == 1
    (r,) = json.loads(res.stdout)["runs"]
    assert r["verification"]["confirms"] is True


def _damage(run: Path, dst: Path, step: int, how: str) -> None:
    """Copy ``run`` to ``dst`` and rewrite the checkpoint at ``step`` (torch.save) with a damaged v."""
    import torch

    shutil.copytree(run, dst)
    path = dst / "checkpoints" / f"step_{step:06d}.pt"
    ck = torch.load(path, weights_only=True)
    state = next(iter(ck["optimizer"]["state"].values()))
    if how == "nan":
        state["exp_avg_sq"].view(-1)[0] = float("nan")
    else:
        state["exp_avg_sq"].view(-1)[:3] = -1.0
    torch.save(ck, path)


def test_nan_in_the_optimizer_state_is_nonfinite_and_no_replay_start(run, tmp_path):
    _damage(run, tmp_path / "nan", 400, "nan")
    r = scan_json(tmp_path / "nan")
    assert r["verdict"] == "nonfinite", r["findings"]
    (f,) = [f for f in r["findings"] if f["id"] == "AD401"]
    assert f["step"] == 400 and "optimizer state" in f["message"]


def test_corrupt_checkpoint_is_ad403_and_never_the_replay_start(run, tmp_path):
    _damage(run, tmp_path / "neg", 450, "negative")
    r = scan_json(tmp_path / "neg")
    assert any(f["id"] == "AD403" for f in r["findings"]), r["findings"]
    verify_line = (r["recommendation"] or {}).get("verify") or ""
    assert "step_000450" not in verify_line and ("step_000400" in verify_line or not verify_line)


def test_verify_takes_scans_assumptions_for_a_checkpoint_without_eps(run, tmp_path):
    """A writer that keeps no eps (every checkpoint's param groups lost it): --verify cannot replay
    without it and says which flag gives it; with --assume-eps the replay runs and confirms."""
    import torch

    dst = tmp_path / "noeps"
    shutil.copytree(run, dst)
    for path in (dst / "checkpoints").glob("step_*.pt"):
        ck = torch.load(path, weights_only=True)
        for g in ck["optimizer"]["param_groups"]:
            g.pop("eps")
        torch.save(ck, path)
    r = scan_json(dst, "--verify", "--entry", ENTRY)
    (f,) = [f for f in r["findings"] if f["id"] == "AD703"]
    assert "lacks eps (give --assume-eps)" in f["message"] and r["verification"]["confirms"] is None
    assert any("unknown (not in the checkpoint): eps" in w for w in r["warnings"])
    r = scan_json(dst, "--verify", "--entry", ENTRY, "--assume-eps", "1e-8")
    assert r["verdict"] == "v_collapse" and r["verification"]["confirms"] is True
    assert any("eps=1e-08 assumed (--assume-eps)" in w for w in r["warnings"])
