"""Writes tests/fixtures/deepspeed/: small real DeepSpeed checkpoints and the live optimizer state
that DeepSpeed itself reports for them, so that adamdiag's DeepSpeed reader (which runs without
deepspeed installed) can be tested against the framework.

Each configuration is a 2-rank run on DeepSpeed's CPU accelerator (gloo on 127.0.0.1) of a small
model with two AdamW param groups (different weight decay and β2; a 3-element bias so that ZeRO-3
pads), trained 3 steps and saved with ``engine.save_checkpoint`` (``latest`` + ``global_step3/``):

* ``z{1,2,3}_fp32``  — ZeRO stage 1/2/3, fp32
* ``z{1,2,3}_bf16``  — the same with ``bf16`` enabled (fp32 master weights and moments in the files)
* ``z2_fp32_universal`` — ``ds_to_universal`` of ``z2_fp32`` (per-parameter ``zero/<name>/exp_avg.pt``)
* ``z3_fp32_universal`` — ``ds_to_universal`` of ``z3_fp32``
* ``hf_z2_fp32`` — Hugging Face ``Trainer`` with a DeepSpeed ZeRO-2 config (a 1-layer GPT-2 with tied
  embeddings): ``checkpoint-3/{latest, global_step3/, model.safetensors, trainer_state.json, ...}``

fp16 is not written: the CPU accelerator reports it unsupported. The truth, ``truth.json``, is taken
after the save from ``deepspeed.utils.safe_get_full_optimizer_state`` (the gathered full exp_avg /
exp_avg_sq of every parameter by name): its values (float32, exactly representable in JSON) and
float64 statistics (mean v, max v, mean |m|). DeepSpeed's helper scripts copied beside each save
(``zero_to_fp32.py``) are dropped: they are code, not data, and 38 kB each.

Needs deepspeed (``pip install deepspeed==0.19.8 --no-build-isolation`` after torch)::

    python tools/runlab/make_deepspeed_fixtures.py tests/fixtures/deepspeed
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONFIGS: list[tuple[str, int, str, dict[str, Any]]] = [
    (f"z{stage}_{prec}", stage, prec, {}) for prec in ("fp32", "bf16") for stage in (1, 2, 3)
]
# ZeRO-3 with sub-groups smaller than a param group (sub_group_size counts a rank's elements: 0.weight's
# 30 close a sub-group, so param group 0 becomes two flat partitions per rank, group 1 one).
CONFIGS += [("z3_fp32_subgroups", 3, "fp32", {"sub_group_size": 20})]
UNIVERSAL_FROM = ("z2_fp32", "z3_fp32")
STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model() -> nn.Module:
    # 10x6 + 10 + 10 + 10 + 3x10 + 3: odd sizes, so that partitions of 2 ranks need padding.
    return nn.Sequential(nn.Linear(6, 10), nn.LayerNorm(10), nn.Linear(10, 3))


def init_cpu_rank(rank: int, world: int, port: int) -> None:
    """This process as DeepSpeed rank ``rank`` of ``world`` on the CPU accelerator over gloo (also used by
    sharded_scale.py's ZeRO-3 writer)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        DS_ACCELERATOR="cpu",
    )
    torch.set_num_threads(1)
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")


