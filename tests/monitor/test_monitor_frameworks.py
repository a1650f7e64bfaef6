"""The framework hooks with the real libraries: a Lightning Trainer and a Hugging Face Trainer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adamdiag.monitor import LIVE_FILE


def _tags(d) -> dict[str, list[int]]:
    from adamdiag.io.events import read_file

    out: dict[str, list[int]] = {}
    for f in d.rglob("events.out.tfevents.*"):
        fd = read_file(f)
        for ti, st in zip(np.concatenate(fd.s_tag), np.concatenate(fd.s_step)):
            out.setdefault(fd.tags[ti], []).append(int(st))
    return out


def test_lightning_trainer(tmp_path) -> None:
    L = pytest.importorskip("lightning")
    from lightning.pytorch.loggers import TensorBoardLogger

    from adamdiag.monitor.lightning import AdamDiagCallback

    class Reg(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g))
    cb = AdamDiagCallback(every=2)
    trainer = L.Trainer(
        max_steps=8,
        accelerator="cpu",
        logger=TensorBoardLogger(str(tmp_path), name="lit"),
        callbacks=[cb],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(Reg(), torch.utils.data.DataLoader(data, batch_size=8))
    mon = cb.monitor
    assert mon is not None and mon.step == 8 and mon.verdict == "healthy"
    assert {"net.0.weight", "net.2.bias", "global"} <= set(mon.last)
    tags = _tags(tmp_path)
    assert sorted(tags["adamdiag/global/r"]) == [1, 2, 4, 6, 8]  # step 1: before the grid (the v̂ peak)
    live = json.loads((tmp_path / "lit" / "version_0" / LIVE_FILE).read_text())
    assert live["runs"][0]["step"] == 8 and live["runs"][0]["verdict"] == "healthy"


class _TokenData(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = torch.randint(0, 32, (8,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": x, "labels": x}


def test_hf_trainer(tmp_path, monkeypatch) -> None:
    transformers = pytest.importorskip("transformers")
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from adamdiag.monitor.hf import AdamDiagCallback

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    )
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=6,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        learning_rate=1e-3,
        weight_decay=0.1,
        disable_tqdm=True,
        logging_steps=2,
        save_strategy="no",
    )
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "logs"))  # transformers 5's logging dir
    cb = AdamDiagCallback(every=2)
    Trainer(model=model, args=args, train_dataset=_TokenData(), callbacks=[cb]).train()
    mon = cb.monitor
    assert mon is not None and mon.step == 6 and mon.verdict == "healthy"
    # HF's two param groups (decay / no decay) of the tied GPT-2: named by the model
    assert "transformer.wte.weight" in mon.last and "transformer.h.0.ln_1.weight" in mon.last
    tags = _tags(tmp_path / "logs")
    assert sorted(tags["adamdiag/global/update_rms"]) == [1, 2, 4, 6]  # step 1: before the grid (the v̂ peak)
    live = json.loads((tmp_path / "logs" / LIVE_FILE).read_text())
    assert live["runs"][0]["step"] == 6


@pytest.mark.parametrize("framework", ["lightning", "hf"])
def test_callback_settings_reach_the_monitor(tmp_path, framework: str) -> None:
    """Both callbacks hand every setting (and extra AdamMonitor keywords) to the monitor they attach,
    and close it at train end (the two trainer runs above use only ``every``)."""
    pytest.importorskip("lightning" if framework == "lightning" else "transformers")
    from importlib import import_module

    callback = import_module(f"adamdiag.monitor.{framework}").AdamDiagCallback
    found: list = []
    cb = callback(every=3, writer="auto", run_dir=None, on_finding=found.append, raise_on="error", top_k=2)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mon = cb.attach_monitor(opt, model, None, tmp_path / "live")
    assert cb.monitor is mon
    assert (mon.every, mon.on_finding, mon.raise_on, mon.top_k, mon.writer) == (3, found.append, "error", 2, None)
    assert mon.run_dir == tmp_path / "live"
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    assert mon.step == 1
    cb.close_monitor()
    opt.step()  # hooks removed at close: the monitor no longer follows the optimizer
    assert mon.step == 1
