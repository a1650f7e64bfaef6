"""Writes tests/fixtures/fastai: a fastai ``Learner`` run as fastai itself writes it, read by adamdiag in
tests/io/test_fastai.py (adamdiag never imports fastai).

    python -m venv v && v/bin/pip install torch==2.13.0 fastai tensorboard     # made with fastai 2.8.12
    v/bin/python tools/runlab/make_fastai_fixtures.py [--out tests/fixtures/fastai]

The training: a regression (8 inputs, Linear(8, 16), Tanh, Linear(16, 1)) with fastai's ``Adam`` (its defaults:
mom 0.9, sqr_mom 0.99, eps 1e-5, wd 0.01 decoupled), lr 1e-2, batches of 32 in order, 3 epochs of 16; the
targets of one batch — the 8th of the second epoch, iteration 24 — are scaled by 30 (a bad batch). Logged by
``TensorBoardCallback(log_preds=False)`` (``runs/``: fastai writes ``train_loss`` = its *smoothed* loss, a
debiased EMA with β 0.98, and every hyperparameter of every param group, ``lr_0``, ``mom_0``, ``sqr_mom_0``,
``eps_0``, ``wd_0``, at each batch) and saved with ``learn.save("model")`` (``models/model.pth``: the model's
state_dict and fastai's own optimizer state, ``{"state": [...], "hypers": L([...])}``).

``expected.json``: each iteration's own loss (``learn.loss``, fastai's per-batch loss) and the smoothed loss it
logged, and per parameter the optimizer's step and mean / max ``sqr_avg`` when it was saved.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BATCH, BAD_ITERATION = 32, 24


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "fastai")
    a = p.parse_args(argv)
    import fastai
    import torch
    from fastai.callback.core import Callback
    from fastai.callback.tensorboard import TensorBoardCallback
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.losses import MSELossFlat
    from fastai.optimizer import Adam
    from torch.utils.data import DataLoader, TensorDataset

    out = a.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    torch.manual_seed(0)
    x = torch.randn(512, 8)
    y = x @ torch.randn(8, 1)
    bad = slice(((BAD_ITERATION - 1) % 16) * BATCH, ((BAD_ITERATION - 1) % 16 + 1) * BATCH)
    recorded: dict[str, Any] = {"loss": {}, "smooth_loss": {}}

    class BadBatch(Callback):
        """Scales the targets of iteration BAD_ITERATION's batch (the data itself is unchanged)."""

        order = -1

        def before_batch(self) -> None:
            if self.training and self.train_iter + 1 == BAD_ITERATION:
                self.learn.yb = (self.yb[0] * 30.0,)

        def after_batch(self) -> None:
            if self.training:
                recorded["loss"][self.train_iter] = float(self.learn.loss)

        def after_step(self) -> None:
            pass

    class Smooth(Callback):
        order = 100  # after the Recorder: the smoothed loss the TensorBoard callback writes at this iteration

        def after_batch(self) -> None:
            if self.training:
                recorded["smooth_loss"][self.train_iter] = float(self.learn.smooth_loss)

    ds = TensorDataset(x, y)
    dls = DataLoaders(DataLoader(ds, batch_size=BATCH, shuffle=False), DataLoader(ds, batch_size=64))
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    learn = Learner(dls, model, loss_func=MSELossFlat(), opt_func=Adam, path=str(out))
    learn.fit(
        3,
        lr=1e-2,
        cbs=[BadBatch(), Smooth(), TensorBoardCallback(str(out / "runs"), trace_model=False, log_preds=False)],
    )
    learn.save("model")
    opt = learn.opt
    params = {}
    for name, prm in model.named_parameters():
        st = opt.state[prm]
        v = st["sqr_avg"].double()
        params[name] = {"step": int(st["step"]), "v_mean": float(v.mean()), "v_max": float(v.max())}
    recorded.update(
        made_with={"fastai": fastai.__version__, "torch": torch.__version__},
        bad_iteration=BAD_ITERATION,
        hypers=[dict(h) for h in opt.hypers],
        params=params,
        bad_rows=[bad.start, bad.stop],
    )
    (out / "expected.json").write_text(json.dumps(recorded, indent=1) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e3:.0f} kB; fastai {fastai.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
