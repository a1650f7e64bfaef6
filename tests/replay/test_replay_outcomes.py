"""Replay outcomes on a real run from the lab (issue 12 item 3): avoided / at_risk / blowup, the horizon
rule, single changes vs --grid, exit codes, and the library entry ``verify_checkpoint`` with its trust
rule for discovered entries.

The run: the lab's multi-task MLP ("tiny", regression heads only, 32 examples, full batch, lr 3e-3,
β2 0.99, eps 1e-8) fits its targets to ~1e-7 within a few hundred steps; g²/v̂ then stays far below 0.1
while √v̂ decays, and the run blows up at step 462. β2 0.99 gives the mechanism of β2 0.999 with 10x
fewer steps. From the checkpoint at 450, eps 1e-3 bounds the step (avoided) while lr/3 keeps v
collapsing: no blowup within the default horizon, but at risk -- and replayed longer it does blow up
(the slow test below), a postponement, not a fix.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from realruns import ENTRY, train_sh99  # noqa: E402
from typer.testing import CliRunner

from adamdiag.cli import app

REPO = Path(__file__).resolve().parents[2]
START = 450


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("outcomes") / "sh99"
    truth = train_sh99(out)
    assert truth["summary"]["blowup_step"] == 462  # the lab's own detector, from the live run
    return out


def invoke(*args: object, cwd: Path | None = None):
    import os

    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(app, ["replay", *map(str, args), "--device", "cpu"])
    finally:
        os.chdir(old)


def ckpt(run: Path, step: int = START) -> Path:
    return run / "checkpoints" / f"step_{step:06d}.pt"


def test_lr_only_postpones_exit_1(run):
    """lr/3 alone: no blowup within the default horizon, but v is still collapsing at its end: the
    best any variant does is at_risk -> conclusion postponed, exit 1, AD106."""
    res = invoke(ckpt(run), "--entry", ENTRY, "--lr", "1e-3", "--format", "json")
    assert res.exit_code == 1, res.output
    d = json.loads(res.stdout)
    # default horizon: the logged blowup (462) + 1/(1-β2) = 100 steps
    assert d["steps"] == 462 + 100 - START and d["horizon"]["source"] == "default"
    assert "1/(1-β2) = 100 steps" in d["horizon"]["why"]
    assert d["fidelity"]["reproduced"] and d["fidelity"]["logged_spike_step"] == 462
    orig, lr3 = d["variants"]
    assert orig["outcome"] == "blowup" and orig["blowup_step"] == 462
    assert lr3["name"] == "lr=0.001" and lr3["outcome"] == "at_risk" and lr3["blowup_step"] is None
    assert lr3["truncated"] is False and lr3["steps_replayed"] == d["steps"]
    risk = lr3["risk"]
    assert risk["scope"] == "global" and risk["window"] == 50 and risk["r"] < 0.1
    assert risk["median_sqrt_vhat_end"] < risk["median_sqrt_vhat_start"]
    assert risk["median_sqrt_vhat_end"] > 10 * lr3["eps"]
    assert d["conclusion"] == "postponed" and d["exit_code"] == 1
    assert [f["id"] for f in d["findings"]] == ["AD106"] and d["findings"][0]["variant"] == "lr=0.001"
    from adamdiag.render.replay import render
    from adamdiag.replay.result import ReplayResult

    text = render(ReplayResult.from_dict(d), "text")
    assert "│ at_risk │" in text and "verdict: no variant avoids the blowup" in text and "(exit 1)" in text
    assert "AD106 lr=0.001 reaches step 562 without a blowup, but v is still collapsing" in text


def test_verify_checkpoint_eps_avoids_lr_is_at_risk(run, capsys):
    """The library call scan --verify uses: never prints to stdout, says which entry it imports."""
    from adamdiag.replay.protocol import Variant
    from adamdiag.replay.runner import verify_checkpoint

    variants = [Variant("eps=0.001", 1e-3, 0.99, 3e-3), Variant("lr/3", 1e-8, 0.99, 1e-3)]
    r = verify_checkpoint(
        ckpt(run),
        variants,
        run_dir=run,
        loss_tag="train/loss",
        log_offset="auto",
        device="cpu",
        budget_s=None,
        named_tensors=["reg_a.weight"],
        entry=ENTRY,
        trust_entry=False,
    )
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.startswith("adamdiag: importing entry ") and "multitask.py" in out.err
    assert [v.name for v in r.variants] == ["original", "eps=0.001", "lr/3"]
    assert [v.outcome for v in r.variants] == ["blowup", "avoided", "at_risk"]
    assert r.variants[0].blowup_step == 462 and r.fidelity.reproduced
    assert r.conclusion == "fixed" and r.exit_code == 0 and r.named_tensors == ["reg_a.weight"]
    assert "eps=0.001 avoids the blowup" in r.summary and "lr/3 reaches step 562" in r.summary


def test_single_changes_by_default_grid_on_request(run):
    res = invoke(ckpt(run), "--entry", ENTRY, "--eps", "1e-3", "--lr", "1e-3", "--steps", "3", "--format", "json")
    assert res.exit_code in (0, 1), res.output
    d = json.loads(res.stdout)
    assert [(v["name"], v["eps"], v["lr"]) for v in d["variants"]] == [
        ("original", 1e-8, 3e-3),
        ("eps=0.001", 1e-3, 3e-3),
        ("lr=0.001", 1e-8, 1e-3),
    ]
    # --steps overrides the default horizon (and a short replay that cannot reach the event is honest)
    assert d["steps"] == 3 and d["horizon"] == {"steps": 3, "why": "--steps", "source": "--steps"}
    res = invoke(ckpt(run), "--entry", ENTRY, "--eps", "1e-3,1e-2", "--lr", "1e-3", "--grid", "--steps", "3")
    assert res.exit_code in (0, 1), res.output
    for name in ("eps=0.001,lr=0.001", "eps=0.01,lr=0.001"):
        assert f"│ {name} " in res.stdout
    assert "│ lr=0.001 " not in res.stdout


def test_budget_cuts_variants_short_as_at_risk(run):
    from adamdiag.replay.protocol import Variant
    from adamdiag.replay.runner import verify_checkpoint

    r = verify_checkpoint(
        ckpt(run),
        [Variant("eps=0.001", 1e-3, 0.99, 3e-3), Variant("eps=0.01", 1e-2, 0.99, 3e-3)],
        run_dir=run,
        loss_tag="train/loss",
        log_offset=0,
        device="cpu",
        budget_s=1e-6,
        named_tensors=None,
        entry=ENTRY,
        trust_entry=False,
        on_import=None,
    )
    assert all(v.outcome == "at_risk" and v.truncated for v in r.variants)
    # one step cannot reproduce the logged blowup: the variants prove nothing, so nothing is concluded
    assert r.conclusion == "not_reproduced" and r.exit_code == 2
    assert any("time budget" in w for w in r.warnings)
    assert not r.fidelity.reproduced  # one step cannot reproduce the logged blowup: the caller says "not verified"
    from adamdiag.pipeline.verify import decide
    from adamdiag.results.report import RunReport

    rep = RunReport(run=str(run), verdict="v_collapse", blowup_step=512)
    decide(rep, r, {"original": {"eps": 1e-8, "beta2": 0.99, "lr": 3e-3}})
    (f,) = rep.findings  # scan --verify's AD703; the replay's fidelity and variants stay in the report
    assert (f.id, f.severity, f.step) == ("AD703", "warning", 512)
    assert f.message == f"not verified: the replay does not reproduce the log ({r.fidelity.message})"
    assert rep.verification is not None and rep.verification["confirms"] is None and rep.verdict_source == "logs"
    assert [v["name"] for v in rep.verification["variants"]] == [v.name for v in r.variants]


def test_discovered_entry_needs_trust(run, tmp_path, monkeypatch):
    """A log tree can carry an adamdiag.toml naming any code: verify_checkpoint imports an entry found
    by discovery only when it is the current directory's config or with trust_entry."""
    from adamdiag.replay.protocol import NoEntry, UntrustedEntry, Variant
    from adamdiag.replay.runner import verify_checkpoint

    tree = tmp_path / "downloaded"
    shutil.copytree(run, tree / "run")
    marker = tmp_path / "pwned"
    (tree / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\ndef adamdiag_replay(c):\n    return 1\n")
    (tree / "adamdiag.toml").write_text('[replay]\nentry = "evil.py:adamdiag_replay"\n')
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    notices: list[str] = []
    kw = dict(
        run_dir=tree / "run",
        loss_tag="train/loss",
        log_offset="auto",
        device="cpu",
        budget_s=None,
        named_tensors=None,
        entry=None,
        on_import=notices.append,
        steps=2,
    )
    variants = [Variant("eps=0.001", 1e-3, 0.99, 3e-3)]
    with pytest.raises(UntrustedEntry, match=r"evil\.py:adamdiag_replay named by .*adamdiag\.toml.*--trust-entry"):
        verify_checkpoint(ckpt(tree / "run"), variants, trust_entry=False, **kw)
    assert not marker.exists() and notices == []
    # trusted: imported (and announced before it ran); its bad return value is one InputError line
    from adamdiag.errors import InputError

    with pytest.raises(InputError, match="must return a dict"):
        verify_checkpoint(ckpt(tree / "run"), variants, trust_entry=True, **kw)
    assert marker.exists() and notices == [
        f"importing entry evil.py:adamdiag_replay from {tree / 'evil.py'} (named by {tree / 'adamdiag.toml'})"
    ]
    # run from inside the tree, it is the current directory's own config: allowed (the module is
    # imported once per process, so the notice, not the marker, shows it was taken)
    monkeypatch.chdir(tree)
    with pytest.raises(InputError, match="must return a dict"):
        verify_checkpoint(ckpt(tree / "run"), variants, trust_entry=False, **kw)
    assert len(notices) == 2
    # no entry anywhere: NoEntry (scan --verify: "not verified: no replay entry")
    (tree / "adamdiag.toml").unlink()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(NoEntry):
        verify_checkpoint(ckpt(tree / "run"), variants, trust_entry=False, **kw)


def test_checkpoint_after_the_blowup_is_one_line(run):
    res = invoke(ckpt(run, 500), "--entry", ENTRY, "--lr", "1e-3")
    assert res.exit_code == 2
    assert "is not before the logged blowup at step 462" in res.stderr
    assert "Traceback" not in res.output


@pytest.mark.slow
def test_lr_over_3_blows_up_later_when_replayed_long_enough(run):
    """What at_risk predicted: replayed far past the default horizon, lr/3 blows up after all while
    eps 1e-3 stays avoided."""
    res = invoke(ckpt(run), "--entry", ENTRY, "--lr", "1e-3", "--eps", "1e-3", "--steps", "1200", "--format", "json")
    d = json.loads(res.stdout)
    orig, eps, lr3 = d["variants"]
    assert eps["outcome"] == "avoided"
    assert lr3["outcome"] == "blowup" and lr3["blowup_step"] > orig["blowup_step"] + 100
    assert f"lr=0.001 postpones the blowup from 462 to {lr3['blowup_step']}" in d["summary"]
