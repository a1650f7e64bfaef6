"""Writes ``tests/fixtures/hf_args/``: the TensorBoard log of a real Hugging Face ``Trainer`` run, without its
checkpoints (session 14).

fwprobe's ``vcollapse`` design (Adam β2 0.99, cosine with a hard restart at update 1001, full batch) trained by
``Trainer`` with ``report_to=["tensorboard"]``, ``logging_steps=10`` (variant ``log10``) and
``adam_beta2=0.99``. HF's TensorBoardCallback writes the TrainingArguments as the ``args`` text summary, so a
scan of the log alone knows β2 (0.99, not the 0.999 a default would assume) and ``max_grad_norm`` (1.0).
Only ``runs/<stamp>/`` is kept: the case of a user who scans the log without the ``checkpoint-N/`` folders.
``truth.json``: the mean bias-corrected v̂ over all elements at the checkpoints the run wrote (every 250 steps),
read from their ``optimizer.pt`` before they are dropped — what the reconstruction from the log must agree with.

    .venv/bin/python tools/fwprobe/make_hf_args_fixture.py     # transformers 5.x, torch 2.13 (CPU), ~60 s
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fwprobe  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "hf_args"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "hf"
        run.mkdir()
        fwprobe.run_hf("vcollapse", "log10", run)
        (logs,) = (run / "runs").iterdir()
        shutil.rmtree(OUT, ignore_errors=True)
        shutil.copytree(logs, OUT / "runs" / "vcollapse")
        beta2 = fwprobe.DESIGNS["vcollapse"]["betas"][1]
        truth = {"adam_beta2": beta2, "mean_vhat": {}}
        for ck in sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
            state = torch.load(ck / "optimizer.pt", weights_only=True)["state"]
            total = sum(float(s["exp_avg_sq"].sum()) / (1 - beta2 ** float(s["step"])) for s in state.values())
            truth["mean_vhat"][ck.name.split("-")[1]] = total / sum(s["exp_avg_sq"].numel() for s in state.values())
        (OUT / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
