"""Writes tests/fixtures/torchtune: a torchtune fine-tuning run as its full-finetune recipe leaves it — the
``output_dir`` with ``torchtune_config.yaml`` (``DiskLogger.log_config``), ``logs/log_<unix time>.txt`` (torchtune's
``DiskLogger``, the metric logger its recipes' configs name by default: ``Step N | loss:… lr:… grad_norm:tensor(…)``
per optimizer step) and the epoch checkpoints of ``FullModelTorchTuneCheckpointer`` (``epoch_N/`` model files,
``recipe_state/recipe_state.pt`` with the optimizer's state).

    python -m venv v && v/bin/pip install torch==2.13.0 torchtune==0.6.1 torchao==0.11.0
    v/bin/python tools/runlab/make_torchtune_fixtures.py [--out tests/fixtures/torchtune]

The training loop is the recipe's (recipes/full_finetune_single_device.py, torchtune 0.6.1) written out — the recipe
itself needs a tokenizer and a dataset download — with torchtune's own model builder (a 1-layer llama3), loss
(CEWithChunkedOutputLoss), lr scheduler (get_cosine_schedule_with_warmup), DiskLogger and checkpointer: the loss
summed over ``gradient_accumulation_steps`` micro-batches normalised by their tokens, ``clip_grad_norm_`` (its
returned tensor logged as ``grad_norm``, the norm before clipping), the log_dict keys and the global step.

The run: AdamW (β 0.9/0.95, eps 1e-8, clipping at 1.0), lr warmed up to PEAK_LR over two epochs of 60 steps, on
sequences a 1-layer model learns (the loss falls from 4.3 to ~0.5), with one bad batch — random tokens — at step
BAD_STEP: an 11x loss spike of one step that the run recovers from. After epoch 0 the checkpointer writes the recipe state; the second
epoch is a resume (``resume_from_checkpoint``: model and optimizer loaded back, a new DiskLogger file), so the logs
folder holds two files of one run.

``optimizer_in_bwd/recipe_state/recipe_state.pt``: the same model with ``optimizer_in_bwd`` (one optimizer per
parameter, keyed by its name), 5 steps.

``expected.json``: {"logged": {file name: {step: {key: value}}}, "steps_per_epoch": 60} — what log_dict was handed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
STEPS_PER_EPOCH = 60
EPOCHS = 2
ACCUM = 2
BATCH, SEQ, VOCAB = 4, 16, 64
PEAK_LR = 0.01
BAD_STEP = 100  # a batch of random tokens


def write_optimizer_in_bwd(out: Path, build: Any, data: Any, loss_fn: Any) -> None:
    """``optimizer_in_bwd: True`` (the default of torchtune's single-device full-finetune configs): one AdamW per
    parameter, stepped by a gradient hook, checkpointed as ``{parameter name: optimizer.state_dict()}``
    (OptimizerInBackwardWrapper.state_dict) in recipe_state.pt — 5 steps of the same model and data."""
    import torch
    from torchtune import training
    from torchtune.training.checkpointing import FullModelTorchTuneCheckpointer

    model = build()
    model.set_num_output_chunks(loss_fn.num_output_chunks)
    optim_dict = {p: torch.optim.AdamW([p], lr=1e-3, betas=(0.9, 0.95), eps=1e-8) for p in model.parameters()}
    training.register_optim_in_bwd_hooks(model=model, optim_dict=optim_dict)
    wrapper = training.create_optim_in_bwd_wrapper(model=model, optim_dict=optim_dict)
    for tokens in data[:5]:
        labels = torch.hstack((tokens[:, 1:], torch.full((BATCH, 1), loss_fn.ignore_index)))
        loss_fn(model(tokens), labels).backward()  # each parameter's optimizer steps in its hook
    base = out / "base_model"
    base.mkdir(parents=True)
    torch.save(build().state_dict(), base / "model.pt")
    ckpt = FullModelTorchTuneCheckpointer(
        checkpoint_dir=str(base), checkpoint_files=["model.pt"], model_type="LLAMA3", output_dir=str(out)
    )
    ckpt.save_checkpoint(
        {
            training.MODEL_KEY: model.state_dict(),
            training.SEED_KEY: 0,
            training.EPOCHS_KEY: 1,
            training.TOTAL_EPOCHS_KEY: 2,
            training.MAX_STEPS_KEY: 5,
            training.OPT_KEY: wrapper.state_dict(),
        },
        epoch=0,
        intermediate_checkpoint=True,
    )
    shutil.rmtree(base)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "torchtune")
    a = p.parse_args(argv)

    import torch
    from omegaconf import OmegaConf
    from torchtune import training
    from torchtune.models.llama3 import llama3
    from torchtune.modules.loss import CEWithChunkedOutputLoss
    from torchtune.training.checkpointing import FullModelTorchTuneCheckpointer
    from torchtune.training.lr_schedulers import get_lr
    from torchtune.training.metric_logging import DiskLogger

    if a.out.exists():
        shutil.rmtree(a.out)
    a.out.mkdir(parents=True)
    a.out = a.out.resolve()
    os.chdir(a.out)  # the paths in the saved config are relative: the fixture names no machine's folders
    out = Path("output_dir")
    base = Path("base_model")  # the checkpoint the fine-tune starts from (not part of a run's output)
    base.mkdir()
    cfg = OmegaConf.create(
        {
            "output_dir": str(out),
            "model": {"_component_": "torchtune.models.llama3.llama3", "vocab_size": VOCAB, "num_layers": 1},
            "checkpointer": {
                "_component_": "torchtune.training.FullModelTorchTuneCheckpointer",
                "checkpoint_dir": str(base),
                "checkpoint_files": ["model.pt"],
                "output_dir": "${output_dir}",
                "model_type": "LLAMA3",
            },
            "resume_from_checkpoint": False,
            "batch_size": BATCH,
            "epochs": EPOCHS,
            "optimizer": {
                "_component_": "torch.optim.AdamW",
                "lr": PEAK_LR,
                "betas": [0.9, 0.95],
                "eps": 1e-8,
                "weight_decay": 0.01,
                "fused": False,
            },
            "lr_scheduler": {"_component_": "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup"},
            "loss": {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"},
            "max_steps_per_epoch": STEPS_PER_EPOCH,
            "gradient_accumulation_steps": ACCUM,
            "optimizer_in_bwd": False,
            "clip_grad_norm": 1.0,
            "metric_logger": {
                "_component_": "torchtune.training.metric_logging.DiskLogger",
                "log_dir": "${output_dir}/logs",
            },
            "log_every_n_steps": 1,
            "log_peak_memory_stats": True,
            "device": "cpu",
            "dtype": "fp32",
        }
    )

    def build() -> Any:
        torch.manual_seed(0)
        m = llama3(
            vocab_size=VOCAB, num_layers=1, num_heads=2, num_kv_heads=1, embed_dim=32, max_seq_len=SEQ,
            intermediate_dim=64,
        )  # fmt: skip
        return m

    torch.save(build().state_dict(), base / "model.pt")
    checkpointer = FullModelTorchTuneCheckpointer(
        checkpoint_dir=str(base), checkpoint_files=["model.pt"], model_type="LLAMA3", output_dir=str(out)
    )
    g = torch.Generator().manual_seed(1)
    # sequences a 1-layer model can learn (arithmetic progressions mod VOCAB from a random start and stride 1-3): the
    # loss falls to near 0 first, so the blowup is the optimizer's, not the data's
    n = STEPS_PER_EPOCH * EPOCHS * ACCUM
    start = torch.randint(0, VOCAB, (n, BATCH, 1), generator=g)
    stride = torch.randint(1, 4, (n, BATCH, 1), generator=g)
    data = (start + stride * torch.arange(SEQ)) % VOCAB
    bad = slice((BAD_STEP - 1) * ACCUM, BAD_STEP * ACCUM)  # the micro-batches of optimizer step BAD_STEP
    data[bad] = torch.randint(0, VOCAB, data[bad].shape, generator=g)  # noise: a bad batch
    loss_fn = CEWithChunkedOutputLoss()
    logged: dict[str, dict[str, dict[str, float]]] = {}

    model = build()
    model.load_state_dict(checkpointer.load_checkpoint()[training.MODEL_KEY])
    model.set_num_output_chunks(loss_fn.num_output_chunks)
    opt = torch.optim.AdamW(model.parameters(), lr=PEAK_LR, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)
    total_steps = STEPS_PER_EPOCH * EPOCHS
    sched = training.lr_schedulers.get_cosine_schedule_with_warmup(
        opt, num_warmup_steps=total_steps, num_training_steps=total_steps
    )
    global_step = 0
    for epoch in range(EPOCHS):
        if epoch == 1:  # a resume from the epoch-0 checkpoint: the recipe state loaded back, a new log file
            time.sleep(1.1)  # DiskLogger names its file by the second
            state = torch.load(out / "recipe_state" / "recipe_state.pt", weights_only=True)
            model = build()
            model.load_state_dict(torch.load(out / "epoch_0" / "model-00001-of-00001.bin", weights_only=True))
            model.set_num_output_chunks(loss_fn.num_output_chunks)
            opt = torch.optim.AdamW(model.parameters(), lr=PEAK_LR, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)
            opt.load_state_dict(state[training.OPT_KEY])
            global_step = state[training.EPOCHS_KEY] * STEPS_PER_EPOCH
            sched = training.lr_schedulers.get_cosine_schedule_with_warmup(
                opt, num_warmup_steps=total_steps, num_training_steps=total_steps, last_epoch=global_step - 1
            )
        logger = DiskLogger(log_dir=str(out / "logs"))
        if epoch == 0:
            logger.log_config(cfg)
        name = logger.path_to_log_file().name
        logged[name] = {}
        running_loss, num_tokens, t0 = 0, 0, time.perf_counter()
        for idx in range(STEPS_PER_EPOCH * ACCUM):
            tokens = data[epoch * STEPS_PER_EPOCH * ACCUM + idx]
            labels = torch.hstack((tokens[:, 1:], torch.full((BATCH, 1), loss_fn.ignore_index)))
            current_num_tokens = (labels != loss_fn.ignore_index).sum()
            num_tokens += current_num_tokens
            current_loss = loss_fn(model(tokens), labels) * current_num_tokens
            running_loss += current_loss
            current_loss.backward()
            if (idx + 1) % ACCUM == 0:
                training.scale_grads(model, 1 / num_tokens)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                sched.step()
                global_step += 1
                loss_to_log = running_loss.item() / num_tokens
                log_dict = {
                    "loss": loss_to_log,
                    "lr": get_lr(opt),
                    "tokens_per_second_per_gpu": num_tokens / (time.perf_counter() - t0),
                    "grad_norm": grad_norm,
                }
                logger.log_dict(log_dict, step=global_step)
                logged[name][str(global_step)] = {
                    k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in log_dict.items()
                }
                running_loss, num_tokens, t0 = 0, 0, time.perf_counter()
        logger.close()
        if epoch + 1 < EPOCHS:  # the recipe's save_checkpoint: the optimizer only in intermediate checkpoints
            checkpointer.save_checkpoint(
                {
                    training.MODEL_KEY: model.state_dict(),
                    training.SEED_KEY: 0,
                    training.EPOCHS_KEY: epoch + 1,
                    training.TOTAL_EPOCHS_KEY: EPOCHS,
                    training.MAX_STEPS_KEY: STEPS_PER_EPOCH,
                    training.OPT_KEY: opt.state_dict(),
                },
                epoch=epoch,
                intermediate_checkpoint=True,
            )
    write_optimizer_in_bwd(Path("optimizer_in_bwd"), build, data, loss_fn)
    shutil.rmtree(base)
    for f in Path(".").rglob("*.bin"):  # the model weights: adamdiag reads the optimizer state, not these
        f.unlink()
    (a.out / "expected.json").write_text(
        json.dumps({"logged": logged, "steps_per_epoch": STEPS_PER_EPOCH}, indent=0, sort_keys=True) + "\n"
    )
    print("wrote", a.out, sorted(p.relative_to(a.out).as_posix() for p in a.out.rglob("*") if p.is_file()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
