"""The log tree and checkpoints ``fairseq-train`` writes (tests/fixtures/fairseq_layout/, written by
tools/fwprobe/make_fairseq_fixture.py: fairseq's TensorboardProgressBarWrapper mirrored with torch's SummaryWriter,
which it uses — fairseq does not install on this Python).

``--tensorboard-logdir tb`` gets one writer per tag: ``tb/train_inner`` (every ``--log-interval`` updates),
``tb/train`` and ``tb/valid`` (per epoch), each opened with the command line as a text summary. They are one
run: the loss is ``train_inner/loss`` (the denser of the two train curves), the gradient norm fairseq's
``gnorm`` (before clipping: ``--clip-norm`` is read from the command line), the checkpoints
(``checkpoint_<epoch>_<updates>.pt``, the optimizer under ``last_optimizer_state``) are found beside the logs.

The ``vcollapse_clip`` run restarts its cosine lr at update 1001 on a collapsed v; its checkpoint at 1000 was
saved after the scheduler stepped, so it holds the *raised* lr (0.01) while the updates before it ran at 2.5e-8.
truth.json: fwprobe's counterfactual from that checkpoint (clipped like the run) — eps 1e-3 still blows up,
1e-2 avoids it. Sized from the checkpoint's own lr, eps was 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.io.events import read_run
from adamdiag.pipeline.scan import scan_paths

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "fairseq_layout"
runner = CliRunner()


def test_a_fairseq_tree_is_one_run_read_from_train_inner():
    res = runner.invoke(app, ["scan", str(FIX / "vcollapse_clip"), "--format", "json"])
    assert res.exit_code == 0, res.output
    (run,) = json.loads(res.stdout)["runs"]  # not three runs (train_inner, train, valid)
    assert run["run"].endswith("vcollapse_clip/tb")
    assert (run["loss_tag"], run["grad_norm_tag"]) == ("train_inner/loss", "train_inner/gnorm")
    assert "checkpoints" in run["sources"]


def test_fairseq_clip_norm_comes_from_its_command_line():
    rep = scan_paths([FIX / "vcollapse_clip"]).runs[0]
    clip = [f for f in rep.findings if f.id == "AD601"]
    assert len(clip) == 1, [f.message for f in clip]  # the clip tag's generic notice is not repeated
    assert clip[0].evidence["clip_norm"] == json.loads((FIX / "vcollapse_clip" / "truth.json").read_text())["clip_norm"]
    assert "fairseq's command line" in clip[0].message


def test_the_lr_a_checkpoint_lived_under_is_the_logged_one_up_to_it():
    cf = json.loads((FIX / "vcollapse_clip" / "truth.json").read_text())["counterfactual"]
    assert cf["eps1e-3"]["max_over_first"] > 10 > cf["eps1e-2"]["max_over_first"]  # what the fixture is
    rep = scan_paths([FIX / "vcollapse_clip"]).runs[0]
    assert (rep.verdict, rep.confidence, rep.blowup_step) == ("v_collapse", "high", 1010)
    rec = rep.recommendation
    assert rec["eps"] == 1e-2 and rec["sized_eps"] == 1e-4, rec
    assert "from the logged 2.47e-08 up to the start checkpoint (step 1000)" in rec["message"]


def test_a_healthy_fairseq_run():
    rep = scan_paths([FIX / "healthy"])
    (run,) = rep.runs
    assert (run.verdict, run.confidence) == ("healthy", "high")
    assert run.loss_tag == "train_inner/loss"
    # its log starts at update --log-interval, not 1: v̂ there is the first logged g² (a steady state). Seeding
    # the raw v with it put v̂ 1/(1-β2^N) too high and read the healthy run's first thousand steps as a v
    # collapse in progress (an AD101 warning, before session 15)
    scalars = read_run(FIX / "healthy" / "tb" / "train_inner").scalars
    assert int(scalars[scalars["tag"] == "gnorm"]["step"].min()) > 1
    assert not [f for f in run.findings if f.id == "AD101"], [f.message for f in run.findings]


def test_a_folder_of_experiments_lends_each_its_own_checkpoints(tmp_path):
    """``scan experiments/`` over several fairseq (or HF output_dir) folders: the named folder holds two trainings,
    so it lends nothing, but each experiment's folder holds one — its checkpoints/ beside its tb/ are found, and
    never the other experiment's."""
    import shutil

    shutil.copytree(FIX / "vcollapse_clip", tmp_path / "exp_a")
    shutil.copytree(FIX / "healthy", tmp_path / "exp_b")
    runs = {Path(r.run).parent.name: r for r in scan_paths([tmp_path]).runs}
    assert set(runs) == {"exp_a", "exp_b"}
    for name, r in runs.items():
        (lent,) = [f for f in r.findings if f.id == "AD901" and "beside the run's logs" in f.message]
        assert Path(lent.evidence["checkpoints_root"]) == (tmp_path / name).resolve()
    assert (runs["exp_a"].verdict, runs["exp_a"].confidence) == ("v_collapse", "high")
    assert runs["exp_a"].recommendation["eps"] == 1e-2  # sized from its own checkpoint at 1000
    assert runs["exp_b"].verdict == "healthy"
