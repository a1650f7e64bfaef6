"""Benchmark: training-step time with and without the live AdamMonitor, side by side in one process.

A ~10M-parameter MLP (torch.optim.Adam, batch 64, one torch thread by default), for every=10 and
every=1. Each round trains K steps without the monitor and K steps with it (K = a multiple of
``every``, so each "with" block holds the same number of logging steps), alternating which comes
first; the overhead is the median over rounds of the per-round ratio with/without − 1 (robust to
drift and to other load on the machine). "Without" is the same optimizer with the monitor's hook
disabled (one Python call per step, ~1 µs). The monitor writes its tags to a real SummaryWriter.
Its statistics use the compiled fused pass (adamdiag/monitor/_monitor_kernel.c) when it is built;
``ADAMDIAG_NO_KERNEL=1`` measures the torch path instead (the JSON records which one ran).

    .venv/bin/python bench/monitor_overhead.py                # defaults: 20 rounds, ~2-3 minutes on 1 thread
    .venv/bin/python bench/monitor_overhead.py --rounds 40 --threads 4 --device cuda --width 4096

Prints a table and writes bench/results/monitor_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adamdiag.monitor import AdamMonitor  # noqa: E402
from adamdiag.monitor import kernel as monitor_kernel  # noqa: E402


def build(width: int, device: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    # 512·w + 2·w² + 256·w (+ biases): 10.0M parameters at w = 2048
    model = nn.Sequential(
        nn.Linear(512, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 256),
    ).to(device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 512, generator=g).to(device)
    y = torch.randn(64, 256, generator=g).to(device)
    return model, x, y


def steps(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, k: int
) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of k training steps."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(k):
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    sync()
    return time.perf_counter() - t0, time.process_time() - c0


def measure(every: int, rounds: int, k: int, width: int, device: str, logdir: str) -> dict:
    from torch.utils.tensorboard import SummaryWriter

    model, x, y = build(width, device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    writer = SummaryWriter(logdir)
    mon = AdamMonitor(opt, model=model, writer=writer, every=every)
    # The monitor's own CPU time per logging step, timed inside its hook: a direct measure, far less
    # sensitive to other processes than the with/without ratio of whole steps (it misses only indirect
    # costs such as the caches the statistics pass evicts).
    observe, hook_cpu = mon._observe, []

    def timed_observe(w: object, peak_only: bool = False) -> None:
        c0 = time.process_time()
        observe(w, peak_only)
        hook_cpu.append(time.process_time() - c0)

    mon._observe = timed_observe  # type: ignore[method-assign]
    # ... and its per-step work between logging steps: the gradient-norm sample (scan's one-batch rule)
    gn_cpu: list[float] = []
    for wt in mon._watches:
        record = getattr(wt, "record_grad_norm", None)
        if record is None:  # a monitor from before the per-step sample (a side-by-side run of older code)
            continue

        def timed_record(record=record) -> None:
            c0 = time.process_time()
            record()
            gn_cpu.append(time.process_time() - c0)

        wt.record_grad_norm = timed_record  # type: ignore[method-assign]
    mon.enabled = False
    steps(model, opt, x, y, 3)  # warm-up: state allocated, kernels loaded
    mon.enabled = True
    steps(model, opt, x, y, every)  # warm-up of the monitor (scratch buffers) on a logging step
    ratios, cpu_ratios, t_off, t_on, c_off, c_on = [], [], [], [], [], []
    hook_cpu.clear()  # the warm-up's logging step (scratch buffers allocated) is not counted
    gn_cpu.clear()
    for r in range(rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        res = {}
        for on in order:
            mon.enabled = on
            res[on] = steps(model, opt, x, y, k)
        ratios.append(res[True][0] / res[False][0])
        cpu_ratios.append(res[True][1] / res[False][1])
        t_off.append(res[False][0] / k)
        t_on.append(res[True][0] / k)
        c_off.append(res[False][1] / k)
        c_on.append(res[True][1] / k)
    mon.enabled = True
    mon.close()
    writer.close()
    n_params = sum(p.numel() for p in model.parameters())
    med = statistics.median(ratios)
    return {
        "every": every,
        "params": n_params,
        "tensors": len(list(model.parameters())),
        "rounds": rounds,
        "steps_per_block": k,
        "step_ms_without": 1e3 * statistics.median(t_off),
        "step_ms_with": 1e3 * statistics.median(t_on),
        "overhead_median": med - 1.0,
        # process CPU time: what the monitor costs this process, less sensitive than wall time to
        # other processes competing for the cores (the machine of the recorded run was shared)
        "cpu_step_ms_without": 1e3 * statistics.median(c_off),
        "cpu_step_ms_with": 1e3 * statistics.median(c_on),
        "cpu_overhead_median": statistics.median(cpu_ratios) - 1.0,
        "overhead_p25": statistics.quantiles(ratios, n=4)[0] - 1.0 if rounds > 1 else med - 1.0,
        "overhead_p75": statistics.quantiles(ratios, n=4)[2] - 1.0 if rounds > 1 else med - 1.0,
        # the monitor's cost per logging step, from the median step times (wall; CPU): at every=1 every
        # step is one, so these are the steadier estimates of what a logging step costs
        "monitor_ms_per_logging_step": 1e3 * (statistics.median(t_on) - statistics.median(t_off)) * every,
        "monitor_cpu_ms_per_logging_step": 1e3 * (statistics.median(c_on) - statistics.median(c_off)) * every,
        # timed inside the hook (median over the logging steps of the "with" blocks), and that over
        # `every` steps without the monitor: the direct estimate of the overhead
        "hook_cpu_ms_per_logging_step": 1e3 * statistics.median(hook_cpu),
        # the per-step gradient-norm sample (every step, logging or not), median
        "grad_norm_cpu_ms_per_step": 1e3 * statistics.median(gn_cpu or [0.0]),
        "hook_cpu_overhead": (statistics.median(hook_cpu) + every * statistics.median(gn_cpu or [0.0]))
        / (every * statistics.median(c_off)),
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20, help="alternating rounds per setting (≥ 20)")
    ap.add_argument("--every", type=int, nargs="+", default=[10, 1])
    ap.add_argument("--block", type=int, default=10, help="steps per block (rounded up to a multiple of every)")
    ap.add_argument("--width", type=int, default=2048, help="hidden width: 2048 gives 10M parameters")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "monitor_overhead.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    load_start = os.getloadavg()  # the machine may be shared: record how busy it was
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for every in a.every:
            # every=1: 2 steps a block (each one a logging step) keeps the run within ~3 minutes
            k = max(every, -(-a.block // every) * every) if every > 1 else 2
            rows.append(measure(every, a.rounds, k, a.width, a.device, f"{tmp}/every{every}"))
    print(
        f"{'every':>5} {'params':>7} {'wall ms off':>11} {'wall ms on':>10} {'wall overhead':>13} {'IQR':>16}"
        f" {'cpu ms off':>10} {'cpu ms on':>9} {'cpu overhead':>12} {'hook cpu ms':>11} {'gn µs/step':>10}"
        f" {'hook overhead':>13}"
    )
    for r in rows:
        print(
            f"{r['every']:>5} {r['params'] / 1e6:>6.1f}M {r['step_ms_without']:>11.1f} {r['step_ms_with']:>10.1f} "
            f"{100 * r['overhead_median']:>12.2f}% {100 * r['overhead_p25']:>6.1f}%…{100 * r['overhead_p75']:.1f}%"
            f" {r['cpu_step_ms_without']:>10.1f} {r['cpu_step_ms_with']:>9.1f} {100 * r['cpu_overhead_median']:>11.2f}%"
            f" {r['hook_cpu_ms_per_logging_step']:>11.1f} {1e3 * r['grad_norm_cpu_ms_per_step']:>10.0f}"
            f" {100 * r['hook_cpu_overhead']:>12.2f}%"
        )
    out = {
        "schema": "adamdiag.bench.monitor_overhead/1",
        "command": "python bench/monitor_overhead.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": a.device,
        "threads": a.threads,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        # the monitor's statistics pass: the compiled fused kernel (and its AVX2 loop) or torch passes
        "monitor_kernel": monitor_kernel.available(),
        "monitor_kernel_vector_loop": monitor_kernel.vector_path(),
        # 1/5/15-minute load averages at the start and at the end of the run
        "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()),
        "rows": rows,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"statistics pass: {'fused C kernel' if out['monitor_kernel'] else 'torch (no kernel)'}")
    print(f"load average (1/5/15 min) at start {load_start}, at end {out['load_average_end']}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
