"""Writes tests/fixtures/wandb: Weights & Biases offline runs (``run-<id>.wandb`` files) written by wandb itself,
read by adamdiag.io.wandb_log in tests/io/test_wandb_log.py and tests/e2e/test_wandb_runs.py.

    pip install wandb            # 0.31.0 made the committed files; adamdiag never imports it
    python tools/runlab/make_wandb_fixtures.py [--out tests/fixtures/wandb]

What it writes (every run offline, system stats and console capture off, so the files hold the history):

- ``samples/<name>/`` — the loss, gradient-norm and learning-rate tags of three of sample_logs/' runs (vcollapse, lr_too_high, stable_eps1e-3)
  logged again with ``wandb.log(row, step=step)``: the test scans each from its wandb file and from a TensorBoard
  copy of the same values, and expects the same verdict (gzipped: the test unpacks them);
- ``lightning/`` — a Lightning Trainer logging through WandbLogger and TensorBoardLogger at once (targets move at
  global step 60: a blowup; ``log_every_n_steps=5``, so wandb's own ``_step`` counts log calls while the x axis
  Lightning declares, ``trainer/global_step``, is the trainer's step);
- ``hf/`` — a Hugging Face Trainer with ``report_to=["wandb", "tensorboard"]`` (targets move at step 80; the
  TrainingArguments land in wandb's config: adam_epsilon, adam_beta2, max_grad_norm);
- ``resumed/`` — one run id written by two processes (the second ``resume="allow"``): two folders, one run;
- ``nonfinite/`` — a loss that turns NaN then inf;
- ``drift/`` — a plain loop with its step in each row and eval rows between (wandb's _step runs ahead);
- ``synced/`` — ``sync_tensorboard=True``: a SummaryWriter's events in tb/run1, copied into the wandb history;
- ``watch/`` — ``wandb.watch(model, log="gradients")`` in a plain loop and under Lightning (see write_watch);
- ``older_watch/<version>/`` — with ``--older-watch`` in a venv holding that wandb and torch (0.16.6, 0.19.11);
- ``older/<version>/`` — with ``--older``, run in a venv holding that wandb (0.16.6: its Python backend; 0.19.11):
  ``python -m venv v && v/bin/pip install wandb==0.16.6 && v/bin/python tools/runlab/make_wandb_fixtures.py --older``.
  (A full regeneration removes them: rerun these after it.)

``expected.json`` records, per run, what was handed to wandb.log (step -> {key: value}, non-finite as strings).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ("vcollapse", "lr_too_high", "stable_eps1e-3")
SAMPLE_TAGS = ("train/loss", "train/grad_norm", "train/lr")


def _settings() -> Any:
    import wandb

    return wandb.Settings(x_disable_stats=True, x_disable_meta=True, console="off", save_code=False, disable_git=True)


def _json_value(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)


def write_samples(out: Path, expected: dict[str, Any]) -> None:
    """(The values logged are sample_logs/' own: the test reads them there.)"""
    import wandb

    from adamdiag.io.events import read_run

    for name in SAMPLES:
        ev = read_run(ROOT / "sample_logs" / name)
        rows: dict[int, dict[str, float]] = {}
        for tag, step, value in ev.scalars[["tag", "step", "value"]].itertuples(index=False):
            if tag in SAMPLE_TAGS:
                rows.setdefault(int(step), {})[tag] = float(value)
        d = out / "samples" / name
        d.mkdir(parents=True)
        run = wandb.init(project="adamdiag-fixtures", dir=str(d), mode="offline", settings=_settings())
        for step in sorted(rows):
            run.log(rows[step], step=step)
        run.finish()
        for f in d.rglob("*.wandb"):  # 2000 steps are ~1 MB; wandb's records gzip ~6x (the test unpacks them)
            with open(f, "rb") as src, gzip.open(f.with_name(f.name + ".gz"), "wb", compresslevel=9) as dst:
                shutil.copyfileobj(src, dst)
            f.unlink()


SHIFT_LIGHTNING = 60


def write_lightning(out: Path, expected: dict[str, Any]) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
    from lightning_toy import fit_shifted

    d = out / "lightning"
    d.mkdir(parents=True)
    logged: dict[str, dict[str, float]] = {}
    wb = WandbLogger(project="adamdiag-fixtures", save_dir=str(d), offline=True, settings=_settings())
    fit_shifted(
        [wb, TensorBoardLogger(str(d), name="tb")],
        tag="train_loss",
        shift_at=SHIFT_LIGHTNING,
        hparams={"lr": 1e-2, "eps": 1e-8},
    )
    wb.experiment.finish()
    from adamdiag.io.events import read_run

    tb = read_run(next((d / "tb").glob("version_*")))
    for tag, step, value in tb.scalars[["tag", "step", "value"]].itertuples(index=False):
        logged.setdefault(str(int(step)), {})[tag] = _json_value(float(value))
    expected["lightning"] = logged  # what the TensorBoardLogger got from the same log calls


SHIFT_HF = 80


def write_hf(out: Path, expected: dict[str, Any]) -> None:
    import torch
    from hf_toy import Regressor, ShiftableData, training_args
    from transformers import Trainer, TrainerCallback
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    d = out / "hf"
    d.mkdir(parents=True)

    data = ShiftableData()
    logged: dict[str, dict[str, float | str]] = {}

    class MoveTargetsAndRecord(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == SHIFT_HF:
                data.shift = 50.0

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            for k, v in (logs or {}).items():
                if isinstance(v, (int, float)):
                    logged.setdefault(str(state.global_step), {})[k] = _json_value(float(v))

    import wandb

    # started here so that it lands in d: the Trainer's WandbCallback logs into a run already started
    wandb.init(project="adamdiag-fixtures", dir=str(d), mode="offline", settings=_settings())
    torch.manual_seed(0)
    args = training_args(
        str(d / "out"), ["wandb", "tensorboard"], adam_epsilon=1e-6, adam_beta2=0.98, save_strategy="no"
    )
    Trainer(model=Regressor(), args=args, train_dataset=data, callbacks=[MoveTargetsAndRecord()]).train()
    wandb.finish()
    expected["hf"] = logged  # the logs dict as the Trainer handed it to its callbacks (keys without "train/")


def write_resumed(out: Path, expected: dict[str, Any]) -> None:
    import wandb

    d = out / "resumed"
    d.mkdir(parents=True)
    logged: dict[str, dict[str, float]] = {}
    for part, steps in enumerate((range(0, 60), range(60, 120))):
        if part:
            time.sleep(1.5)  # wandb names a run's folder by the second it starts
        run = wandb.init(
            project="adamdiag-fixtures",
            id="resume01",
            resume="allow",
            dir=str(d),
            mode="offline",
            settings=_settings(),
        )
        for s in steps:
            row = {"loss": 1.0 / (1 + s) + (5.0 if s >= 100 else 0.0), "grad_norm": 0.5 + 0.01 * s}
            run.log(row, step=s)
            logged[str(s)] = row
        run.finish()
    expected["resumed"] = logged


def write_nonfinite(out: Path, expected: dict[str, Any]) -> None:
    import wandb

    d = out / "nonfinite"
    d.mkdir(parents=True)
    logged: dict[str, dict[str, float | str]] = {}
    run = wandb.init(project="adamdiag-fixtures", dir=str(d), mode="offline", settings=_settings())
    for s in range(1, 41):
        loss = 1.0 / s if s < 30 else (math.nan if s < 35 else math.inf)
        row = {"train/loss": loss, "train/grad_norm": 0.3, "text": "not a number", "nested": {"a": 1.5, "b": 2}}
        run.log(row, step=s)
        logged[str(s)] = {"train/loss": _json_value(loss), "train/grad_norm": 0.3, "nested.a": 1.5, "nested.b": 2.0}
    run.finish()
    expected["nonfinite"] = logged


def write_synced(out: Path, expected: dict[str, Any]) -> None:
    """A run with ``sync_tensorboard=True``: its history copies a SummaryWriter's events (tb/run1 beside it). wandb
    also links the event files into its files/ folder by absolute path; that link is dropped (it would point
    into the machine that made the fixture)."""
    import wandb
    from torch.utils.tensorboard import SummaryWriter

    d = out / "synced"
    d.mkdir(parents=True)
    run = wandb.init(
        project="adamdiag-fixtures", dir=str(d), mode="offline", sync_tensorboard=True, settings=_settings()
    )
    w = SummaryWriter(str(d / "tb" / "run1"))
    logged = {}
    for s in range(60):
        loss = 1.0 / (1 + s) + (3.0 if s >= 45 else 0.0)
        w.add_scalar("train/loss", loss, 3 * s)
        logged[str(3 * s)] = {"train/loss": loss}
    w.close()
    run.finish()
    for files in d.glob("wandb/*run-*/files"):
        shutil.rmtree(files)
    expected["synced"] = logged


def write_drift(out: Path, expected: dict[str, Any]) -> None:
    """A plain loop that logs its step in the row and no step=: ``wandb.log({"train/loss": l, "global_step": s})``
    every step and ``wandb.log({"val/loss": v})`` every 20 — each of those calls adds one to wandb's _step (which
    counts from 0), so at step 300 _step is 13 ahead; the loss jumps at step 250."""
    import wandb

    d = out / "drift"
    d.mkdir(parents=True)
    run = wandb.init(project="adamdiag-fixtures", dir=str(d), mode="offline", settings=_settings())
    logged = {}
    for step in range(1, 301):
        loss = 1.0 / step + (5.0 if step >= 250 else 0.0)
        run.log({"train/loss": loss, "global_step": step})
        logged[str(step)] = {"train/loss": loss}
        if step % 20 == 0:
            run.log({"val/loss": loss * 1.1})
    run.finish()
    expected["drift"] = logged


WATCH_STEPS, WATCH_FREQ = 800, 100  # the sample run blows up at 662
WATCH_LIGHTNING_FREQ = 10


def _gzip_run_files(d: Path) -> None:
    for f in d.rglob("*.wandb"):
        with open(f, "rb") as src, gzip.open(f.with_name(f.name + ".gz"), "wb", compresslevel=9) as dst:
            shutil.copyfileobj(src, dst)
        f.unlink()


def _grad_stats(model: Any) -> dict[str, list[float]]:
    """Per parameter: [numel, min, max, mean g²] of its gradient now (float64 sums)."""
    return {
        n: [p.grad.numel(), float(p.grad.min()), float(p.grad.max()), float((p.grad.double() ** 2).mean())]
        for n, p in model.named_parameters()
        if p.grad is not None
    }


def write_watch(out: Path, expected: dict[str, Any]) -> None:
    """``wandb.watch(model, log="gradients")``: wandb hooks every parameter and, every ``log_freq``-th backward,
    logs a 64-bucket histogram of its gradient as ``gradients/<name>`` into the row open at that moment.

    - ``watch/plain/``: sample_logs/vcollapse trained again (same seed, data, full batch: the same losses) for
      WATCH_STEPS steps, ``wandb.log(row, step=t)`` after each backward, log_freq WATCH_FREQ (gzipped);
    - ``watch/lightning/``: the Lightning regression with WandbLogger.watch(log_freq=WATCH_LIGHTNING_FREQ) and a
      TensorBoardLogger (gzipped);
    - ``watch/hf/``: HF Trainer with WANDB_WATCH=gradients (log_freq 100), 300 steps (gzipped).

    expected["watch"][part][backward count] = {parameter: [numel, min, max, mean g²]} of the gradients wandb's hook
    saw (every log_freq-th backward)."""
    import torch
    import wandb

    sys.path.insert(0, str(ROOT / "tools" / "runlab"))
    import multitask  # noqa: F401  (registers the sample runs' family)
    import runlab

    d = out / "watch" / "plain"
    d.mkdir(parents=True)
    cfg = multitask.sample_configs()["vcollapse"]
    fam = runlab.get_family(cfg.family)
    data = fam.build_data(cfg)
    model = runlab.build_model(cfg)
    opt = runlab.build_optimizer(cfg, model)
    run = wandb.init(project="adamdiag-fixtures", dir=str(d), mode="offline", settings=_settings())
    run.watch(model, log="gradients", log_freq=WATCH_FREQ)
    truth: dict[str, Any] = {}
    for t in range(1, WATCH_STEPS + 1):
        lr = runlab.lr_at(cfg, t)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss = runlab._sum_heads(fam.head_losses(model, runlab.batch_for_step(cfg, t, data)))
        loss.backward()
        if t % WATCH_FREQ == 0:
            truth[str(t)] = _grad_stats(model)
        grad_norm = runlab._grad_norm(list(model.parameters()))
        run.log({"train/loss": float(loss.detach()), "train/lr": lr, "train/grad_norm": grad_norm}, step=t)
        opt.step()
    run.finish()
    _gzip_run_files(d)
    expected.setdefault("watch", {})["plain"] = truth

    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
    from lightning_toy import fit_shifted

    d = out / "watch" / "lightning"
    d.mkdir(parents=True)
    wb = WandbLogger(project="adamdiag-fixtures", save_dir=str(d), offline=True, settings=_settings())
    seen: dict[str, Any] = {}

    class WatchAndRecord(Callback):
        backwards = 0

        def on_fit_start(self, trainer: Any, module: Any) -> None:
            wb.watch(module, log="gradients", log_freq=WATCH_LIGHTNING_FREQ)

        def on_after_backward(self, trainer: Any, module: Any) -> None:
            self.backwards += 1
            if self.backwards % WATCH_LIGHTNING_FREQ == 0:
                seen[str(self.backwards)] = _grad_stats(module)

    torch.manual_seed(0)
    fit_shifted(
        [wb, TensorBoardLogger(str(d), name="tb")],
        tag="train_loss",
        shift_at=SHIFT_LIGHTNING,
        callbacks=[WatchAndRecord()],
    )
    wb.experiment.finish()
    _gzip_run_files(d)
    expected["watch"]["lightning"] = seen
    # in a process of its own, as a Trainer runs: after other runs' watches in one process, wandb logs the new
    # model's gradients only once (its first log_freq), not every log_freq
    import subprocess

    got = subprocess.run(
        [sys.executable, __file__, "--watch-hf", str(out / "watch" / "hf")], capture_output=True, text=True, check=True
    )
    expected["watch"]["hf"] = json.loads(got.stdout.strip().splitlines()[-1])


def _write_watch_hf(d: Path) -> dict[str, Any]:
    """HF Trainer with ``WANDB_WATCH=gradients``: its WandbCallback calls wandb.watch(model, log_freq=max(100,
    logging_steps)); 300 steps, a log every 10. Returns what every 100th backward's hooks saw (the hooks wandb
    registers see the same gradients)."""
    import torch
    import wandb
    from hf_toy import Regressor, ShiftableData, training_args
    from transformers import Trainer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    d.mkdir(parents=True)
    os.environ["WANDB_WATCH"] = "gradients"
    seen: dict[str, Any] = {}
    try:
        wandb.init(project="adamdiag-fixtures", dir=str(d), mode="offline", settings=_settings())
        torch.manual_seed(0)
        model = Regressor()
        calls = {n: 0 for n, _ in model.named_parameters()}

        def hook(name: str) -> Any:
            def record(grad: Any) -> None:
                calls[name] += 1
                if calls[name] % 100 == 0:
                    g = grad.detach()
                    seen.setdefault(str(calls[name]), {})[name] = [
                        g.numel(), float(g.min()), float(g.max()), float((g.double() ** 2).mean())
                    ]  # fmt: skip

            return record

        for n, prm in model.named_parameters():
            prm.register_hook(hook(n))
        args = training_args(str(d / "out"), ["wandb"], max_steps=300, logging_steps=10, save_strategy="no")
        Trainer(model=model, args=args, train_dataset=ShiftableData()).train()
        wandb.finish()
    finally:
        del os.environ["WANDB_WATCH"]
    _gzip_run_files(d)
    shutil.rmtree(d / "out", ignore_errors=True)
    return seen


def write_older_watch(out: Path) -> None:
    """``--older-watch``: wandb.watch(log_freq=5) on a small regression, 30 steps, as an older wandb writes it (0.16.6
    keeps a histogram as one JSON item, 0.19.11 one item per leaf); run under a venv with that wandb and torch.
    ``older_watch/<version>/truth.json``: per backward count, {parameter: [numel, min, max, mean g²]}."""
    import torch
    import wandb

    d = out / "older_watch" / wandb.__version__
    d.mkdir(parents=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    run = wandb.init(project="adamdiag-fixtures", dir=str(d), mode="offline")
    run.watch(model, log="gradients", log_freq=5)
    x = torch.randn(64, 8)
    y = x.sum(1, keepdim=True)
    truth = {}
    for t in range(1, 31):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        if t % 5 == 0:
            truth[str(t)] = _grad_stats(model)
        run.log({"loss": float(loss.detach())}, step=t)
        opt.step()
    run.finish()
    _gzip_run_files(d)
    for junk in list(d.rglob("*.log")) + list(d.rglob("requirements.txt")) + list(d.rglob("*.yaml")):
        junk.unlink()
    for meta in d.rglob("wandb-*.json"):
        meta.unlink()
    (d / "truth.json").write_text(json.dumps(truth, indent=0, sort_keys=True) + "\n")


def write_older(out: Path) -> None:
    """``--older``: one run as older wandb versions write it (run under a venv with that wandb, no torch needed):
    300 rows on a declared axis ``trainer/global_step`` = 10 x row, the loss jumping at row 200 and NaN at row 250,
    a nested dict, the Trainer-like config; gzipped into ``older/<version>/``."""
    import wandb

    d = out / "older" / wandb.__version__
    d.mkdir(parents=True)
    run = wandb.init(
        project="adamdiag-fixtures",
        mode="offline",
        dir=str(d),
        config={"adam_epsilon": 1e-6, "adam_beta2": 0.95, "max_grad_norm": 1.0},
    )
    wandb.define_metric("trainer/global_step")
    wandb.define_metric("*", step_metric="trainer/global_step", step_sync=True)
    for s in range(300):
        loss = 1.0 / (s + 1) if s < 200 else 5.0 + s * 0.1
        if s == 250:
            loss = math.nan
        run.log({"train/loss": loss, "train/grad_norm": 0.5, "trainer/global_step": 10 * s, "nest": {"x": s}})
    run.finish()
    for f in d.rglob("*.wandb"):
        with open(f, "rb") as src, gzip.open(f.with_name(f.name + ".gz"), "wb", compresslevel=9) as dst:
            shutil.copyfileobj(src, dst)
        f.unlink()
    for junk in (
        list(d.rglob("*.log")) + list(d.rglob("requirements.txt")) + list(d.rglob("*.yaml")) + list(d.rglob("*.json"))
    ):
        junk.unlink()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "wandb")
    p.add_argument("--older", action="store_true", help="only add older/<this wandb's version>/ (see write_older)")
    p.add_argument("--older-watch", action="store_true", help="only add older_watch/<this wandb's version>/")
    p.add_argument("--watch-hf", type=Path, help=argparse.SUPPRESS)  # write_watch's HF part, in its own process
    p.add_argument("--only", choices=["drift", "watch"], help="only (re)write this part, keeping the rest of --out")
    a = p.parse_args(argv)
    import wandb

    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_CONSOLE="off")
    if a.older:
        write_older(a.out)
        return 0
    if a.older_watch:
        write_older_watch(a.out)
        return 0
    if a.watch_hf:
        print(json.dumps(_write_watch_hf(a.watch_hf)))
        return 0
    if a.only:
        shutil.rmtree(a.out / a.only, ignore_errors=True)
        expected = json.loads((a.out / "expected.json").read_text())
        {"drift": write_drift, "watch": write_watch}[a.only](a.out, expected)
        for junk in list((a.out / a.only).rglob("*.log")) + list((a.out / a.only).rglob("requirements.txt")):
            junk.unlink()
        (a.out / "expected.json").write_text(json.dumps(expected, indent=0, sort_keys=True) + "\n")
        return 0
    if a.out.exists():
        shutil.rmtree(a.out)
    a.out.mkdir(parents=True)
    expected: dict[str, Any] = {"wandb_version": wandb.__version__}
    writers = (write_samples, write_lightning, write_hf, write_resumed, write_nonfinite, write_synced, write_drift)
    for write in (*writers, write_watch):
        write(a.out, expected)
    # what wandb leaves beside the history and the tests never read (debug logs, requirements.txt)
    for junk in list(a.out.rglob("*.log")) + list(a.out.rglob("requirements.txt")):
        junk.unlink()
    (a.out / "expected.json").write_text(json.dumps(expected, indent=0, sort_keys=True) + "\n")
    size = sum(f.stat().st_size for f in a.out.rglob("*") if f.is_file())
    print(f"wrote {a.out} ({size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
