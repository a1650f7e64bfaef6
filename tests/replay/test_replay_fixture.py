"""A tiny real run that blows up through v collapse, for the replay tests (shared by test_replay*.py).

The run's own script is written next to its logs as ``tiny_run.py`` and found through an
``adamdiag.toml`` there, exactly as a user's project would be: real torch.optim.Adam, real
SummaryWriter event file, real torch.save checkpoints.

Mechanism: linear regression on 8 + 32 features. After step 100 the 32 "B" features fade to 1e-4 of
their scale (a task that goes quiet), so their gradients shrink 1e4× and g² ≪ v: v decays like β2^k
(β2 = 0.9 keeps the test short) until √v̂ is as small as the tiny gradients and Adam's step lr·m̂/√v̂
is lr-sized again -- the B weights random-walk while the loss cannot see it. At step 341 the features
return and the loss jumps ~30×. A larger eps caps the step at lr·g/eps ≪ lr during the quiet stretch,
so replaying from step 90 with eps ≥ 1e-3 avoids the blowup.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

RUN_SOURCE = '''
"""Tiny run for adamdiag replay tests (see tests/test_replay_fixture.py)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

DA, DB, BATCH = 8, 32, 32
T_OFF, T_ON, STEPS = 100, 340, 380
LR, BETAS, EPS = 1e-2, (0.9, 0.9), 1e-8
NOISE, FADE = 0.1, 1e-4
CHECKPOINTS = (90, 200, 300)

_W = torch.randn(DA + DB, generator=torch.Generator().manual_seed(123)) / (DA + DB) ** 0.5


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(DA + DB, 1)


def batch(t: int, order: int = 0):
    g = torch.Generator().manual_seed(1000 + t + 7919 * order)
    x = torch.randn(BATCH, DA + DB, generator=g)
    if T_OFF < t <= T_ON:
        x[:, DA:] *= FADE
    y = (x @ _W)[:, None] + NOISE * torch.randn(BATCH, 1, generator=g)
    return x, y


def loss(model: nn.Module, b) -> torch.Tensor:
    x, y = b
    return ((model(x) - y) ** 2).mean()


def train(out) -> None:
    from torch.utils.tensorboard import SummaryWriter

    out = Path(out)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS, eps=EPS)
    writer = SummaryWriter(str(out))
    for t in range(1, STEPS + 1):
        b = batch(t)
        l = loss(model, b)
        writer.add_scalar("train/loss", l.item(), t)   # loss of batch t, before update t
        opt.zero_grad()
        l.backward()
        opt.step()
        if t in CHECKPOINTS:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": t},
                       out / "checkpoints" / f"step_{t:06d}.pt")
    writer.close()


def adamdiag_replay(checkpoint: str) -> dict:
    return {"model": make_model(), "batch": batch, "loss": loss, "clip_grad_norm": None}


def adamdiag_replay_shuffled(checkpoint: str) -> dict:
    """A different data order than the one that was logged: must fail the fidelity check."""
    return {"model": make_model(), "batch": lambda t: batch(t, order=1), "loss": loss, "clip_grad_norm": None}


def adamdiag_replay_list(checkpoint: str):
    return [make_model(), batch, loss]


def adamdiag_replay_no_model(checkpoint: str) -> dict:
    return {"batch": batch, "loss": loss}
'''

BLOWUP_STEP = 341
_CACHE: dict[str, Path] = {}


def import_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def make_tiny_run(root: Path) -> Path:
    """Train the tiny run into ``root`` (script, adamdiag.toml, event file, checkpoints)."""
    import torch

    root.mkdir(parents=True, exist_ok=True)
    (root / "tiny_run.py").write_text(RUN_SOURCE)
    (root / "adamdiag.toml").write_text('[replay]\nentry = "tiny_run.py:adamdiag_replay"\n')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        import_file(root / "tiny_run.py", "tiny_run_fixture_train").train(root)
    finally:
        torch.set_num_threads(threads)
    return root


def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run, trained once per test session."""
    if "run" not in _CACHE:
        _CACHE["run"] = make_tiny_run(tmp_path_factory.mktemp("replay") / "tiny")
    return _CACHE["run"]


def test_fixture_run_blows_up_at_the_return_of_the_quiet_features(tmp_path_factory):
    """The fixture must really show the phenomenon the replay tests rely on."""
    import numpy as np

    from adamdiag.analysis.frames import series
    from adamdiag.io.events import read_run

    run = tiny_run(tmp_path_factory)
    s = series(read_run(run).scalars, "train/loss")
    assert list(s.index[:3]) == [1, 2, 3] and s.index[-1] == 380
    before = float(np.median(s.loc[300:340]))
    assert s.loc[BLOWUP_STEP] > 10 * before  # the jump when the B features come back
    assert s.loc[BLOWUP_STEP - 1] < 3 * before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step_000090.pt",
        "step_000200.pt",
        "step_000300.pt",
    ]