def _truth(engine: Any, zopt: Any) -> dict[str, Any]:
    """The full optimizer state of every parameter by name, as DeepSpeed gathers it (collective)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    # ZeRO-1/2 link the optimizer state to the parameters once, after the first param group's
    # step (deepspeed 0.19.8, stage_1_and_2._optimizer_step): later groups stay unlinked and
    # safe_get_full_optimizer_state raises for them. Linking again now that every group has state
    # is what that lazy init means to do.
    if hasattr(zopt, "_hp_optimizer_states_linked"):
        zopt._hp_optimizer_states_linked = False
        zopt._lazy_init_hp_params_optimizer_state()
    truth: dict[str, Any] = {}
    for name, p in engine.module.named_parameters():
        m = safe_get_full_optimizer_state(p, "exp_avg")
        v = safe_get_full_optimizer_state(p, "exp_avg_sq")
        w = safe_get_full_fp32_param(p)
        truth[name] = {
            "shape": list(m.shape),
            "dtype": str(m.dtype).removeprefix("torch."),
            "exp_avg": m.flatten().tolist(),
            "exp_avg_sq": v.flatten().tolist(),
            "fp32": w.flatten().tolist(),
            "v_mean": float(v.double().mean()),
            "v_max": float(v.double().max()),
            "m_abs_mean": float(m.double().abs().mean()),
        }
    return truth


def _write_truth(out: str, rank: int, info: dict[str, Any]) -> None:
    import deepspeed

    if rank == 0:
        info.update(
            world_size=torch.distributed.get_world_size(), deepspeed=deepspeed.__version__, torch=str(torch.__version__)
        )
        Path(out, "truth.part.json").write_text(json.dumps(info))
    torch.distributed.barrier()


def _worker(rank: int, world: int, port: int, out: str, stage: int, prec: str, zero_extra: dict) -> None:
    init_cpu_rank(rank, world, port)
    import deepspeed

    torch.manual_seed(0)
    model = _model()
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if p.ndim >= 2], "weight_decay": 0.1},
        {"params": [p for n, p in named if p.ndim < 2], "weight_decay": 0.0, "betas": (0.9, 0.95)},
    ]
    # A torch optimizer: DeepSpeed's own "Adam" would JIT-compile CPUAdam (a C++ build).
    opt = torch.optim.AdamW(groups, lr=1e-2, eps=1e-7, betas=(0.9, 0.99))
    cfg = {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage, **zero_extra},
        "bf16": {"enabled": prec == "bf16"},
        "steps_per_print": 10_000,
    }
    engine, zopt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
    g = torch.Generator().manual_seed(rank + 1)
    dtype = torch.bfloat16 if prec == "bf16" else torch.float32
    for _ in range(STEPS):
        x = torch.randn(4, 6, generator=g).to(dtype)
        loss = engine(x).float().pow(2).mean()
        engine.backward(loss)
        engine.step()
    engine.save_checkpoint(out)
    info = {"stage": stage, "precision": prec, "step": STEPS, "optimizer": type(zopt).__name__, "zero": zero_extra}
    info["tensors"] = _truth(engine, zopt)
    _write_truth(out, rank, info)


def _hf_worker(rank: int, world: int, port: int, out: str, stage: int, prec: str) -> None:
    """Hugging Face Trainer with a DeepSpeed config: Trainer builds a torch AdamW (no "optimizer"
    in the config, zero_force_ds_cpu_optimizer off) and saves checkpoint-N/{latest,global_stepN/}."""
    init_cpu_rank(rank, world, port)
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=32, n_positions=16))
    g = torch.Generator().manual_seed(0)
    data = [
        {"input_ids": torch.randint(0, 32, (8,), generator=g), "labels": torch.randint(0, 32, (8,), generator=g)}
        for _ in range(16)
    ]
    ds_cfg = {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "zero_optimization": {"stage": stage},
        "zero_force_ds_cpu_optimizer": False,
        "bf16": {"enabled": prec == "bf16"},
    }
    args = TrainingArguments(
        output_dir=out,
        max_steps=STEPS,
        per_device_train_batch_size=2,
        save_steps=STEPS,
        save_strategy="steps",
        report_to=[],
        deepspeed=ds_cfg,
        use_cpu=True,
        ddp_backend="gloo",
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    engine = trainer.model_wrapped
    info = {"stage": stage, "precision": prec, "step": STEPS, "optimizer": type(engine.optimizer).__name__}
    info["tensors"] = _truth(engine, engine.optimizer)
    _write_truth(out, rank, info)


def _universal(src: Path, dst: Path) -> None:
    from deepspeed.checkpoint import ds_to_universal

    tag = (src / "latest").read_text().strip()
    args = argparse.Namespace(
        input_folder=str(src / tag),
        output_folder=str(dst / f"{tag}_universal"),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # the runs above do not carry universal_checkpoint_info
    )
    ds_to_universal.main(args)
    (dst / "latest_universal").write_text(f"{tag}_universal")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--only", nargs="*", help="configuration names to write (default: all)")
    args = ap.parse_args(argv)
    import torch.multiprocessing as mp

    os.environ["DS_ACCELERATOR"] = "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    truth_path = args.out / "truth.json"
    truth = json.loads(truth_path.read_text()) if truth_path.is_file() else {}
    for name, stage, prec, zero_extra in CONFIGS:
        if args.only and name not in args.only:
            continue
        d = args.out / name
        shutil.rmtree(d, ignore_errors=True)
        mp.spawn(_worker, args=(2, _free_port(), str(d), stage, prec, zero_extra), nprocs=2)
        truth[name] = json.loads((d / "truth.part.json").read_text())
        (d / "truth.part.json").unlink()
        for helper in d.glob("zero_to_*.py"):
            helper.unlink()
        print(f"{name}: {truth[name]['optimizer']}", file=sys.stderr)
    if not args.only or "hf_z2_fp32" in args.only:
        d = args.out / "hf_z2_fp32"
        shutil.rmtree(d, ignore_errors=True)
        mp.spawn(_hf_worker, args=(2, _free_port(), str(d), 2, "fp32"), nprocs=2)
        truth["hf_z2_fp32"] = json.loads((d / "truth.part.json").read_text())
        (d / "truth.part.json").unlink()
        for helper in d.glob("checkpoint-*/zero_to_*.py"):
            helper.unlink()
    for name in UNIVERSAL_FROM:
        if args.only and f"{name}_universal" not in args.only:
            continue
        d = args.out / f"{name}_universal"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        _universal(args.out / name, d)
        truth[f"{name}_universal"] = {**truth[name], "universal_of": name}
    truth_path.write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n")
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {args.out} ({size / 1e6:.2f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
