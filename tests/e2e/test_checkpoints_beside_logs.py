"""HF Trainer's layout: ``output_dir/checkpoint-N/optimizer.pt`` beside ``output_dir/runs/<stamp>/`` (its
TensorBoard logs). ``scan output_dir`` finds the checkpoints when that folder holds this one run (an AD901
info says where they came from); with two runs below it, none is lent. The artifacts are what the Trainer
writes, made by the same writers: a torch SummaryWriter (``train/loss``, ``train/grad_norm`` every step,
the end-of-training ``train/train_loss`` summary once) and ``torch.save(optimizer.state_dict())``."""

from __future__ import annotations

import torch

from adamdiag.pipeline.scan import scan_paths


def _hf_like_run(out, stamp: str, seed: int = 0) -> None:
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(seed)
    x = torch.randn(128, 8)
    y = x @ torch.randn(8, 1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    w = SummaryWriter(str(out / "runs" / stamp))
    for step in range(1, 301):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
        opt.step()
        w.add_scalar("train/loss", float(loss.detach()), step)
        w.add_scalar("train/grad_norm", float(gn), step)
        if step % 100 == 0:
            ck = out / f"checkpoint-{step}"
            ck.mkdir(parents=True, exist_ok=True)
            torch.save(opt.state_dict(), ck / "optimizer.pt")
    w.add_scalar("train/train_loss", 0.5, 300)
    w.close()


def test_checkpoints_beside_the_logs_are_found(tmp_path):
    out = tmp_path / "out"
    _hf_like_run(out, "Dec06_10-00-00_host")
    (rep,) = scan_paths([out]).runs
    assert rep.run == str(out / "runs" / "Dec06_10-00-00_host")
    assert "checkpoints" in rep.sources
    (f,) = [f for f in rep.findings if f.id == "AD901" and "beside the run's logs" in f.message]
    assert f.severity == "info" and f.evidence["checkpoints_root"] == str(out)
    assert rep.loss_tags == ["train/loss"]  # the one-number summary `train/train_loss` is no task curve
    # the run's own folder given: HF's output_dir two levels up is searched when this is its only stamp
    # (tests/e2e/test_hf_output_dir.py: not with a second one), and said the same way
    (own,) = scan_paths([out / "runs" / "Dec06_10-00-00_host"]).runs
    assert "checkpoints" in own.sources
    (g,) = [f for f in own.findings if f.id == "AD901" and "beside the run's logs" in f.message]
    assert g.evidence["checkpoints_root"] == str(out)


def test_two_runs_below_the_folder_borrow_no_checkpoints(tmp_path):
    out = tmp_path / "out"
    _hf_like_run(out, "a")
    _hf_like_run(out, "b", seed=1)
    reps = scan_paths([out]).runs
    assert len(reps) == 2
    for rep in reps:
        assert "checkpoints" not in rep.sources
        assert not [f for f in rep.findings if "beside the run's logs" in f.message]


def test_a_resumed_training_keeps_its_checkpoints(tmp_path):
    """resume_from_checkpoint logs into a new runs/<stamp>/ whose steps go on from the checkpoint: two runs
    below output_dir that are one training — both read output_dir's checkpoints."""
    from torch.utils.tensorboard import SummaryWriter

    out = tmp_path / "out"
    _hf_like_run(out, "first")
    w = SummaryWriter(str(out / "runs" / "resumed"))
    for step in range(201, 301):  # resumed from checkpoint-200
        w.add_scalar("train/loss", 1.0 / step, step)
        w.add_scalar("train/grad_norm", 0.1, step)
    w.close()
    reps = scan_paths([out]).runs
    assert len(reps) == 2
    for rep in reps:
        assert "checkpoints" in rep.sources, rep.run
        assert [f for f in rep.findings if "beside the run's logs" in f.message]
