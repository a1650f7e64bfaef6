"""`adamdiag replay` on a run trained by a real Hugging Face `Trainer`: the `checkpoint-N/` directory
is replayed as it is (optimizer.pt + model.safetensors + trainer_state.json) against the TensorBoard
log HF writes under output_dir/runs/, and reproduces it bit for bit."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
from realruns import project_module
from typer.testing import CliRunner

from adamdiag.cli import app

pytest.importorskip("transformers")

HF = textwrap.dedent("""
    import torch
    from torch import nn
    from torch.utils.data import IterableDataset

    N, BATCH = 160, 16

    def items():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(N, 6, generator=g)
        y = torch.sin(x[:, :2] * 2)
        return [{"x": x[i], "labels": y[i]} for i in range(N)]

    class Stream(IterableDataset):  # iterable: the Trainer keeps its order (no shuffling sampler)
        def __iter__(self):
            while True:
                yield from items()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.l1 = nn.Linear(6, 32)
            self.l2 = nn.Linear(32, 2)

        def forward(self, x, labels=None):
            out = self.l2(torch.tanh(self.l1(x)))
            return {"loss": ((out - labels) ** 2).mean(), "logits": out}

    def adamdiag_replay(checkpoint):
        data = items()
        per_epoch = N // BATCH

        def batch(t):  # the batch of optimizer update t (1-based)
            k = (t - 1) % per_epoch
            rows = data[k * BATCH:(k + 1) * BATCH]
            return {"x": torch.stack([r["x"] for r in rows]), "labels": torch.stack([r["labels"] for r in rows])}

        return {"model": Net(), "batch": batch, "loss": lambda m, b: m(**b)["loss"], "clip_grad_norm": 1.0}
""")


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory) -> Path:
    import warnings

    from transformers import Trainer, TrainingArguments

    root = tmp_path_factory.mktemp("hf")
    mod = project_module(root, "hf_project", HF)
    out = root / "out"
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=30,
        logging_steps=1,
        save_steps=10,
        report_to=["tensorboard"],
        learning_rate=1e-2,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        per_device_train_batch_size=mod.BATCH,
        weight_decay=0.0,
        max_grad_norm=1.0,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(model=mod.Net(), args=args, train_dataset=mod.Stream()).train()
    return root


def _replay(ckpt: Path, root: Path, *extra: str):
    return CliRunner().invoke(
        app,
        [
            "replay",
            str(ckpt),
            "--entry",
            f"{root / 'hf_project.py'}:adamdiag_replay",
            "--steps",
            "15",
            "--device",
            "cpu",
            *extra,
        ],
    )


def test_hf_checkpoint_directory_replays_bit_for_bit(hf_run):
    res = _replay(hf_run / "out" / "checkpoint-10", hf_run, "--format", "json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["start_step"] == 10  # trainer_state.json global_step
    assert Path(d["run"]).parent == hf_run / "out" / "runs"  # found without --logdir
    assert d["fidelity"]["reproduced"] and d["fidelity"]["max_rel_dev"] == 0.0
    assert d["fidelity"]["compared_steps"] == 15


def test_damaged_checkpoint_directories_are_one_line_errors(hf_run, tmp_path):
    bad = tmp_path / "checkpoint-10"
    shutil.copytree(hf_run / "out" / "checkpoint-10", bad)
    (bad / "model.safetensors").unlink()
    res = _replay(bad, hf_run, "--logdir", str(next((hf_run / "out" / "runs").iterdir())))
    assert res.exit_code == 2 and "no model weights beside optimizer.pt" in res.stderr
    # one line of error (the mandatory "importing entry X from FILE" notice may precede it)
    assert len([ln for ln in res.stderr.splitlines() if not ln.startswith("adamdiag: importing entry")]) <= 1
    (bad / "model.safetensors").write_bytes(b"not safetensors")
    res = _replay(bad, hf_run, "--logdir", str(next((hf_run / "out" / "runs").iterdir())))
    assert res.exit_code == 2 and "cannot read" in res.stderr and "Traceback" not in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _replay(empty, hf_run)
    assert res.exit_code == 2 and "no optimizer.pt/.bin and no DCP .metadata in it" in res.stderr


def test_sharded_model_weights_are_put_together(hf_run, tmp_path):
    """A model saved in shards (model.safetensors.index.json + two files, as HF does for large models):
    the same replay, bit for bit."""
    from safetensors.torch import load_file, save_file

    ck = tmp_path / "checkpoint-10"
    shutil.copytree(hf_run / "out" / "checkpoint-10", ck)
    weights = load_file(ck / "model.safetensors")
    (ck / "model.safetensors").unlink()
    names = sorted(weights)
    parts = {
        "model-00001-of-00002.safetensors": names[: len(names) // 2],
        "model-00002-of-00002.safetensors": names[len(names) // 2 :],
    }
    for fname, keys in parts.items():
        save_file({k: weights[k].contiguous() for k in keys}, ck / fname)
    (ck / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: f for f, keys in parts.items() for k in keys}})
    )
    res = _replay(ck, hf_run, "--logdir", str(next((hf_run / "out" / "runs").iterdir())), "--format", "json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["fidelity"]["max_rel_dev"] == 0.0
