"""Writes ``tests/fixtures/lightning_resume/``: a real Lightning run stopped and resumed from its checkpoint
(session 12's framework probe).

fwprobe's ``healthy`` design (an MLP regression, full batch: one update per epoch), ``log_every_n_steps=1``,
``ModelCheckpoint(every_n_train_steps=30, save_top_k=-1)``: a first ``fit`` of 60 epochs (checkpoints at steps
30 and 60), then a new ``Trainer(max_epochs=80).fit(ckpt_path=<the step-60 checkpoint>)``. The default
``TensorBoardLogger`` puts the resumed fit in a new folder, ``lightning_logs/version_1``, whose curves start at
step 60 — and which, like every ``fit``, logs Lightning's ``hp_metric`` placeholder (-1) at step 0. The
checkpoints stay in ``version_0/checkpoints``; the step-30 one is deleted (the fixture needs one, 66 kB each).

    .venv/bin/python tools/fwprobe/make_lightning_resume_fixture.py     # lightning 2.6.6, torch 2.13.0 (CPU)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fwprobe  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "lightning_resume"


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    fwprobe.run_lightning("healthy", "resume", OUT, resume=(60, 80, 30))
    (OUT / "lightning_logs" / "version_0" / "checkpoints" / "epoch=29-step=30.ckpt").unlink()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
