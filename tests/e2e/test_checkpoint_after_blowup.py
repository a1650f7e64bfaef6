"""A run that kept only its last checkpoint (Lightning's default ModelCheckpoint) and logged no gradient
norm: the checkpoint holds the state the blowup left, nothing about what led to it, so the verdict is
inconclusive with a finding that says so — not a too-high lr with "eps will not help: v tracked the
gradients", which nothing in the data shows. A real torch run: Adam, SummaryWriter, torch.save."""

from __future__ import annotations

import torch

from adamdiag.pipeline.scan import scan_paths


def _run(tmp_path, ckpt_steps: list[int]):
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(0)
    x = torch.randn(128, 8)
    y = x @ torch.randn(8, 1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    w = SummaryWriter(str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    for step in range(1, 401):
        target = y if step < 300 else y + 50.0  # the data shifts: the loss jumps 1000x and stays up
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        w.add_scalar("train_loss_step", float(loss.detach()), step)
        if step in ckpt_steps:
            ck = {"state_dict": model.state_dict(), "optimizer_states": [opt.state_dict()], "global_step": step}
            torch.save(ck, tmp_path / "checkpoints" / f"step={step}.ckpt")
    w.close()
    (rep,) = scan_paths([tmp_path]).runs
    return rep


def test_only_a_checkpoint_after_the_blowup_is_inconclusive(tmp_path):
    rep = _run(tmp_path, [400])
    assert rep.blowup_step is not None and 295 <= rep.blowup_step <= 301
    assert rep.verdict == "inconclusive" and rep.confidence == "low"
    (f,) = [f for f in rep.findings if f.id == "AD901" and "blew up" in f.message]
    assert "checkpoints from before it (the checkpoints are from step 400, after it)" in f.message
    assert rep.recommendation is None


def test_checkpoints_before_the_blowup_still_decide(tmp_path):
    """With checkpoints before the blowup the optimizer state is evidence again (here: a verdict, not
    inconclusive, and no claim about v that the checkpoints do not back)."""
    rep = _run(tmp_path, [100, 200, 250, 400])
    assert rep.verdict != "inconclusive"
    text = (rep.recommendation or {}).get("message", "")
    assert "v tracked the gradients" not in text
