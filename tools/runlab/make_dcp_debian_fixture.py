"""Writes tests/fixtures/dcp_debian311/: a real ``torch.distributed.checkpoint`` saved by Debian 12's
system Python 3.11.2, whose enum members pickle as ``builtins.getattr(cls, name)`` in ``.metadata``.

Run it with that interpreter (a venv made from it, with torch installed)::

    /usr/bin/python3 -m venv /tmp/sysvenv && /tmp/sysvenv/bin/pip install torch==2.13.0
    /tmp/sysvenv/bin/python tools/runlab/make_dcp_debian_fixture.py tests/fixtures/dcp_debian311

Beside the checkpoint (``ckpt/``) it writes ``truth.pt``: the live optimizer state at save time
(plain tensors, readable with ``weights_only=True``), which the tests compare with what adamdiag reads.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    args = ap.parse_args()

    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, eps=1e-6)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).mean().backward()
        opt.step()
    msd, osd = get_state_dict(model, opt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # single-process save: DCP warns that no process group exists
        dcp.save({"model": msd, "optim": osd, "step": 3}, checkpoint_id=str(args.out / "ckpt"))
    truth = {
        fqn: {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in st.items()}
        for fqn, st in osd["state"].items()
    }
    torch.save({"python": sys.version, "torch": str(torch.__version__), "state": truth}, args.out / "truth.pt")
    print(f"wrote {args.out} with Python {sys.version.split()[0]}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
