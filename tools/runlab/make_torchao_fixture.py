"""Writes tests/fixtures/torchao/adamw8bit.pt: a real ``torchao.optim.AdamW8bit`` checkpoint
(``torch.save({"model", "optimizer"})`` after 3 steps of a small MLP), whose m and v are torchao's
``OptimState8bit`` tensor subclasses — what Hugging Face ``optim="adamw_torch_8bit"`` saves too.
adamdiag refuses it by name (without torchao, and with --trust-checkpoint: its statistics would read
the subclass wrapper's memory as values).

Needs torchao (0.18.0 was used, installed with ``pip install --target DIR --no-deps torchao`` and put on
PYTHONPATH, leaving the project's environment alone)::

    PYTHONPATH=DIR python tools/runlab/make_torchao_fixture.py tests/fixtures/torchao
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from torch import nn


def main() -> None:
    from torchao.optim import AdamW8bit

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 80), nn.ReLU(), nn.Linear(80, 4))
    opt = AdamW8bit(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 64, generator=g)).pow(2).mean().backward()
        opt.step()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, out / "adamw8bit.pt")


if __name__ == "__main__":
    main()
