"""HF Trainer logs ``train/grad_norm`` *before* clipping (clip_grad_norm_'s return value) while Adam steps
with the clipped gradient, and writes its TrainingArguments, ``max_grad_norm`` among them, as the text
summary ``args`` (TensorBoardCallback: ``add_text("args", args.to_json_string())``). scan reads the clip
from there and reconstructs v from min(norm, clip): on this run the pre-clip norms fall from ~170 to ~3
while every step is clipped to 1, so the clipped gradient Adam saw kept its size — no quiet stretch — where
the raw norms read as a stale v. A real torch run with torch's SummaryWriter making the same calls."""

from __future__ import annotations

import json

import pytest
import torch

from adamdiag.io import events as E
from adamdiag.pipeline.scan import scan_paths


def _run(logdir, args: dict | None, *, megatron: bool = False) -> None:
    """``megatron``: the calls Megatron-LM makes instead (write_args_to_tensorboard: one ``add_text(arg,
    str(value))`` per argument; its scalars 'lm loss' and 'grad-norm', the norm before clipping)."""
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(0)
    x = torch.randn(128, 8)
    y = 10 * (x @ torch.randn(8, 1))
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    w = SummaryWriter(str(logdir))
    if args is not None and megatron:
        for k, v in args.items():
            w.add_text(k, str(v), global_step=0)
    elif args is not None:
        w.add_text("args", json.dumps(args, indent=2))
    loss_tag, gn_tag = ("lm loss", "grad-norm") if megatron else ("train/loss", "train/grad_norm")
    for step in range(1, 1201):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the norm before clipping
        opt.step()
        w.add_scalar(loss_tag, float(loss.detach()), step)
        w.add_scalar(gn_tag, float(gn), step)
    w.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfclip")
    _run(root / "hf", {"output_dir": "out", "learning_rate": 0.03, "max_grad_norm": 1.0})
    _run(root / "plain", None)
    _run(root / "megatron", {"lr": 0.03, "clip_grad": 1.0, "micro_batch_size": 128}, megatron=True)
    return root


def test_megatron_logs_its_clip_as_a_text_summary_of_its_own(runs):
    """Megatron-LM writes every argument as its own text summary; --clip-grad (default 1.0) is read from
    'clip_grad', and its 'grad-norm' (the norm before clipping) is then treated as HF's is."""
    (ev,) = E.read_runs([runs / "megatron"])
    assert E.writer_clip_norm(ev) == (1.0, "clip_grad in the 'clip_grad' text summary (Megatron-LM's arguments)")
    (mg,) = scan_paths([runs / "megatron"]).runs
    (hf,) = scan_paths([runs / "hf"]).runs
    assert (mg.loss_tag, mg.grad_norm_tag) == ("lm loss", "grad-norm")
    assert (mg.verdict, mg.blowup_step) == (hf.verdict, hf.blowup_step) == ("lr_too_high", hf.blowup_step)
    (f,) = [f for f in mg.findings if f.id == "AD601"]
    assert "Megatron-LM" in f.message and "min(norm, 1)" in f.message


def test_the_clip_comes_from_the_args_summary(runs):
    (ev,) = E.read_runs([runs / "hf"])
    assert E.writer_clip_norm(ev) == (1.0, "max_grad_norm in the 'args/text_summary' summary (HF Trainer's arguments)")
    (plain,) = E.read_runs([runs / "plain"])
    assert E.writer_clip_norm(plain) == (None, "")


def test_v_is_reconstructed_from_the_clipped_norm(runs):
    (hf,) = scan_paths([runs / "hf"]).runs
    (plain,) = scan_paths([runs / "plain"]).runs
    assert hf.blowup_step == plain.blowup_step is not None
    (f,) = [f for f in hf.findings if f.id == "AD601"]
    assert f.severity == "info" and "min(norm, 1)" in f.message
    # the same run read without the clip: the pre-clip norms' fall looks like a stale v
    assert plain.verdict == "v_collapse" and any(f.id == "AD101" for f in plain.findings)
    # with it: Adam's gradient kept its size (clipped to 1 at every step), no quiet stretch
    assert hf.verdict == "lr_too_high" and not any(f.id == "AD101" for f in hf.findings)


@pytest.mark.parametrize("value", [0.0, None, "1.0", True])
def test_no_clip_when_the_args_do_not_state_one(tmp_path, value):
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path))
    w.add_text("args", json.dumps({"max_grad_norm": value}))
    w.add_scalar("train/loss", 1.0, 1)
    w.close()
    (ev,) = E.read_runs([tmp_path])
    assert E.writer_clip_norm(ev) == (None, "")


def test_grad_clip_option_for_runs_that_do_not_log_it(runs):
    """Lightning's gradient_clip_val or a plain loop's clip_grad_norm_ is not in the logs: --grad-clip says it
    (scan, check, report alike); a non-positive value is a usage error (exit 2)."""
    from typer.testing import CliRunner

    from adamdiag.cli import app

    cli = CliRunner()
    res = cli.invoke(app, ["scan", str(runs / "plain"), "--grad-clip", "1", "--format", "json"])
    assert res.exit_code == 0, res.output
    (run,) = json.loads(res.stdout)["runs"]
    assert run["verdict"] == "lr_too_high"
    (f,) = [f for f in run["findings"] if f["id"] == "AD601"]
    assert "(--grad-clip)" in f["message"]
    res = cli.invoke(app, ["check", str(runs / "plain"), "--grad-clip", "0"])
    assert res.exit_code == 2 and "--grad-clip must be a positive number" in res.stderr


@pytest.mark.parametrize("value", ["0.0", "None", "abc"])
def test_megatron_without_clipping(tmp_path, value):
    """--clip-grad 0 turns Megatron's clipping off; anything not a positive number is no clip."""
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path))
    w.add_text("clip_grad", value, global_step=0)
    w.add_scalar("lm loss", 1.0, 1)
    w.close()
    (ev,) = E.read_runs([tmp_path])
    assert E.writer_clip_norm(ev) == (None, "")
