"""DeepSpeed's own monitor (``"tensorboard": {"enabled": true}`` in ds_config) logs ``Train/Samples/lr`` (and,
from its pipeline engine, ``Train/Samples/train_loss``) once per optimizer step against ``global_samples`` =
step · train_batch_size (deepspeed 0.19.8's engine and pipe/engine sources), while its checkpoints are
``global_stepN``. scan, replay and show read those tags on
the step axis (step = samples / the spacing of the points), with an AD901 info that says so. Written with
torch's SummaryWriter making the engine's calls on a real Adam run."""

from __future__ import annotations

import torch

from adamdiag.io import events as E
from adamdiag.pipeline.scan import scan_paths

BATCH = 32


def _ds_run(logdir, steps: int = 400, shift_at: int = 300) -> None:
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(0)
    x = torch.randn(BATCH, 8)
    y = x @ torch.randn(8, 1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    w = SummaryWriter(str(logdir))
    for step in range(1, steps + 1):
        target = y if step < shift_at else y + 50.0
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        samples = step * BATCH  # the engine's global_samples after this step
        w.add_scalar("Train/Samples/train_loss", float(loss.detach()), samples)
        w.add_scalar("Train/Samples/lr", 1e-2, samples)
    w.close()


def test_samples_axis_is_read_as_steps(tmp_path):
    _ds_run(tmp_path)
    (rep,) = scan_paths([tmp_path]).runs
    assert rep.loss_tag == "Train/Samples/train_loss"
    assert 295 <= rep.blowup_step <= 301  # optimizer steps, not samples (9600)
    (f,) = [f for f in rep.findings if f.id == "AD901" and "samples" in f.message]
    assert f.severity == "info" and f"samples / {BATCH}" in f.message
    # replay and show read through read_run: the same axis
    ev = E.read_run(tmp_path)
    assert int(ev.scalars["step"].max()) == 400 and ev.notes == [f.message]


def test_a_tag_that_only_looks_like_it_keeps_its_steps(tmp_path):
    """Points that are not all multiples of one spacing are left as logged (no note)."""
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path))
    for s in (3, 10, 17, 30, 47):
        w.add_scalar("Train/Samples/train_loss", 1.0, s)
    w.close()
    ev = E.read_run(tmp_path)
    assert ev.scalars["step"].tolist() == [3, 10, 17, 30, 47] and ev.notes == []
