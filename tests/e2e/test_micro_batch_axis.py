"""litgpt's training loops (pretrain.py, finetune/*.py, over Lightning Fabric) log every metric at
``step=iter_num - 1`` — micro-batch iterations, ``gradient_accumulation_iters`` of them per optimizer step — and log
the optimizer step itself as a scalar ``step``; their checkpoints ``step-00000150/lit_model.pth`` hold an Adam
state that counts optimizer steps. Read as logged, a blowup at optimizer step 150 sat at "step 603" and scan
chose the checkpoint of step 200 — after the blowup — as the one to replay. The reader now puts such a run on
the optimizer-step axis with an AD901 info. The run below is that loop, written by Lightning Fabric's
TensorBoardLogger and ``fabric.save`` on a real AdamW run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adamdiag.io import events as E
from adamdiag.pipeline.scan import scan_paths

ACCUM = 4
SHIFT_AT = 150  # optimizer step from which the targets move: the blowup


def _litgpt_loop(out: Path, steps: int = 200) -> None:
    L = pytest.importorskip("lightning")
    from lightning.fabric.loggers import TensorBoardLogger

    fabric = L.Fabric(accelerator="cpu", devices=1, loggers=TensorBoardLogger(root_dir=out / "logs", name="tb"))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model, opt = fabric.setup(model, opt)
    state = {"model": model, "optimizer": opt, "iter_num": 0, "step_count": 0}
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1)
    g = torch.Generator().manual_seed(1)
    losses: list[float] = []
    while state["step_count"] < steps:
        state["iter_num"] += 1
        accumulating = state["iter_num"] % ACCUM != 0
        idx = torch.randint(0, 256, (16,), generator=g)
        target = y[idx] + (50.0 if state["step_count"] >= SHIFT_AT else 0.0)
        loss = torch.nn.functional.mse_loss(model(x[idx]), target)
        fabric.backward(loss / ACCUM)
        losses.append(loss.item())
        if not accumulating:
            opt.step()
            opt.zero_grad()
            state["step_count"] += 1
            metrics = {"loss": sum(losses[-ACCUM:]) / ACCUM, "iter": state["iter_num"], "step": state["step_count"]}
            fabric.log_dict({**metrics, "learning_rate": 1e-2}, step=state["iter_num"] - 1)
            if state["step_count"] % 50 == 0:
                fabric.save(out / f"step-{state['step_count']:08d}" / "lit_model.pth", state)
    fabric.logger.finalize("success")


def test_micro_batch_axis_is_read_as_optimizer_steps(tmp_path: Path) -> None:
    _litgpt_loop(tmp_path)
    (rep,) = scan_paths([tmp_path]).runs
    assert SHIFT_AT <= rep.blowup_step <= SHIFT_AT + 3, rep.blowup_step  # optimizer steps, not iterations (~603)
    (note,) = [f for f in rep.findings if f.id == "AD901" and "micro-batches" in f.message]
    assert note.severity == "info" and f"(logged step + 1) / {ACCUM}" in note.message
    # the checkpoint to replay is one before the blowup on the same axis
    assert rep.recommendation is not None
    assert rep.recommendation["replay"]["start_step"] <= rep.blowup_step
    assert "step-00000150" in rep.recommendation["replay"]["checkpoint"]
    ev = E.read_run(next(tmp_path.glob("logs/tb/version_*")))
    s = ev.scalars
    assert s.loc[s["tag"] == "step", "step"].tolist() == s.loc[s["tag"] == "step", "value"].astype(int).tolist()


def _write(path: Path, rows: dict[str, list[tuple[int, float]]]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(path))
    for tag, points in rows.items():
        for step, value in points:
            w.add_scalar(tag, value, step)
    w.close()


def test_counters_that_do_not_fit_keep_the_logged_axis(tmp_path: Path) -> None:
    """A counter equal to the axis, one whose ratio to the axis changes (a resumed run), or one that is not a
    whole number leaves every step as logged, with no note."""
    cases = {
        "same": [(s, float(s)) for s in (10, 20, 30, 40)],
        "ratio_changes": [(3, 1.0), (7, 2.0), (11, 3.0), (13, 4.0)],
        "fractional": [(3, 0.5), (7, 1.5), (11, 2.5)],
    }
    for name, points in cases.items():
        _write(tmp_path / name, {"step": points, "loss": [(s, 1.0) for s, _ in points]})
        ev = E.read_run(tmp_path / name)
        assert sorted(ev.scalars["step"].tolist()) == sorted(2 * [s for s, _ in points]), name
        assert ev.notes == [], name


def test_only_the_counters_event_file_moves(tmp_path: Path) -> None:
    """A second writer in the run folder (adamdiag's live monitor logs on the optimizer-step axis) keeps its
    steps: only the rows of the counter's own event file are rescaled."""
    points = range(1, 6)
    _write(
        tmp_path / "run", {"step": [(4 * k - 1, float(k)) for k in points], "loss": [(4 * k - 1, 1.0) for k in points]}
    )
    _write(tmp_path / "run", {"adamdiag/global/r": [(k, 1.0) for k in range(1, 6)]})
    ev = E.read_run(tmp_path / "run")
    s = ev.scalars
    assert s.loc[s["tag"] == "loss", "step"].tolist() == [1, 2, 3, 4, 5]
    assert s.loc[s["tag"] == "adamdiag/global/r", "step"].tolist() == [1, 2, 3, 4, 5]
    assert len(ev.notes) == 1 and "/ 4" in ev.notes[0]
