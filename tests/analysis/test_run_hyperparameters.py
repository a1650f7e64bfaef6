"""scan's hyperparameters from a checkpoint (analysis.evidence.hyperparameters / tensor_hyperparameters):
each tensor has its own param group's β2/eps/lr; the run's are those most elements use (not the first
tensor's); unknown values (io.checkpoints.hyper) never enter. Real torch.optim.AdamW checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from adamdiag.analysis.evidence import hyperparameters, tensor_hyperparameters
from adamdiag.io.checkpoints.hyper import Assumptions
from adamdiag.pipeline.summary import summarize_checkpoint


def _two_groups(path: Path, *, drop_eps: bool = False) -> Path:
    """An LLM-style recipe in small: the biases (few elements, listed first) with β2 0.999 and eps
    1e-8, the weights (most elements) with β2 0.95, eps 1e-6 and another lr."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 4))
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    opt = torch.optim.AdamW(
        [
            {"params": biases, "betas": (0.9, 0.999), "eps": 1e-8, "lr": 1e-3, "weight_decay": 0.0},
            {"params": weights, "betas": (0.9, 0.95), "eps": 1e-6, "lr": 3e-4},
        ]
    )
    for _ in range(3):
        model(torch.randn(8, 32)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    osd = opt.state_dict()
    if drop_eps:
        for g in osd["param_groups"]:
            g.pop("eps")
    torch.save({"model": model.state_dict(), "optimizer": osd}, path)
    return path


def test_each_tensor_its_own_group_and_the_run_the_majority(tmp_path):
    s = summarize_checkpoint(_two_groups(tmp_path / "ck.pt"))
    assert s.tensors[0].beta2 == 0.999  # the first tensor is a bias: the old rule took its β2
    assert hyperparameters(s) == (0.95, 1e-6, 3e-4)
    per = tensor_hyperparameters(s)
    assert per["0.bias"] == per["1.bias"] == (0.999, 1e-8, 1e-3)
    assert per["0.weight"] == per["1.weight"] == (0.95, 1e-6, 3e-4)


def test_unknown_values_never_enter(tmp_path):
    f = _two_groups(tmp_path / "ck.pt", drop_eps=True)
    s = summarize_checkpoint(f)
    assert hyperparameters(s) == (0.95, 1e-8, 3e-4)  # eps unknown everywhere: torch's default, not NaN
    assert all(h[1] == 1e-8 for h in tensor_hyperparameters(s).values())
    s = summarize_checkpoint(f, assume=Assumptions(eps=1e-7))
    assert hyperparameters(s)[1] == 1e-7 and all(h[1] == 1e-7 for h in tensor_hyperparameters(s).values())
    assert hyperparameters(None) == (0.999, 1e-8, None)


def _log_grad_histograms_and_step(model: nn.Module, opt: torch.optim.Optimizer, writer, step: int) -> None:
    """One training step of the histogram tests: a random batch, each parameter's gradient histogram at ``step``
    (named as ``model.named_parameters()`` names it), then the optimizer step."""
    model(torch.randn(8, 32)).pow(2).mean().backward()
    for n, p in model.named_parameters():
        writer.add_histogram(f"grad/{n}", p.grad, step)
    opt.step()
    opt.zero_grad()


def test_per_tensor_reconstructions_use_their_own_groups_beta2(tmp_path):
    """Gradient histograms of a real two-group AdamW run (SummaryWriter): each tensor's v is rebuilt with
    its own group's β2 and eps (0.999 for the biases, 0.95 for the weights), not the run's majority."""
    import pandas as pd
    from torch.utils.tensorboard import SummaryWriter

    from adamdiag.analysis.evidence import histogram_trajectories
    from adamdiag.io.events import read_run

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 4))
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    opt = torch.optim.AdamW(
        [
            {"params": biases, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
            {"params": weights, "betas": (0.9, 0.95), "eps": 1e-6},
        ]
    )
    w = SummaryWriter(str(tmp_path / "run"))
    for step in range(1, 31):
        _log_grad_histograms_and_step(model, opt, w, step)
    w.close()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "ck.pt")
    s = summarize_checkpoint(tmp_path / "ck.pt")
    s.step = 30
    hist = read_run(tmp_path / "run").histograms
    assert isinstance(hist, pd.DataFrame) and len(hist)
    trajs = {t.label: t for t in histogram_trajectories(hist, [s], 0.5, 1e-3)}
    assert (trajs["0.bias"].beta2, trajs["0.bias"].eps) == (0.999, 1e-8)
    assert (trajs["1.weight"].beta2, trajs["1.weight"].eps) == (0.95, 1e-6)


def test_histograms_of_a_ddp_model_meet_its_unwrapped_checkpoint(tmp_path: Path) -> None:
    """A DDP script logs model.named_parameters() ("module.1.weight") and saves model.module.state_dict()
    ("1.weight"): the histograms still take their tensor's β2/eps and checkpoint v from it (analysis.param_key) —
    the same trajectories as histograms named without the wrapper. Real DDP (gloo, one rank)."""
    import numpy as np
    import pandas as pd
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.tensorboard import SummaryWriter

    from adamdiag.analysis.evidence import histogram_trajectories
    from adamdiag.io.events import read_run

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = DistributedDataParallel(nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 4)))
        opt = torch.optim.AdamW(model.parameters(), betas=(0.9, 0.95), eps=1e-6)
        w = SummaryWriter(str(tmp_path / "run"))
        for step in range(1, 31):
            _log_grad_histograms_and_step(model, opt, w, step)
            if step == 20:
                torch.save({"model": model.module.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "ck.pt")
        w.close()
    finally:
        dist.destroy_process_group()
    s = summarize_checkpoint(tmp_path / "ck.pt")
    s.step = 20
    assert {t.name for t in s.tensors} == {"0.weight", "0.bias", "1.weight", "1.bias"}
    hist = read_run(tmp_path / "run").histograms
    assert isinstance(hist, pd.DataFrame) and set(hist["tag"].astype(str)) == {
        f"grad/module.{n}" for n in ("0.weight", "0.bias", "1.weight", "1.bias")
    }
    wrapped = {t.label: t for t in histogram_trajectories(hist, [s], 0.5, 1e-3)}
    plain = hist.assign(tag=hist["tag"].astype(str).str.replace("grad/module.", "grad/", regex=False))
    unwrapped = {t.label: t for t in histogram_trajectories(plain, [s], 0.5, 1e-3)}
    for name in ("0.weight", "1.bias"):
        a, b = wrapped[f"module.{name}"], unwrapped[name]
        assert (a.beta2, a.eps) == (b.beta2, b.eps) == (0.95, 1e-6)
        np.testing.assert_array_equal(a.vhat, b.vhat)
        np.testing.assert_array_equal(a.r, b.r)
